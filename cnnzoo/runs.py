"""Run folders: ``<runs>/<name>/<N>``, the ``<runs>/latest`` link, and the checkpoint a command
uses when it is given none (the latest run's ``best.pt``).

Torch-free.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .console import warn
from .errors import UserError
from .files import remove_temporaries


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
        raise UserError(
            f"--runs {runs_root}: cannot make a run folder in {parent} "
            f"({exc.strerror or exc}); choose a folder you can write with --runs"
        ) from None


def clean_stale_temporaries(run_dir: Path) -> None:
    """Remove what a killed write left behind in a run folder (this process is its only writer)."""
    remove_temporaries(run_dir)
    (run_dir / "metrics.tmp").unlink(missing_ok=True)  # the temporary name earlier versions wrote metrics.csv through


def runs_root_of(run_dir: Path) -> Path:
    """The folder that holds ``latest`` for a run folder ``<runs>/<name>/<N>``."""
    return Path(run_dir).parent.parent


_RUN_TARGET = re.compile(r"(?:[^\n]+/)?\d+")  # what point_latest names: <name>/<N>, a run folder
_MAX_LATEST_FILE = 4096


def is_latest_link(link: Path) -> bool:
    """Whether ``link`` (``<runs>/latest``) is what :func:`point_latest` makes, and so may be
    replaced: absent, a symlink to a run folder ``<name>/<N>``, or the one-line text file that
    names one. A user's own file or folder called ``latest`` is neither."""
    if not os.path.lexists(link):
        return True
    if link.is_symlink():
        return bool(_RUN_TARGET.fullmatch(os.readlink(link)))
    try:
        if not link.is_file() or link.stat().st_size > _MAX_LATEST_FILE:
            return False
        return bool(_RUN_TARGET.fullmatch(link.read_text(encoding="utf-8").strip()))
    except (OSError, UnicodeDecodeError):
        return False


def point_latest(runs_root: Path, run_dir: Path) -> None:
    """Make ``runs/latest`` a relative link to ``run_dir`` (replaced atomically). Only a run folder
    cnnzoo numbered (``<runs>/<name>/<N>``) is pointed at, and only a ``latest`` that
    :func:`is_latest_link` recognises is replaced: anything else called ``latest`` is left as it
    is, with one warning."""
    if not Path(run_dir).name.isdigit():
        return  # a resumed last.pt outside a run folder: its grandparent is nobody's runs folder
    link = runs_root / "latest"
    if not is_latest_link(link):
        warn(f"{link}: not a link cnnzoo made (a file or folder of yours); left as it is, not pointed at {run_dir}")
        return
    target = os.path.relpath(run_dir, runs_root)
    tmp = runs_root / f".latest.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except OSError:  # file systems without links: a text file naming the run
        tmp.unlink(missing_ok=True)
        if is_latest_link(link) and (link.is_symlink() or link.is_file()):
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
    raise UserError(
        f"{link}: no training run found; train one first (cnnzoo train --config ...) or name the model with -m/--model"
    )


def resolve_checkpoint(path: str | Path | None = None, runs_root: str | Path = "runs") -> Path:
    """The model file a command uses: ``path`` when one is given, else the latest run's ``best.pt``
    (its ``last.pt`` while it has no ``best.pt`` yet)."""
    if path:
        return Path(path)
    run = latest_run(runs_root)
    for name in ("best.pt", "last.pt"):
        if (run / name).is_file():
            return run / name
    raise UserError(f"{run}: the latest run has no best.pt or last.pt yet")


def disk_full_error(run_dir: Path, saved_epoch: int | None) -> UserError:
    """The one line for a full disk (or quota) under a run folder: what ``last.pt`` still holds
    (checkpoints are replaced atomically, so it is whole) and how to go on."""
    clean_stale_temporaries(run_dir)
    last = run_dir / "last.pt"
    if saved_epoch is None or not last.is_file():
        return UserError(
            f"disk full at {run_dir}; nothing was saved; free some space or choose another folder with --runs"
        )
    return UserError(
        f"disk full at {run_dir}; last.pt holds epoch {saved_epoch}; free some space, then "
        f"resume with: cnnzoo train --resume {last}"
    )
