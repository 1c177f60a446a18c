"""Checkpoints and run folders: atomic writes, safe loading, finding ``runs/latest``.

A checkpoint is a plain dictionary (tensors, numbers, strings, lists) so that
``torch.load(..., weights_only=True)`` can read it without unpickling code:

* ``model_state``, ``layers`` (the resolved layer list, to rebuild without tracing),
* ``meta``: classes, channels, image_size, mean, std, loss (everything ``predict`` needs),
* ``config`` (fully resolved), ``epoch``, ``metrics``,
* in ``last.pt`` also ``optimizer``, ``scheduler``, ``scaler``, ``rng``, ``trainer``.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

from .errors import UserError

FORMAT = "cnnzoo-checkpoint"
VERSION = 1


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save ``obj`` whole into memory, then write it to a temporary file in the same folder
    with its space reserved first (:func:`reserve_space`), fsync, and rename over ``path``.

    A failure (a full disk included: ``OSError`` ENOSPC, see :func:`is_disk_full`) leaves
    ``path`` as it was and no temporary file behind.
    """
    import io

    import torch

    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)  # in memory first: the size is known, and torch's writer never meets ENOSPC
    data = buffer.getbuffer()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            reserve_space(f.fileno(), len(data))
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        data.release()


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def reserve_space(fd: int, nbytes: int) -> None:
    """Give the file open as ``fd`` its first ``nbytes`` of blocks now, so that a full disk (or
    quota) fails here, before anything is written, with ``OSError`` ENOSPC: not half way
    through a write, nor as SIGBUS when a memory-mapped page finds no block. On a file
    system without fallocate the free space is compared instead."""
    if nbytes <= 0:
        return
    try:
        os.posix_fallocate(fd, 0, nbytes)
        return
    except AttributeError:  # not on this platform (macOS)
        pass
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    stats = os.fstatvfs(fd)
    if stats.f_bavail * stats.f_frsize < nbytes:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def is_disk_full(exc: Optional[BaseException]) -> bool:
    """Whether ``exc``, or an error it was raised from or while handling, is a write refused for
    want of space (ENOSPC, or EDQUOT for a quota)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load with ``weights_only=True`` (never arbitrary pickles) and check it is ours."""
    import pickle

    import torch

    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        asked = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", str(exc))
        wanted = f" (it asks for {asked.group(1)})" if asked else ""
        raise UserError(f"{path}: refused: this file would run code when loaded{wanted}; cnnzoo reads "
                        f"checkpoints as plain data only (weights_only=True) and never runs their code") from None
    except (RuntimeError, EOFError, ValueError, OSError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable cnnzoo checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not a cnnzoo checkpoint (made by another tool?); "
                        f"use a best.pt or last.pt from a cnnzoo run folder")
    version = ckpt.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise UserError(f"{path}: written by a newer cnnzoo (format {version!r}); upgrade cnnzoo")
    check_contents(ckpt, path)
    ckpt["path"] = str(path)
    return ckpt


def check_contents(ckpt: dict[str, Any], path: Path) -> None:
    """Every field predict, evaluate and resume read, checked like a config: types and ranges.

    The layer list itself is checked by rebuilding it (:func:`cnnzoo.layers.build_from_records`).
    """
    from .config import MAX_IMAGE_SIDE

    def bad(field: str, expected: str) -> UserError:
        return UserError(f"{path}: damaged or foreign checkpoint: {field} {expected}")

    meta = ckpt.get("meta")
    if not isinstance(meta, dict):
        raise bad("meta", "is missing")
    classes = meta.get("classes")
    if not (isinstance(classes, list) and 1 <= len(classes) <= 1_000_000
            and all(isinstance(c, str) for c in classes)):
        raise bad("meta.classes", "should be a list of class names")
    channels = meta.get("channels")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise bad("meta.channels", "should be 1 or 3")
    size = meta.get("image_size")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v, 1, MAX_IMAGE_SIDE) for v in size)):
        raise bad("meta.image_size", f"should be [height, width], each 1 to {MAX_IMAGE_SIDE}")
    for key in ("mean", "std"):
        values = meta.get(key)
        if not (isinstance(values, list) and len(values) == channels and all(_is_number(v) for v in values)):
            raise bad(f"meta.{key}", f"should be {channels} numbers")
    if any(v <= 0 for v in meta["std"]):
        raise bad("meta.std", "should be positive")
    layers = ckpt.get("layers")
    if not (isinstance(layers, list) and layers and all(
            isinstance(r, dict) and isinstance(r.get("type"), str) and isinstance(r.get("kwargs"), dict)
            for r in layers)):
        raise bad("layers", "should be a list of {type, kwargs} records")
    state = ckpt.get("model_state")
    if not (isinstance(state, dict) and all(isinstance(k, str) for k in state)):
        raise bad("model_state", "should map parameter names to tensors")
    if not isinstance(ckpt.get("config", {}), dict):
        raise bad("config", "should be a mapping")


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: Any) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def next_run_dir(runs_root: Path, name: str) -> Path:
    """``runs/<name>/<N>`` with N one more than the largest there; created here."""
    parent = runs_root / name
    try:
        parent.mkdir(parents=True, exist_ok=True)
        taken = [int(p.name) for p in parent.iterdir() if p.name.isdigit()]
        n = max(taken, default=0) + 1
        while True:
            run = parent / str(n)
            try:
                run.mkdir()
                return run
            except FileExistsError:  # another run started at the same moment
                n += 1
    except OSError as exc:
        raise UserError(f"--runs {runs_root}: cannot make a run folder in {parent} "
                        f"({exc.strerror or exc}); choose a folder you can write with --runs") from None


def clean_stale_temporaries(run_dir: Path) -> None:
    """Remove what a killed :func:`save_atomic` or metrics write left behind in a run folder."""
    for stale in [*run_dir.glob(".*.pt.*.tmp"), run_dir / "metrics.tmp"]:
        stale.unlink(missing_ok=True)


def runs_root_of(run_dir: Path) -> Path:
    """The folder that holds ``latest`` for a run folder ``<runs>/<name>/<N>``."""
    return Path(run_dir).parent.parent


def point_latest(runs_root: Path, run_dir: Path) -> None:
    """Make ``runs/latest`` a relative link to ``run_dir`` (replaced atomically)."""
    link = runs_root / "latest"
    target = os.path.relpath(run_dir, runs_root)
    tmp = runs_root / f".latest.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except OSError:  # file systems without links: a text file naming the run
        tmp.unlink(missing_ok=True)
        if link.is_symlink() or link.is_file():
            link.unlink()
        if not link.exists():
            link.write_text(target + "\n")


def latest_run(runs_root: str | Path = "runs") -> Path:
    """The folder ``runs/latest`` points at, or a clear error when there is none."""
    link = Path(runs_root) / "latest"
    if link.is_dir():
        return link.resolve()
    if link.is_file():
        return (Path(runs_root) / link.read_text().strip()).resolve()
    raise UserError(f"{link}: no training run found; train one first (cnnzoo train --config ...) "
                    f"or name a checkpoint with --checkpoint")


def default_checkpoint(runs_root: str | Path = "runs") -> Path:
    run = latest_run(runs_root)
    for name in ("best.pt", "last.pt"):
        if (run / name).is_file():
            return run / name
    raise UserError(f"{run}: the latest run has no best.pt or last.pt yet")
