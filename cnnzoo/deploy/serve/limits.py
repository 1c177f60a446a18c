"""What one request may cost ``cnnzoo serve``: the limits, the shared decoding budget, and the
memory a large decode gives back.

Owns the numbers :func:`cnnzoo.deploy.serve.app.create_app` reports in ``/info`` (files, pixels,
decoding memory), :class:`BadUpload` (a refusal with its HTTP status), :class:`MemoryBudget`
(the bytes all decodes in flight share) and the call to glibc's ``malloc_trim``. Imports only the
standard library: the package's other modules build on it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

MAX_FILES = 32
MAX_FIELD_BYTES = 2**16  # a form's text fields; images come as files
FORM_OVERHEAD = 2**16  # a multipart body's boundaries and part headers, beyond --max-bytes of files
MAX_PIXELS = 64_000_000  # larger images are refused (413), not decoded: a decompression bomb costs GBs
DECODE_MEMORY = 2**30  # bytes that the decodes in flight may hold together (one image's estimate at most)
DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))
GIVE_BACK_AFTER = 64 * 2**20  # a decode estimated above this returns the freed memory to the system


class BadUpload(Exception):
    """A request refused: its HTTP status and the sentence the client gets as ``{"error": ...}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def give_back_memory() -> None:
    """Hand the heap pages a large decode freed back to the system. glibc keeps them in the
    decoding thread's arena otherwise, and the process stays at its peak size for good."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to call
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


class MemoryBudget:
    """Bytes that decodes in flight may hold together. A decode waits, first come first served,
    until its estimate fits; one larger than the whole budget is refused before it waits."""

    def __init__(self, total: int):
        self.total = self.free = total
        self._changed = threading.Condition()
        self._queue: deque = deque()

    @contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            self._changed.wait_for(lambda: self._queue[0] is ticket and self.free >= amount)
            self._queue.popleft()
            self.free -= amount
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self.free += amount
                self._changed.notify_all()
