"""``cnnzoo data shards SRC s3://bucket/prefix``: a shard set uploaded to a store. The prefix is
checked before anything is read (empty, or with ``--force`` a shard set cnnzoo wrote); the set is
written to a local temporary folder first and uploaded file by file, ``dataset.json`` last, so a
reader never takes a half-uploaded set for a whole one (it has no index until the end).

Torch-free; imports errors, remote and shard_output (floor 5).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..console import console
from ..errors import DataError
from . import remote
from .shard_index import INDEX_FORMAT, INDEX_NAME
from .shard_output import MARKER, SPLITS

_OURS = re.compile(rf"^(?:{re.escape(INDEX_NAME)}|{re.escape(MARKER)}|({'|'.join(SPLITS)})/\1-\d{{6}}\.tar)$")


def _objects(url: str) -> list[str]:
    """The keys under ``url``, relative to it."""
    remote.check_bucket(url)
    fs, path = remote.filesystem(url)
    prefix = path.rstrip("/") + "/"
    found = remote.retrying(url, lambda: fs.find(prefix), what="listing it")
    return [key[len(prefix) :] for key in found if key.startswith(prefix)]


def check(url: str, *, force: bool) -> None:
    """One line when ``url`` cannot receive a shard set: a web URL, or a prefix that holds objects
    (without ``force``, or objects cnnzoo did not write)."""
    remote.scheme_of(url)
    if remote.bucket_of(url) is None:
        raise DataError(f"{url}: shards are written to an object store (s3://, gs://, az://), not a web server")
    held = _objects(url)
    if not held:
        return
    if not force:
        raise DataError(
            f"{url}: already holds {len(held)} objects; choose a new prefix, or add --force to replace a shard set "
            f"cnnzoo wrote there"
        )
    foreign = next((key for key in held if not _OURS.match(key)), None)
    if foreign is not None or INDEX_NAME not in held:
        what = f"it holds {foreign}" if foreign else f"it has no {INDEX_NAME}"
        raise DataError(f"{url}: not replaced, even with --force: {what}, so it is not a shard set cnnzoo wrote")
    index = remote.read_bytes(remote.join(url, INDEX_NAME), limit=1 << 20)
    if f'"{INDEX_FORMAT}"'.encode() not in index:
        raise DataError(f"{url}: not replaced, even with --force: its {INDEX_NAME} is not cnnzoo's")


def upload(folder: Path, url: str, *, force: bool) -> None:
    """Upload the shard set written in ``folder`` to ``url``: the old set's index removed first
    (with ``force``), the shards, then the index; the old set's shards that the new one does not
    replace are removed last."""
    fs, path = remote.filesystem(url)
    old = _objects(url) if force else []
    if INDEX_NAME in old:
        index_key = remote.filesystem(remote.join(url, INDEX_NAME))[1]
        remote.retrying(url, lambda: fs.rm_file(index_key), what="removing the old index")
    count = remote.upload_folder(folder, url, last=INDEX_NAME)
    new = {str(p.relative_to(folder)).replace("\\", "/") for p in folder.rglob("*") if p.is_file()}
    for key in sorted(set(old) - new):
        stale = remote.filesystem(remote.join(url, key))[1]
        remote.retrying(url, lambda: fs.rm_file(stale), what="removing the old shards")  # noqa: B023
    console.log(f"uploaded {count} files to {url}")
