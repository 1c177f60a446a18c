"""Checkpoints inside an epoch, and resuming from one at the next unseen batch.

``train.checkpoint_every: N`` writes ``last.pt`` every N optimizer steps; SIGTERM (a spot machine's
notice) or a first Ctrl-C writes it at the next step boundary and stops the run. Such a ``last.pt``
holds the epoch that finished last as ``epoch`` (what older readers see) and ``in_epoch``: the
epoch it was saved in, the batches taken, what the position is valid for (samples, shards,
batches, processes, stream workers) and, per process, the loader's position
(:mod:`cnnzoo.data.resume_state`), the RNG states (dropout draws from torch's), the MixUp/CutMix
generator and the epoch's sums so far. Resumed with the same data and settings, the run trains
what the uninterrupted one would have trained, bit for bit on a CPU.

Several processes: every process's record is gathered to rank 0, which writes the file; the stop
that a signal asks for is agreed at those checkpoints (no other step waits on the others), so
under torchrun a signal stops the run at the next ``checkpoint_every`` step, and without it
Ctrl-C ends the processes as before (the last epoch's ``last.pt`` stays).

Floor 7 (training): imports torch, NumPy, :mod:`cnnzoo.checkpoint`, :mod:`cnnzoo.data`,
:mod:`cnnzoo.runtime` and, in training, the loop's tally and the mixer.
"""

from __future__ import annotations

import random
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import checkpoint as ckpt_io
from ..config.checks import is_whole
from ..console import console
from ..data.resume_state import loader_facts, loader_state, resume_loader
from ..errors import UserError
from ..runtime import distributed
from .loop import EpochTally, Stepper
from .mixing import Mixer


class StopRequested(Exception):
    """A signal asked the run to stop, and ``last.pt`` holds where it stopped."""

    def __init__(self, signal_name: str, held: str):
        super().__init__(f"stopped by {signal_name}; last.pt holds {held}")
        self.signal_name, self.held = signal_name, held


class StopSignals:
    """SIGTERM and a first Ctrl-C (SIGINT) ask the run to stop at the next step boundary, once
    ``last.pt`` holds it; a second Ctrl-C stops at once (``KeyboardInterrupt``, as before).
    Only in the main thread, and only where the signal has its default handling (a background
    job's ignored Ctrl-C stays ignored)."""

    def __init__(self) -> None:
        self.asked: str | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.asked is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.asked = signal.Signals(signum).name
        console.warn(f"{self.asked}: stopping at the next step, once last.pt holds it (Ctrl-C again: stop now)")

    @contextmanager
    def installed(self, enabled: bool = True) -> Iterator[StopSignals]:
        previous: dict[int, Any] = {}
        if enabled and threading.current_thread() is threading.main_thread():
            for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
                if signal.getsignal(sig) is default:
                    previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def rng_states() -> dict[str, Any]:
    """torch's, NumPy's and Python's global generators, as plain values and tensors."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, words, python_gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(words), python_gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, words, python_gauss = states["python"]
    random.setstate((version, tuple(words), python_gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def position_facts(loader: Any) -> dict[str, Any]:
    """What a saved position within an epoch is valid for."""
    return {**loader_facts(loader), "processes": distributed.context().world}


def _describe(facts: dict[str, Any]) -> str:
    shards = f" in {facts['shards']} shards" if "shards" in facts else ""
    workers = f", {facts['workers']} loader workers" if "workers" in facts else ""
    counts = f"{facts['samples']} training samples{shards}, {facts['batches']} batches"
    return f"{counts}, {facts['processes']} processes{workers}"


def check_record(in_epoch: Any, bad: Callable[[str, str], UserError], *, finished: int) -> None:
    """A ``last.pt``'s position inside an epoch, read back from a user's file: its counts, one record
    per process, and each record's parts restorable (the generators' states are tried on copies);
    ``bad(field, expected)`` makes the error (:func:`cnnzoo.training.resume.damaged`)."""
    if not isinstance(in_epoch, dict):
        raise bad("in_epoch", "should be the position inside an epoch (a mapping)")
    if in_epoch.get("epoch") != finished + 1 or not is_whole(in_epoch.get("epoch"), 1):
        raise bad("in_epoch.epoch", f"should be {finished + 1}, the epoch after the one last.pt finished")
    facts = in_epoch.get("facts")
    if not (
        isinstance(facts, dict)
        and {"samples", "batches", "processes"} <= facts.keys()
        and all(isinstance(k, str) and is_whole(v, 0) for k, v in facts.items())
    ):
        raise bad("in_epoch.facts", "should count the samples, batches and processes the position is for")
    step = in_epoch.get("step")
    if not (is_whole(step, 1) and step < facts["batches"]):
        raise bad("in_epoch.step", f"should be a whole number from 1 to {facts['batches'] - 1}, got {step!r}")
    ranks = in_epoch.get("ranks")
    if not (isinstance(ranks, list) and len(ranks) == facts["processes"] and all(isinstance(r, dict) for r in ranks)):
        raise bad("in_epoch.ranks", f"should hold one record per process ({facts['processes']})")
    for rank, record in enumerate(ranks):
        _check_rank_record(record, bad, f"in_epoch.ranks[{rank}]", step=step)


def _check_rank_record(record: dict[str, Any], bad: Callable[[str, str], UserError], field: str, *, step: int) -> None:
    loader = record.get("loader")
    if not (isinstance(loader, dict) and loader.get("batches") == step and isinstance(loader.get("stream", {}), dict)):
        raise bad(f"{field}.loader", f"should hold the {step} batches taken (and a stream's state, a mapping)")
    tally = record.get("tally")
    if not (
        isinstance(tally, dict)
        and tally.get("step") == step
        and is_whole(tally.get("seen"), 0)
        and all(torch.is_tensor(tally.get(k)) and tally[k].dim() == 0 for k in ("loss_sum", "correct"))
        and (tally.get("lrs") is None or isinstance(tally["lrs"], (list, tuple)))
    ):
        raise bad(f"{field}.tally", "should hold the epoch's sums so far (step, loss_sum, correct, seen)")
    _try_restoring(f"{field}.rng", bad, lambda: set_rng_states(record["rng"]), undo=rng_states())
    if record.get("mixer") is not None:
        trial = np.random.default_rng(0)  # the mixer's kind of generator (cnnzoo.training.mixing)
        _try_restoring(f"{field}.mixer", bad, lambda: setattr(trial.bit_generator, "state", record["mixer"]))


def _try_restoring(field: str, bad: Callable[..., UserError], restore: Callable[[], None], undo: Any = None) -> None:
    """Run ``restore`` to see that the saved state is one its library accepts; put ``undo`` back."""
    try:
        restore()
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise bad(field, f"cannot be restored ({reason})") from None
    finally:
        if undo is not None:
            set_rng_states(undo)


def check_position(in_epoch: dict[str, Any], loader: Any, path: str | Path) -> None:
    """Refuse, in one line, a position saved for other data or another batching."""
    now, then = position_facts(loader), in_epoch["facts"]
    if now != then:
        raise UserError(
            f"{path}: saved inside epoch {in_epoch['epoch']} for {_describe(then)}, but this run has "
            f"{_describe(now)}; the data or its batching changed, so the position cannot be resumed: "
            f"resume with the same data, train.batch_size, process count and data.workers, or start a new run"
        )


def restore(in_epoch: dict[str, Any], *, loader: Any, mixer: Mixer | None, device: torch.device) -> EpochTally:
    """This process's saved position: the loader set to go on (its epoch set already), the
    generators as they were, and the epoch's sums so far."""
    record = in_epoch["ranks"][distributed.context().rank]
    resume_loader(loader, record["loader"])
    if mixer is not None and record.get("mixer") is not None:
        mixer.rng.bit_generator.state = record["mixer"]
    tally = EpochTally.of_state(record["tally"], device)
    tally.set_generators = lambda: set_rng_states(record["rng"])
    return tally


class StepCheckpoints:
    """Told of each batch trained (``after_batch``): writes ``last.pt`` every ``every`` optimizer
    steps, and at the first step boundary after a stop signal, then raises :class:`StopRequested`."""

    def __init__(
        self,
        *,
        every: int | None,
        snapshot: Callable[[], dict[str, Any]],
        path: Path,
        stepper: Stepper,
        signals: StopSignals,
    ):
        self.every, self.snapshot, self.path = every, snapshot, path
        self.stepper, self.signals = stepper, signals
        self.epoch, self.loader, self.mixer = 0, None, None
        self.saved: str | None = None  # what last.pt holds, when this wrote it in this epoch

    def for_epoch(self, epoch: int, loader: Any, mixer: Mixer | None) -> StepCheckpoints:
        self.epoch, self.loader, self.mixer, self.saved = epoch, loader, mixer, None
        return self

    def __call__(self, tally: EpochTally) -> None:
        accumulate, total = self.stepper.accumulate, len(self.loader)
        if self.stepper.pending or tally.step >= total:  # gradients wait for a step, or the epoch's end is near
            return
        due = self.every is not None and (tally.step // accumulate) % self.every == 0
        if distributed.context().enabled:  # agreed at the checkpoints only: no other step waits on the others
            if due and self._save(tally):
                raise StopRequested(self.signals.asked or "another process's signal", self.saved or "")
        elif due or self.signals.asked:
            self._save(tally)
            if self.signals.asked:
                raise StopRequested(self.signals.asked, self.saved or "")

    def _save(self, tally: EpochTally) -> bool:
        """Gather every process's record, write last.pt on rank 0; whether any process was asked to stop."""
        mine = {
            "loader": loader_state(self.loader, tally.step),
            "rng": rng_states(),
            "mixer": self.mixer.rng.bit_generator.state if self.mixer is not None else None,
            "tally": tally.state(),
            "stop": self.signals.asked is not None,
        }
        records = distributed.gather_objects(mine)
        stop = any(r.pop("stop") for r in records)
        self.saved = f"epoch {self.epoch} up to step {tally.step} of {len(self.loader)}"
        if distributed.is_main():
            in_epoch = {
                "epoch": self.epoch,
                "step": tally.step,
                "facts": position_facts(self.loader),
                "ranks": records,
            }
            ckpt_io.save_atomic({**self.snapshot(), "in_epoch": in_epoch}, self.path)
        return stop
