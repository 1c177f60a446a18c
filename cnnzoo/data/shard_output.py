"""The folder ``cnnzoo data shards`` writes (:class:`StagedFolder`): checked before anything is
read, filled in a hidden folder beside it and renamed into place whole, so that a kill at any
moment leaves no output or a complete one, never half a data set that training would take for all of it.

A folder cnnzoo fills carries a marker file (:data:`MARKER`: the writer's host and process id).
``--force`` replaces only a shard set cnnzoo wrote (its marker or cnnzoo's shard index, and
nothing else in it), and a later run removes only the hidden folders of writers that were
killed (its marker, a writer no longer running); a folder that holds anything cnnzoo did not
write is never deleted. While it is being filled, the hidden folder's index says that it is
incomplete, so the shard readers refuse it.

Torch-free; the names of the index come from :mod:`cnnzoo.data.shard_files`, which writes it.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from ..errors import DataError
from ..files import current_umask, write_text

MARKER = ".cnnzoo-shards"  # in every folder data shards fills: what --force and the clean-up recognise
INCOMPLETE = "cnnzoo-shards/incomplete"  # the index's format while the folder is being filled
SPLITS = ("train", "validation", "test")


def staging_prefix(out: Path) -> str:
    return f".{out.name}.partial-"


def check_output(out: str | Path, *, force: bool, index_name: str, index_format: str) -> Path:
    """``out`` as the folder to write (absolute; a link to a folder followed): one line when it
    cannot be one (a file, under a file, a link to nothing) or when it holds something (without
    ``force``, or something cnnzoo did not write)."""
    out = Path(os.path.abspath(out))
    if out.is_symlink():
        if not out.exists():
            raise DataError(f"{out}: a link to {os.readlink(out)}, which does not exist; give a new folder")
        out = Path(os.path.realpath(out))
    above = next((p for p in [out, *out.parents] if os.path.lexists(p)), None)
    if above is not None and not above.is_dir():
        where = "a file" if above == out else f"under {above}, which is not a folder"
        raise DataError(f"{out}: {where}; data shards writes a new folder: give a folder's name")
    if out.is_dir() and _entries(out):
        if not force:
            raise DataError(
                f"{out}: already exists and is not empty; choose a new folder, or add --force to replace a shard set "
                f"cnnzoo wrote there"
            )
        foreign = _not_cnnzoos(out, index_name, index_format)
        if foreign:
            raise DataError(f"{out}: not replaced, even with --force: {foreign}; remove it yourself, or choose another")
    return out


def _entries(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError as exc:
        raise DataError(f"{folder}: cannot be read ({exc.strerror or exc}); give a folder you may write") from None


def _not_cnnzoos(folder: Path, index_name: str, index_format: str) -> str:
    """Why ``folder`` is not a shard set cnnzoo wrote ('' when it is one): it needs cnnzoo's marker
    or index, and may hold nothing else than them and split folders of ``<split>-NNNNNN.tar`` files."""
    names = _entries(folder)
    if MARKER not in names and _index_format(folder / index_name) != index_format:
        return f"it holds no {MARKER} marker nor a cnnzoo {index_name}, so it is not a shard set cnnzoo wrote"
    for name in names:
        path = folder / name
        if name in (MARKER, index_name) and path.is_file() and not path.is_symlink():
            continue
        if name not in SPLITS or path.is_symlink() or not path.is_dir():
            return f"it holds {name}, which cnnzoo data shards did not write"
        shard = re.compile(rf"{name}-\d{{6}}\.tar")
        for member in _entries(path):
            if not shard.fullmatch(member) or (path / member).is_symlink() or not (path / member).is_file():
                return f"it holds {name}/{member}, which cnnzoo data shards did not write"
    return ""


def _index_format(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            index = json.loads(f.read(1 << 20))
    except (OSError, ValueError, RecursionError):
        return None
    return index.get("format") if isinstance(index, dict) else None


def _write_marker(folder: Path) -> None:
    record = {"written_by": "cnnzoo data shards", "host": socket.gethostname(), "pid": os.getpid()}
    write_text(folder / MARKER, json.dumps(record) + "\n")


def _killed_writer(folder: Path) -> bool:
    """Whether ``folder`` is the hidden folder of a writer on this machine that no longer runs."""
    try:
        record = json.loads((folder / MARKER).read_text(encoding="utf-8")[:4096])
        host, pid = record["host"], int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # running, as another user
        return False
    return False


def remove_stale(out: Path, index_name: str) -> list[Path]:
    """Remove the hidden folders that killed writers of ``out`` left beside it (marked, their
    writer gone, holding only what cnnzoo writes); returns them."""
    removed = []
    for name in sorted(glob.glob(glob.escape(str(out.parent / staging_prefix(out))) + "*")):
        folder = Path(name)
        if folder.is_symlink() or not folder.is_dir() or not _killed_writer(folder):
            continue
        for cut in folder.glob(".*.tmp"):  # a file a kill cut while it was being replaced
            cut.unlink(missing_ok=True)
        if not _not_cnnzoos(folder, index_name, INCOMPLETE):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class StagedFolder:
    """A new version of the folder ``out`` being written: :attr:`staging` is a hidden folder beside
    it to fill (marked as cnnzoo's, its index saying it is incomplete until replaced); on success
    it is renamed to ``out`` (a shard set cnnzoo wrote there moved aside first and removed after),
    on any failure removed. Hidden folders that killed writers left beside ``out`` go first."""

    def __init__(self, out: str | Path, *, force: bool, index_name: str, index_format: str):
        self.index_name, self.index_format, self.force = index_name, index_format, force
        self.out = check_output(out, force=force, index_name=index_name, index_format=index_format)
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(self.out, index_name)
            self.staging = Path(tempfile.mkdtemp(prefix=staging_prefix(self.out), dir=self.out.parent))
            os.chmod(self.staging, 0o777 & ~current_umask())  # mkdtemp makes 0700; the output is an ordinary folder
        except OSError as exc:
            raise DataError(f"{self.out}: cannot be written ({exc.strerror or exc}); give a writable place") from None
        try:
            _write_marker(self.staging)
            write_text(self.staging / index_name, json.dumps({"format": INCOMPLETE}) + "\n")
        except BaseException:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise

    def __enter__(self) -> Path:
        return self.staging

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                self._put_in_place()
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)  # nothing left after the rename

    def _put_in_place(self) -> None:
        _sync(self.staging)
        out, aside = self.out, None
        try:
            if out.is_dir() and _entries(out):
                check_output(out, force=self.force, index_name=self.index_name, index_format=self.index_format)
                _write_marker(out)  # a kill before it is removed leaves a hidden folder the next run recognises
                aside = Path(tempfile.mkdtemp(prefix=staging_prefix(out), dir=out.parent))
                os.replace(out, aside)
            os.replace(self.staging, out)
        except OSError as exc:
            if aside is not None and not os.path.lexists(out):
                os.replace(aside, out)
                aside = None
            raise DataError(
                f"{out}: could not be put in place ({exc.strerror or exc}); was it created while the shards "
                f"were written? Nothing was changed there"
            ) from None
        finally:
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
        _sync_folder(out.parent)


def _sync(folder: Path) -> None:
    """Every file under ``folder`` and the folders themselves on disk, before the rename makes them the output."""
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _sync_folder(Path(dirpath))


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the files are
        pass
    finally:
        os.close(fd)
