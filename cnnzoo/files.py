"""Files on disk: where cnnzoo keeps its own (:func:`cache_home`), the one way it replaces a file
(:class:`Replacement`), and how a write meets a full disk.

A CSV cell cnnzoo writes goes through :func:`spreadsheet_safe`, so that a name a spreadsheet
would run as a formula is shown as text.

Every file cnnzoo writes for a user to keep (checkpoints, exports, metrics.csv, config.yaml,
eval.json, cache records, sweep state) goes through :class:`Replacement`: written to a temporary
file in the same folder (``.<name>.<random>.tmp``), flushed to disk, given an ordinary file's
permissions and renamed over the name, so a reader (or a crash, a kill, a full disk) sees the old
file or the new one, never half of one. :func:`remove_temporaries` clears what a killed write left.

Torch-free, and imports nothing of cnnzoo: every floor may use it.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Any

TEMPORARY_SUFFIX = ".tmp"


_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def url_scheme(text: str | os.PathLike | None) -> str | None:
    """The scheme of a URL (``s3`` of ``s3://bucket/key``, lower case), None for a local path:
    what tells a location in an object store from a file name (a Windows drive ``C:\\`` has no ``//``)."""
    found = _URL.match(text) if isinstance(text, str) else None
    return found.group(1).lower() if found else None


def is_url(text: str | os.PathLike | None) -> bool:
    """Whether ``text`` names a remote location (``s3://``, ``gs://``, ``https://``...), not a local file."""
    return url_scheme(text) is not None


def cache_home() -> Path:
    """Where generated data sets and disk caches live: $CNNZOO_HOME or ~/.cache/cnnzoo."""
    return Path(os.environ.get("CNNZOO_HOME") or Path.home() / ".cache" / "cnnzoo")


def cache_folder(cache_dir: str | os.PathLike | None) -> Path:
    """Where disk caches go: ``data.cache_dir``, else ``$CNNZOO_HOME/cache``."""
    return Path(cache_dir) if cache_dir else cache_home() / "cache"


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


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error it was raised from or while handling, is a write refused for
    want of space (ENOSPC, or EDQUOT for a quota)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def current_umask() -> int:
    """The process's umask (reading it means setting it: set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Replacement:
    """A new version of ``path`` being written: :attr:`temporary` is a file beside it to fill, in
    any way (a file object, torch.save, onnx.save, a memory map); :meth:`commit` flushes it to disk
    and renames it over ``path``; :meth:`discard` removes it, leaving ``path`` as it was. Also a
    context manager that commits on success and discards on any failure (Ctrl-C included)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=TEMPORARY_SUFFIX, dir=self.path.parent)
        os.close(fd)
        self.temporary = Path(name)

    def commit(self) -> None:
        fd = os.open(self.temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(self.temporary, 0o666 & ~current_umask())  # mkstemp makes 0600; these are ordinary files
        os.replace(self.temporary, self.path)

    def discard(self) -> None:
        self.temporary.unlink(missing_ok=True)

    def __enter__(self) -> Path:
        return self.temporary

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                self.commit()
        finally:
            self.discard()  # nothing left after a commit; the partial file after a failure


def write_bytes(path: str | Path, data: bytes | bytearray | memoryview) -> None:
    """``data`` as the new contents of ``path`` (:class:`Replacement`), its blocks reserved before
    the first byte is written (:func:`reserve_space`): a full disk fails at once, ``path`` untouched."""
    with Replacement(path) as temporary, open(temporary, "r+b") as f:
        reserve_space(f.fileno(), len(data))
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    """``text`` (UTF-8) as the new contents of ``path``, as :func:`write_bytes` writes bytes."""
    write_bytes(path, text.encode("utf-8"))


# the names Replacement's mkstemp makes: "." + name + "." + 8 of [a-z0-9_] + ".tmp"
_TEMPORARY_NAME = re.compile(r"\..+\.[a-z0-9_]{8}" + re.escape(TEMPORARY_SUFFIX))


def is_temporary_name(name: str) -> bool:
    """Whether ``name`` has the shape of a :class:`Replacement`'s temporary file (``.best.pt.k3j_x9ab.tmp``)."""
    return bool(_TEMPORARY_NAME.fullmatch(name))


def remove_temporaries(folder: Path) -> None:
    """Remove the temporary files a killed :class:`Replacement` left in ``folder``: regular files
    whose names have its exact shape (:func:`is_temporary_name`); a user's ``.notes.tmp`` stays."""
    for stale in Path(folder).glob(f".*{TEMPORARY_SUFFIX}"):
        if is_temporary_name(stale.name) and stale.is_file() and not stale.is_symlink():
            stale.unlink(missing_ok=True)


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text: a string starting like a formula (``=``, ``+``,
    ``-``, ``@``, tab, carriage return) gets a leading apostrophe, OWASP's advice against CSV
    injection. Numbers stay numbers: only strings are changed, so a caller passes a negative
    figure as a number (or formats only figures it knows to be non-negative)."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value
