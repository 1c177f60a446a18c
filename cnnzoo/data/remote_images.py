"""A manifest at a URL and the images it names: the table copied to a local file and read as any
manifest, each image cell (a URL, or a key relative to the manifest's own folder) made a URL,
and the images fetched by whoever decodes them (the loader workers), optionally through a local
cache with a size cap (:class:`ImageCache`, ``data.remote_cache``).

Missing images are found the way a local manifest's are where the store can be listed (one
listing per bucket, not a request per row): those rows are named in one line, or left out and
listed by ``data check``. A web server cannot be listed: a missing image there stops the run
when it is fetched, in one line.

Torch-free; imports errors, files, manifest and remote (floor 5).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from pathlib import Path

from ..errors import DataError
from ..files import cache_folder, is_url, write_bytes
from . import remote
from .manifest import SPLIT_FILES

MAX_MANIFEST_BYTES = 2 * 2**30  # a manifest is read into memory whole
MAX_IMAGE_BYTES = 256 * 2**20  # one image fetched


def manifest_folder(cache_dir: str | None) -> Path:
    """Where copies of remote manifests go: ``<cache_dir or $CNNZOO_HOME/cache>/remote/manifests``."""
    return cache_folder(cache_dir) / "remote" / "manifests"


def local_manifest(url: str, cache_dir: str | None) -> Path:
    """A local copy of the manifest at ``url`` (and of its sibling split files, when it is a
    ``train.<ext>``), fetched again each time: the local name keeps the remote one."""
    name = posixpath.basename(url.rstrip("/"))
    folder = manifest_folder(cache_dir) / hashlib.sha256(url.encode()).hexdigest()[:20]
    folder.mkdir(parents=True, exist_ok=True)
    local = folder / name
    write_bytes(local, remote.read_bytes(url, limit=MAX_MANIFEST_BYTES))
    stem, suffix = os.path.splitext(name)
    if stem.lower() in ("train", "training"):
        for sibling in (stem for stems in SPLIT_FILES.values() for stem in stems):  # as a local train.csv's
            there = remote.join(posixpath.dirname(url), sibling + suffix)
            if remote.exists(there):
                write_bytes(folder / (sibling + suffix), remote.read_bytes(there, limit=MAX_MANIFEST_BYTES))
    return local


def image_bases(manifest_url: str, images_dir: str | None) -> list[str]:
    """Where a remote manifest's relative image names are looked up: ``images_dir`` (a URL), else
    the manifest's folder, then ``images/`` in it."""
    if images_dir:
        if not is_url(images_dir):
            raise DataError(
                f"data.images_dir: {images_dir} is a local folder, but the manifest {manifest_url} is remote; "
                f"give the images' URL (e.g. s3://bucket/images)"
            )
        return [images_dir]
    folder = posixpath.dirname(manifest_url)
    return [folder, remote.join(folder, "images")]


def image_urls(names: list[str], bases: list[str]) -> list[str]:
    """Each image cell as a URL ('' when it is known to be missing): a URL as it is; a name under
    the first base that holds it (the store listed once per base), or the first base where the
    store cannot be listed (a web server)."""
    listed = [_listing(base) for base in bases]
    found = []
    for name in names:
        if is_url(name):
            found.append(name)
            continue
        key = name.lstrip("/")
        candidates = [remote.join(base, key) for base in bases]
        if any(keys is None for keys in listed):
            found.append(candidates[0])
            continue
        found.append(next((url for url, keys in zip(candidates, listed) if url in keys), ""))  # type: ignore[operator]
    return found


def _listing(base: str) -> set[str] | None:
    """Every object under ``base`` (recursively), as URLs; None for a web server."""
    if remote.bucket_of(base) is None:
        return None
    fs, path = remote.filesystem(base)
    scheme = base.split("://", 1)[0]
    try:
        keys = remote.retrying(base, lambda: fs.find(path), what="listing it")
    except remote.RemoteError as exc:
        if "not found" in str(exc):
            return set()
        raise
    return {f"{scheme}://{k}" for k in keys}


class ImageCache:
    """Fetched images kept on local disk, at most ``cap`` bytes: each is written once (atomically)
    under a name made from its URL; past the cap the least recently used go first. Every process
    (loader workers too) counts what it adds and trims the folder when the total passes the cap."""

    def __init__(self, folder: Path, cap: int):
        self.folder, self.cap = folder, cap
        self.total: int | None = None  # bytes in the folder, counted on first use in this process
        self.pid = -1

    def path(self, url: str) -> Path:
        digest = hashlib.sha256(url.encode()).hexdigest()
        return self.folder / digest[:2] / digest[2:]

    def get(self, url: str) -> bytes | None:
        path = self.path(url)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            os.utime(path)  # recently used: trimmed last
        except OSError:
            pass
        return data

    def put(self, url: str, data: bytes) -> None:
        if len(data) > self.cap:
            return
        path = self.path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, data)
        if self.total is None or self.pid != os.getpid():
            self.total, self.pid = self._sizes()[1], os.getpid()
        else:
            self.total += len(data)
        if self.total > self.cap:
            self.trim()

    def _sizes(self) -> tuple[list[tuple[float, int, Path]], int]:
        files = []
        for path in self.folder.glob("??/*"):
            try:
                st = path.stat()
            except OSError:  # removed by another process meanwhile
                continue
            if path.name.endswith(".tmp"):
                continue
            files.append((st.st_mtime, st.st_size, path))
        return files, sum(size for _, size, _ in files)

    def trim(self) -> None:
        """Remove the least recently used images until the folder holds at most 90% of the cap."""
        files, total = self._sizes()
        for _, size, path in sorted(files, key=lambda f: f[0]):
            if total <= 0.9 * self.cap:
                break
            path.unlink(missing_ok=True)
            total -= size
        self.total = total


def image_cache(cache_dir: str | None, gib: float | None) -> ImageCache | None:
    """The cache ``data.remote_cache`` asks for (None: fetch each time)."""
    if not gib:
        return None
    return ImageCache(cache_folder(cache_dir) / "remote" / "images", int(gib * 2**30))


def fetch(url: str, cache: ImageCache | None = None) -> bytes:
    """An image's bytes: from the cache when it holds them, else from the store (then kept)."""
    if cache is not None:
        data = cache.get(url)
        if data is not None:
            return data
    data = remote.read_bytes(url, limit=MAX_IMAGE_BYTES)
    if cache is not None:
        cache.put(url, data)
    return data
