"""Files on disk: where cnnzoo keeps its own (:func:`cache_home`) and how a write meets a full disk.

Torch-free, and imports nothing of cnnzoo: every floor may use it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Optional


def cache_home() -> Path:
    """Where generated data sets and disk caches live: $CNNZOO_HOME or ~/.cache/cnnzoo."""
    return Path(os.environ.get("CNNZOO_HOME") or Path.home() / ".cache" / "cnnzoo")


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
