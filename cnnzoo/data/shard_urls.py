"""WebDataset shards in object storage or on a web server: a shard set found at a URL the way
:mod:`cnnzoo.data.shard_files` finds one on disk, so the same scan, stream and checks follow.

``s3://bucket/prefix`` is a shard set when ``prefix/dataset.json`` (what ``cnnzoo data shards``
writes; read, never scanned) or ``prefix/train/*.tar`` is there; ``https://host/train-{000..063}.tar``
is a brace pattern (``validation-...`` beside it). An index's shard entries stay relative names under
its own URL: never another URL, an absolute path or ``..``.

Torch-free; imports errors, shard_index and remote (floor 5).
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from ..errors import DataError
from . import remote
from .manifest import is_manifest
from .shard_index import INDEX_NAME, MAX_INDEX_BYTES, MAX_SHARDS, SPLIT_DIRS, parse_index

_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


def is_url_shards(url: str) -> bool:
    """A brace pattern or ``.tar`` URL, or a prefix holding ``dataset.json`` or ``train/*.tar``;
    the bucket is checked first, so a wrong name or refused credentials are one line."""
    remote.scheme_of(url)
    last = url.rstrip("/").rsplit("/", 1)[-1]
    if "{" in url or url.endswith(".tar"):
        return True
    if is_manifest(last):  # a manifest's URL: no prefix to look under
        return False
    remote.check_bucket(url)
    return remote.exists(remote.join(url, INDEX_NAME)) or bool(remote.list_files(remote.join(url, "train"), ".tar"))


def read_url_index(url: str) -> tuple[list[str], dict[str, dict[str, Any]]] | None:
    """The checked index at ``url/dataset.json``, or None when there is none."""
    where = remote.join(url, INDEX_NAME)
    if not remote.exists(where):
        return None
    data = remote.read_bytes(where, limit=MAX_INDEX_BYTES + 1)
    return parse_index(data, where, lambda entry, field: _shard_url(url, entry, field))


def _shard_url(base: str, entry: Any, where: str) -> str:
    """``base/entry`` when ``entry`` is a relative name under the index's own URL."""
    ok = isinstance(entry, str) and entry and not _CONTROL.search(entry) and "://" not in entry
    ok = ok and not entry.startswith("/") and ".." not in entry.split("/")
    if not ok:
        raise DataError(
            f"{where}: {repr(entry)[:200]} is not a name under {base}; the index lists tar files by their paths "
            f"relative to its folder"
        )
    return remote.join(base, entry)


def find_url_shards(url: str) -> dict[str, list[str]]:
    """split -> shard URLs for a prefix without an index (``train/``, ``validation/`` or ``val/``,
    ``test/``) or a brace pattern (with ``validation-...`` or ``val-...`` beside ``train-...``)."""
    found: dict[str, list[str]] = {}
    if "{" in url or url.endswith(".tar"):
        found["train"] = expand(url)
        if "train" in url:  # validation-... beside it: as many as there are (the pattern's first ones)
            for name in ("validation", "val"):
                there = list(itertools.takewhile(remote.exists, _braces(url.replace("train", name))))
                if there:
                    found["validation"] = there
                    break
        return found
    for split, names in SPLIT_DIRS.items():
        for name in names:
            shards = remote.list_files(remote.join(url, name), ".tar")
            if shards:
                found[split] = shards
                break
    return found


def _braces(pattern: str) -> Any:
    try:
        import braceexpand  # lazy: installed with webdataset, an optional extra
    except ImportError:
        raise DataError("WebDataset shards need the webdataset library: pip install 'cnnzoo[wds]'") from None
    return braceexpand.braceexpand(pattern)


def expand(pattern: str) -> list[str]:
    """A brace pattern's URLs, each checked to exist (one line counting the missing)."""
    urls = list(itertools.islice(_braces(pattern), MAX_SHARDS + 1))
    if len(urls) > MAX_SHARDS:
        raise DataError(f"{pattern}: names more than {MAX_SHARDS:,} shards; cnnzoo reads at most that many per split")
    remote.check_bucket(pattern)
    missing = [u for u in urls if not remote.exists(u)]
    if missing:
        raise DataError(f"{pattern}: {len(missing)} of {len(urls)} shards not found (first: {missing[0]})")
    return urls
