"""Multi-process training (DDP): the process group, and the few collective steps training needs.

``torchrun --nproc_per_node N -m cnnzoo train ...`` (or ``cnnzoo train --nproc N``, which
runs torchrun for you) starts N copies of the same command and sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``. :func:`setup` joins them into one process group: NCCL
on CUDA (one GPU per process), gloo on CPU. Every other helper here does nothing in a
single process, so the engine calls them without asking whether it is distributed.

What the engine relies on:
* every rank builds the same model from the same seed, and DDP averages gradients, so
  the ranks' weights stay equal; BatchNorm buffers are sent from rank 0 before each
  validation (:func:`broadcast_buffers`), so every rank validates rank 0's model;
* data loaders shard each epoch's order (:func:`shard`); validation figures are sums
  reduced over ranks (:func:`all_sum`), equal to a single process's on the same data;
* only rank 0 (:func:`is_main`) writes the run folder, and the console prints on rank 0;
* caches on disk are built by local rank 0 first, the others then read them (:func:`main_first`).
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..console import console
from ..errors import ConfigError
from .device import cpu_count


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def from_env() -> Context:
    """The context torchrun describes in the environment (one process when it does not)."""
    return Context(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))


def context() -> Context:
    """The context of the process group this process has joined (one process when none)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return Context()
    return Context(torch.distributed.get_rank(), torch.distributed.get_world_size(), _env_int("LOCAL_RANK", 0))


def is_main() -> bool:
    return context().rank == 0


def setup(device: torch.device, timeout_s: float) -> tuple[Context, torch.device]:
    """Join torchrun's process group when there is one; returns it and this rank's device.

    ``timeout_s`` bounds every collective: a rank that stops answering ends the job with an
    error after that long instead of a hang.
    """
    ctx = from_env()
    if not ctx.enabled:
        return ctx, device
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(f"train.device: {device.type} cannot train with several processes; use cuda or cpu")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend, timeout=datetime.timedelta(seconds=timeout_s), device_id=device if device.type == "cuda" else None
        )
    console.rank = ctx.rank
    return ctx, device


def teardown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    console.rank = 0


def barrier() -> None:
    if context().enabled:
        torch.distributed.barrier()


@contextmanager
def main_first(shared: bool = True) -> Iterator[None]:
    """Local rank 0 runs the block first (building a cache on disk); the others run it after,
    finding the cache done. ``shared=False`` (a cache each process keeps in RAM): all at once."""
    ctx = context()
    if not shared:
        ctx = Context()
    if ctx.enabled and ctx.local_rank != 0:
        torch.distributed.barrier()
    try:
        yield
    finally:
        if ctx.enabled and ctx.local_rank == 0:
            torch.distributed.barrier()


def local_world() -> int:
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun)."""
    return max(1, _env_int("LOCAL_WORLD_SIZE", 1)) if context().enabled else 1


def shard() -> tuple[int, int]:
    """(rank, world size): which share of each epoch's batches this process reads."""
    ctx = context()
    return ctx.rank, ctx.world


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum each value over all ranks (float64, so that counts stay exact)."""
    if not context().enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def all_sum_tensor(tensor: torch.Tensor) -> torch.Tensor:
    if context().enabled:
        tensor = tensor.clone()
        torch.distributed.all_reduce(tensor)
    return tensor


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows (a CPU tensor), concatenated in rank order: figures that need all the
    scores at once (average precision) rather than sums."""
    if not context().enabled:
        return tensor
    parts: list[Any] = [None] * context().world
    torch.distributed.all_gather_object(parts, tensor.cpu())
    return torch.cat([p for p in parts if len(p)]) if any(len(p) for p in parts) else tensor


def all_max(value: float, device: torch.device) -> float:
    if not context().enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return float(tensor.item())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a small record), in rank order, on every rank."""
    if not context().enabled:
        return [obj]
    parts: list[Any] = [None] * context().world
    torch.distributed.all_gather_object(parts, obj)
    return parts


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a path, a small record)."""
    if not context().enabled:
        return obj
    holder = [obj]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's BatchNorm running statistics (and any other buffers) on every rank."""
    if not context().enabled:
        return
    for buffer in module.buffers():
        torch.distributed.broadcast(buffer, src=0)


def wrap(net: nn.Module, device: torch.device) -> nn.Module:
    """``net`` in DistributedDataParallel when distributed, else ``net`` itself."""
    if not context().enabled:
        return net
    ids: list[int] | None = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(net, device_ids=ids)


def sync_batchnorm(model: nn.Module, device: torch.device) -> tuple[nn.Module, str]:
    """BatchNorm layers that share batch statistics across ranks; the model and what was done."""
    if not context().enabled:
        return model, "train.sync_bn: one process, nothing to synchronise"
    if device.type != "cuda":
        return model, (
            "train.sync_bn: torch synchronises BatchNorm on GPUs only; on CPU each process "
            "keeps its own batch statistics"
        )
    try:  # timm's converter also handles its BatchNorm+activation layers, which torch's would break
        from timm.layers import convert_sync_batchnorm  # lazy: timm is an optional extra
    except ImportError:
        convert_sync_batchnorm = nn.SyncBatchNorm.convert_sync_batchnorm
    return convert_sync_batchnorm(model), "BatchNorm synchronised across processes (train.sync_bn)"


RUN_RECORD_ENV = "CNNZOO_RUN_RECORD"  # a file where rank 0 names the run folder for the launcher
SHUTDOWN_GRACE_S = 5.0  # after a process has ended, how long one left stopped (SIGSTOP) may stay


def record_run_dir(run_dir: Path) -> None:
    """Tell :func:`launch` which run folder this job writes (for its resume hint); nothing
    outside a launch."""
    record = os.environ.get(RUN_RECORD_ENV)
    if record:
        try:
            Path(record).write_text(str(Path(run_dir).resolve()))
        except OSError:
            pass  # the hint is lost, the run is not


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m cnnzoo <argv>`` as ``nproc`` processes on this machine through torchrun.

    Returns the exit code: 0, 2 (a user error, already reported by rank 0) or 1. CPU
    threads are split between the processes unless ``OMP_NUM_THREADS`` says otherwise.
    When a process fails after the job made its run folder, the message names that run's
    ``last.pt`` for resuming; a job that failed before has no run to resume.
    """

    # lazy: torchrun's machinery, for the launching process only (torch builds without distributed lack it)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cpu_count() // nproc)))
    # torchrun's agent logs each step of a failure; the one line below says what matters
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "cnnzoo", *argv])
    done = threading.Event()
    threading.Thread(target=_kill_stopped_workers, args=(done,), daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="cnnzoo-launch-") as folder:
        record = Path(folder) / "run_dir"
        os.environ[RUN_RECORD_ENV] = str(record)
        try:
            run(args)
        except ChildFailedError as exc:
            rank, failure = exc.get_first_failure()
            code = failure.exitcode
            if code != 2:  # 2: a user error, which rank 0 has already printed in one line
                how = f"was killed by signal {failure.signal_name()}" if code < 0 else f"exited with code {code}"
                print(
                    f"cnnzoo: error: process {rank} of {nproc} {how}; torchrun stopped the others"
                    f"{_resume_hint(record)}",
                    file=sys.stderr,
                    flush=True,
                )
            return 2 if code == 2 else 1
        finally:
            done.set()
            os.environ.pop(RUN_RECORD_ENV, None)
    return 0


def _kill_stopped_workers(done: threading.Event) -> None:
    """Once a worker has ended, SIGKILL those left stopped (SIGSTOP) after :data:`SHUTDOWN_GRACE_S`.

    Why: torchrun ends a failed job's other processes with SIGTERM and waits 30 s before SIGKILL
    (its worker-failure path ignores ``--shutdown-timeout``). A stopped process cannot act on
    SIGTERM, so a job with one took ``train.ddp_timeout`` + 30 s to end. A running process
    ends on SIGTERM at once and is left to torchrun. Linux only (it reads /proc).
    """
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")  # torchrun's workers
    seen: set[int] = set()
    ended_at: float | None = None
    while not done.wait(0.2):
        try:
            alive = {int(pid) for pid in children.read_text().split()}
        except OSError:
            return
        if ended_at is None:
            if seen - alive:
                ended_at = time.monotonic()
            seen |= alive
        elif time.monotonic() - ended_at >= SHUTDOWN_GRACE_S:
            for pid in alive:
                if _process_state(pid) == "T":
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


def _process_state(pid: int) -> str:
    """The one-letter state of a process from /proc (T: stopped), or "" when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[0]  # the name in parentheses may hold spaces


def _resume_hint(record: Path) -> str:
    """How to continue the run this job made, if it made one and saved a ``last.pt``."""
    try:
        last = Path(record.read_text().strip()) / "last.pt"
    except OSError:
        return " before this job made its run folder (nothing to resume)"
    if not last.is_file():
        return f" before {last} was written (nothing to resume)"
    return f"; resume with: cnnzoo train --resume {last}"
