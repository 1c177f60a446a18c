"""Checkpoints and run folders: atomic writes, safe loading, finding ``runs/latest``.

A checkpoint is a plain dictionary (tensors, numbers, strings, lists) so that
``torch.load(..., weights_only=True)`` can read it without unpickling code:

* ``model_state``, ``layers`` (the resolved layer list, to rebuild without tracing),
* ``meta``: classes, channels, image_size, mean, std, loss (everything ``predict`` needs),
* ``config`` (fully resolved), ``epoch``, ``metrics``,
* in ``last.pt`` also ``optimizer``, ``scheduler``, ``scaler``, ``rng``, ``trainer``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import UserError

FORMAT = "cnnzoo-checkpoint"
VERSION = 1


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``."""
    import torch

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable cnnzoo checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not a cnnzoo checkpoint (made by another tool?); "
                        f"use a best.pt or last.pt from a cnnzoo run folder")
    if ckpt.get("version", 0) > VERSION:
        raise UserError(f"{path}: written by a newer cnnzoo (format {ckpt['version']}); upgrade cnnzoo")
    ckpt["path"] = str(path)
    return ckpt


def next_run_dir(runs_root: Path, name: str) -> Path:
    """``runs/<name>/<N>`` with N one more than the largest there; created here."""
    parent = runs_root / name
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
