"""The decoded-pixel cache (``data.cache``), and the one way a cache array is reused or built.

Every image is decoded and resized once (:func:`cnnzoo.data.preprocess.load_image`) into a
uint8 ``[N, C, H, W]`` tensor in RAM or in a memory-mapped ``.npy`` file on disk, keyed by the
files' paths and contents and by the image size and channels, so a changed image or setting
rebuilds it. A file on disk is checked when opened (:func:`open_cached`: size, header,
checksum) and rebuilt when it is not what was written (:func:`cached_array`, which the feature
cache of :mod:`cnnzoo.training.feature_cache` uses too). Later epochs never touch a JPEG again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..console import console, warn
from ..errors import DataError
from ..files import Replacement, cache_folder, is_disk_full, reserve_space, write_text
from ..runtime import distributed
from . import preprocess
from .sources.samples import Samples

CACHE_FORMAT = 2  # bump when preprocessing or the cache files change, so old caches are not reused


@dataclass(kw_only=True)
class DecodedImages:
    """A split's pixels, decoded once: uint8 ``[N, C, H, W]`` and the images that failed."""

    pixels: torch.Tensor
    failed: list[int] = field(default_factory=list)
    location: str = "ram"  # or the path of the memory-mapped file
    seconds: float = 0.0  # time spent decoding; 0 when an existing disk cache was reused

    def describe(self) -> str:
        size = self.pixels.numel() / 2**20
        where = "in RAM" if self.location == "ram" else f"on disk ({self.location})"
        if not self.seconds:
            return f"{len(self.pixels)} images, {size:.0f} MB, reused {where}"
        return (
            f"{len(self.pixels)} images decoded in {self.seconds:.1f}s "
            f"({len(self.pixels) / self.seconds:.0f} img/s), {size:.0f} MB {where}"
        )


class _DecodeOne(torch.utils.data.Dataset):
    def __init__(self, samples: Samples, size: tuple[int, int], channels: int, fit: preprocess.Fit):
        self.samples, self.size, self.channels, self.fit = samples, size, channels, fit

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str]:
        try:
            return i, self.samples.read(i, self.size, self.channels, self.fit), ""
        except Exception as exc:  # a corrupt file must never stop the run
            return i, None, f"{type(exc).__name__}: {exc}"


def _collate_decoded(batch: list) -> list:
    return batch


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _fits_in_ram(nbytes: int, free_memory: float) -> bool:
    return nbytes < free_memory / 3  # the model, its optimiser and the loader workers need the rest


def choose_cache(kind: str, nbytes: int) -> str:
    """``auto`` keeps the cache in RAM when it takes under a third of the free memory."""
    if kind != "auto":
        return kind
    return "ram" if _fits_in_ram(nbytes, _available_memory()) else "disk"


def cache_choice(setting: str, nbytes: int, *, free_memory: int, free_disk: int) -> tuple[str, str]:
    """``data.cache`` for ``nbytes`` of decoded pixels, and why, in words: ``auto`` is RAM when they
    take under a third of the free memory, else disk when they fit in the free space of the disk
    holding the cache folder, else ``none`` (streamed: decoded in the loader workers each epoch)."""
    if setting != "auto":
        return setting, f"data.cache: {setting}"
    size, memory, disk = (f"{n / 2**30:,.1f} GB" for n in (nbytes, free_memory, free_disk))
    if _fits_in_ram(nbytes, free_memory):
        return "ram", f"the cache ({size}) takes under a third of the free memory ({memory})"
    if nbytes < free_disk:
        return "disk", f"the cache ({size}) takes over a third of the free memory ({memory}); {disk} free on disk"
    return "none", (
        f"the cache ({size}) fits neither in a third of the free memory ({memory}) nor on the disk "
        f"({disk} free); streaming, decoded in the loader workers each epoch"
    )


def _free_disk(folder: Path) -> int:
    """Free bytes on the disk that holds ``folder`` (or would, once made)."""
    for place in (folder, *folder.absolute().parents):
        try:
            return shutil.disk_usage(place).free
        except OSError:  # not made yet (or not readable): its parent's disk
            continue
    return 0


def plan_cache(setting: str, nbytes: int, cache_dir: str | Path | None, *, say: bool = True) -> str:
    """The decoded-pixel cache for this run: ``auto`` measured against this machine's free memory
    and disk (:func:`cache_choice`), with one line in the log saying which and why (unless ``say`` is off)."""
    if setting != "auto":
        return setting
    free_disk = _free_disk(cache_folder(cache_dir))
    choice, why = cache_choice(setting, nbytes, free_memory=_available_memory(), free_disk=free_disk)
    if say:
        console.log(f"data.cache: auto -> {choice}: {why}")
    return choice


class NpyWriter:
    """A new array to fill, memory-mapped to a temporary ``.npy`` beside ``path`` and renamed into
    place by :meth:`finish`, so a killed run never leaves a half-written cache that a later run
    would trust. The file's blocks are reserved first (:func:`cnnzoo.files.reserve_space`):
    a full disk is found before any pixel is written, never as SIGBUS from a mapped page.
    In RAM when ``path`` is None, or when its folder cannot be written or has no room and the
    array fits in memory (a warning names ``key``, the setting that asked for the file).
    """

    def __init__(self, path: Path | None, shape: tuple[int, ...], dtype: Any, *, key: str):
        self.path, self.replacement, self._mapped = path, None, None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.replacement = Replacement(path)
                self._mapped = np.lib.format.open_memmap(
                    self.replacement.temporary, mode="w+", dtype=dtype, shape=shape
                )
                with open(self.replacement.temporary, "r+b") as f:
                    reserve_space(f.fileno(), os.fstat(f.fileno()).st_size)
            except OSError as exc:
                self.discard()
                self.path = None
                self._fall_back_to_ram(exc, path, math.prod(shape) * np.dtype(dtype).itemsize, key)
        self.tensor = torch.from_numpy(self._mapped if self._mapped is not None else np.empty(shape, dtype=dtype))

    @staticmethod
    def _fall_back_to_ram(exc: OSError, path: Path, nbytes: int, key: str) -> None:
        size = f"{nbytes / 2**20:,.1f} MB"
        if not is_disk_full(exc):
            warn(f"{key}: cannot write {path.parent} ({exc.strerror or exc}); keeping it in RAM instead")
        elif nbytes < _available_memory() / 2:
            warn(f"{key}: no room for {size} in {path.parent}; keeping it in RAM instead")
        else:
            raise DataError(
                f"{key}: no room for {size} in {path.parent}, nor in memory; free space there, "
                f"set data.cache_dir to a folder with room, or set {key}: none"
            )

    def finish(self, record: dict[str, Any]) -> torch.Tensor:
        """The filled array: the same tensor in RAM, or the renamed file mapped copy-on-write, with
        ``record`` and the data's checksum beside it (``<name>.json``, read by :func:`open_cached`)."""
        if self._mapped is None:
            return self.tensor
        self._mapped.flush()
        sidecar = {
            "format": SIDECAR_FORMAT,
            "shape": list(self._mapped.shape),
            "dtype": self._mapped.dtype.str,
            "sha1": _checksum(self._mapped),
            "record": record,
        }
        self._mapped = self.tensor = None
        # the record first: a cache file in place always has its record (a kill between the two
        # leaves a record alone, which the next run overwrites)
        write_text(_sidecar(self.path), json.dumps(sidecar))
        self.replacement.commit()
        return torch.from_numpy(np.load(self.path, mmap_mode="c"))

    def discard(self) -> None:
        self._mapped = self.tensor = None
        if self.replacement is not None:
            self.replacement.discard()


SIDECAR_FORMAT = 1
_MAX_SIDECAR_BYTES = 64 * 2**20  # a record of failed images for millions of images stays under this


class StaleCache(Exception):
    """A cache file that cannot be trusted; the message says why (for the rebuild's one line)."""


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _checksum(array: np.ndarray) -> str:
    return hashlib.sha1(memoryview(np.ascontiguousarray(array)).cast("B")).hexdigest()


def _regular_file(path: Path, what: str) -> int:
    """The size of ``path``, which must be a regular file (a FIFO would block the reader)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise StaleCache(f"its {what} is missing") from None
    except OSError as exc:
        raise StaleCache(f"its {what} cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise StaleCache(f"its {what} is not a regular file")
    return st.st_size


def open_cached(path: Path, shape: tuple[int, ...], dtype: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """A cache file mapped copy-on-write and its record, after checking that it is what its
    record says: a regular file of the exact size, a header with the expected shape and dtype,
    and the data's checksum. Raises :class:`StaleCache` saying why not."""
    dtype = np.dtype(dtype)
    if _regular_file(_sidecar(path), "record (.json)") > _MAX_SIDECAR_BYTES:
        raise StaleCache("its record (.json) is too large")
    try:
        sidecar = json.loads(_sidecar(path).read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        raise StaleCache("its record (.json) is damaged") from None
    if not (
        isinstance(sidecar, dict)
        and sidecar.get("format") == SIDECAR_FORMAT
        and sidecar.get("shape") == list(shape)
        and sidecar.get("dtype") == dtype.str
        and isinstance(sidecar.get("sha1"), str)
        and isinstance(sidecar.get("record"), dict)
    ):
        raise StaleCache("its record (.json) does not describe this cache")
    size = _regular_file(path, "data (.npy)")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if read_header is None:
                raise ValueError(f".npy version {version}")
            found_shape, fortran, found_dtype = read_header(f)
            offset = f.tell()
    except Exception as exc:  # numpy's header parser meets damaged bytes with many kinds of error
        raise StaleCache(f"its header is unreadable ({type(exc).__name__})") from None
    if tuple(found_shape) != tuple(shape) or found_dtype != dtype or fortran:
        raise StaleCache(f"its header says {found_dtype}{list(found_shape)}, expected {dtype}{list(shape)}")
    expected = offset + math.prod(shape) * dtype.itemsize
    if size != expected:
        raise StaleCache(f"it is {'truncated' if size < expected else 'too long'} ({size:,} of {expected:,} bytes)")
    array = (
        np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=tuple(shape))
        if math.prod(shape)
        else np.empty(shape, dtype=dtype)
    )
    if _checksum(array) != sidecar["sha1"]:
        raise StaleCache("its contents changed since it was written (checksum)")
    return torch.from_numpy(array), sidecar["record"]


@dataclass(kw_only=True)
class CachedArray:
    """What :func:`cached_array` hands back: the array, where it lives, the record kept with it."""

    tensor: torch.Tensor
    location: str  # "ram" or the file's path
    record: dict[str, Any]
    reused: bool


_KEPT: dict[str, CachedArray] | None = None  # the arrays kept for the next run (kept_between_runs)


@contextmanager
def kept_between_runs() -> Iterator[None]:
    """Within this block, a cache array built in RAM (or opened from disk) is kept for the next run
    in this process that asks for the same images: the K runs of a k-fold cross-validation share
    one pool of images, decoded (and, for a transfer config, run through the frozen layers) once."""
    global _KEPT
    _KEPT = {}
    try:
        yield
    finally:
        _KEPT = None


def keeping() -> bool:
    """Whether arrays are kept between runs now (a caller computes its content key only then)."""
    return _KEPT is not None


def cached_array(
    path: Path | None,
    shape: tuple[int, ...],
    dtype: Any,
    *,
    key: str,
    fill: Callable[[torch.Tensor], dict[str, Any]],
    record_problem: Callable[[dict[str, Any]], str] = lambda record: "",
    content: str | None = None,
) -> CachedArray:
    """The one way a cache is reused or built (the decoded pixels, the frozen features).

    With a ``path``, a file there that passes :func:`open_cached` (and whose record
    ``record_problem`` finds nothing wrong with) is reused; one that does not is rebuilt with
    one warning that names ``key`` and says why. Building runs ``fill(tensor)`` on a fresh array
    (RAM, or a file from :class:`NpyWriter`), which returns the record to keep beside it.
    ``content`` names what the array holds: inside :func:`kept_between_runs` the same content
    asked for again is the array already made.
    """
    if _KEPT is not None and content is not None:
        kept = _KEPT.get(f"{content}|{shape}")
        if kept is None:
            kept = _KEPT[f"{content}|{shape}"] = _cached_array(
                path, shape, dtype, key=key, fill=fill, record_problem=record_problem
            )
            return kept
        return dataclasses.replace(kept, reused=True)
    return _cached_array(path, shape, dtype, key=key, fill=fill, record_problem=record_problem)


def _cached_array(
    path: Path | None,
    shape: tuple[int, ...],
    dtype: Any,
    *,
    key: str,
    fill: Callable[[torch.Tensor], dict[str, Any]],
    record_problem: Callable[[dict[str, Any]], str],
) -> CachedArray:
    if path is not None and (os.path.lexists(path) or os.path.lexists(_sidecar(path))):
        try:
            tensor, record = open_cached(path, shape, dtype)
            problem = record_problem(record)
            if problem:
                raise StaleCache(f"its record (.json) {problem}")
            return CachedArray(tensor=tensor, location=str(path), record=record, reused=True)
        except StaleCache as stale:
            if os.path.isdir(path):
                warn(f"{key}: {path} is a folder, not a cache file; keeping the cache in RAM instead")
                path = None
            elif os.path.lexists(path):
                warn(f"{key}: rebuilding {path}: {stale}")
    writer = NpyWriter(path, shape, dtype, key=key)
    location = str(writer.path or "ram")
    try:
        record = fill(writer.tensor)
        return CachedArray(tensor=writer.finish(record), location=location, record=record, reused=False)
    except BaseException as exc:  # Ctrl-C or a failure: no half-written cache file stays behind
        writer.discard()
        if isinstance(exc, OSError) and is_disk_full(exc):
            raise DataError(
                f"{key}: the disk under {location} filled up while the cache was written; "
                f"free some space, or set {key}: ram"
            ) from None
        raise


def decode_all(
    samples: Samples,
    size: tuple[int, int],
    channels: int,
    *,
    kind: str,
    cache_dir: Path | None,
    workers: int,
    fit: preprocess.Fit = preprocess.SQUASH,
) -> DecodedImages:
    """Decode a split once into RAM or a reusable memory-mapped file (see module docstring)."""

    start = time.perf_counter()
    n = len(samples)
    shape = (n, channels, size[0], size[1])
    path, key = None, None
    on_disk = choose_cache(kind, math.prod(shape)) == "disk"
    if on_disk or keeping():
        fitted = "" if fit == preprocess.SQUASH else f"|{fit}"  # squash: the key caches made before data.resize have
        key = hashlib.sha1(f"{CACHE_FORMAT}|{shape}|{samples.fingerprint()}{fitted}".encode()).hexdigest()[:20]
    if on_disk:
        path = cache_folder(cache_dir) / f"{samples.name}-{key}.npy"

    def failed_problem(record: dict[str, Any]) -> str:
        failed = record.get("failed")
        ok = isinstance(failed, list) and all(type(i) is int and 0 <= i < n for i in failed)
        return "" if ok else "lists unreadable images that this split does not have"

    cached = cached_array(
        path,
        shape,
        np.uint8,
        key="data.cache",
        fill=lambda pixels: {"failed": _decode_into(pixels, _DecodeOne(samples, size, channels, fit), workers)},
        record_problem=failed_problem,
        content=f"pixels|{key}" if key else None,
    )
    failed = cached.record["failed"]
    if cached.reused:
        for i in failed:
            warn(f"skipped unreadable image {samples.describe(i)} (found when the cache was built)")
    return DecodedImages(
        pixels=cached.tensor,
        failed=failed,
        location=cached.location,
        seconds=0.0 if cached.reused else time.perf_counter() - start,
    )


def _decode_into(pixels: torch.Tensor, decoder: _DecodeOne, workers: int) -> list[int]:
    """Decode every image of ``decoder.samples`` into ``pixels`` [N, C, H, W]; the indices that failed."""
    samples = decoder.samples
    loader = torch.utils.data.DataLoader(
        decoder,
        batch_size=32,
        num_workers=workers,
        collate_fn=_collate_decoded,
        multiprocessing_context="fork" if workers else None,
    )
    failed: list[int] = []
    bar = console.bar(len(samples), f"caching {samples.name}", unit="img")
    try:
        for batch in loader:
            for i, image, error in batch:
                if image is None:
                    failed.append(i)
                    warn(f"skipped unreadable image {samples.describe(i)} ({error})")
                else:
                    pixels[i] = torch.from_numpy(image).permute(2, 0, 1)
            bar.update(len(batch))
    finally:
        bar.close()
    return failed


def shared_cache_kind(setting: str, key: str) -> str:
    """A cache setting for this process: in a DDP run ``auto`` means a file on disk, which
    local rank 0 writes once and every process maps (the OS keeps one copy in memory)."""

    if distributed.context().enabled and setting == "auto":
        console.log(f"{key}: auto -> disk, shared by the processes of this run")
        return "disk"
    return setting
