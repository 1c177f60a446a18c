"""WebDataset shard files: found (a folder of ``train/`` and ``validation/`` shard sets with its
``dataset.json``, or a brace pattern), counted, and read member by member
(:mod:`cnnzoo.data.shard_writer` writes them).

Plain data only (no torch): :mod:`cnnzoo.data.sources` turns a :class:`ShardSet` into a split and
:mod:`cnnzoo.data.shards` streams it; :mod:`cnnzoo.data.shard_index` checks ``dataset.json``.

Reading never hands a path to webdataset's URL opener (``gopen``, which runs ``pipe:`` locations in
a shell): each shard is a local file opened here, or a URL of a registered scheme streamed through
:mod:`cnnzoo.data.remote` (found by :mod:`cnnzoo.data.shard_urls`), and read with :mod:`tarfile` as
a plain, uncompressed tar, member sizes bounded before anything is read. A name with a colon and
no ``//`` is a file name.
What a member holds is checked before it is used (:func:`label_of`); a member that fails is
skipped and counted, never an exception. The ``webdataset`` library (``cnnzoo[wds]``) is imported
to expand brace patterns.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import MAX_CLASSES
from ..config.checks import is_whole
from ..console import warn
from ..errors import DataError, short_reason
from . import remote, shard_labels, shard_urls
from .shard_index import (
    INDEX_NAME,
    MAX_SHARDS,
    MAX_SPLIT_SAMPLES,
    SPLIT_DIRS,
    bounded_json,
    check_class_list,
    read_index,
)
from .shard_labels import MAX_LABEL_BYTES, MAX_LABEL_DEPTH

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
LABEL_KEYS = ("cls", "txt", "json")
MAX_SAMPLE_BYTES = 64 * 2**20  # a sample's members together; a bigger one is skipped unread
SKIPPED = "__skipped__"  # a sample's key for why it cannot be used, set while reading it
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's rule: a sample's key ends at the name's first dot
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members, not samples
_CLS = re.compile(rb"\s*([0-9]{1,9})\s*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class MemberError(ValueError):
    """A sample that cannot be used (no image, no valid label, too large): skipped and counted."""


def webdataset() -> Any:
    """The ``webdataset`` module, or one line naming the extra."""
    try:
        import webdataset as wds  # lazy: an optional extra that only shards need
    except ImportError:
        raise DataError("WebDataset shards need the webdataset library: pip install 'cnnzoo[wds]'") from None
    return wds


def is_shards(root: str) -> bool:
    """A brace pattern or ``.tar`` path, or a folder holding shards (``dataset.json``, ``train/*.tar``),
    on disk or at a URL (:mod:`cnnzoo.data.shard_urls`)."""
    if remote.is_url(root):
        return shard_urls.is_url_shards(root)
    if "{" in root or root.endswith(".tar"):
        return True
    folder = Path(root)
    return folder.is_dir() and ((folder / INDEX_NAME).is_file() or bool(_tars(folder / "train")))


def _tars(folder: Path) -> list[str]:
    """The regular ``*.tar`` files in ``folder`` (its name taken literally, brackets and colons too)."""
    paths = sorted(glob.glob(os.path.join(glob.escape(str(folder)), "*.tar")))
    return [p for p in paths if _is_regular(p)]


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)  # not a folder, a FIFO (a read would wait) or a device
    except (OSError, ValueError):
        return False


@dataclass(kw_only=True)
class ShardSet:
    """One split's shards and how many samples of each class they hold."""

    name: str
    shards: list[str]
    counts: list[int]  # samples per shard
    class_counts: list[int]  # samples per class (multi-label: samples that have the class)
    multi_label: bool = False  # samples carry label sets (:mod:`cnnzoo.data.shard_labels`)


def find_shards(root: str) -> tuple[list[str], dict[str, ShardSet]]:
    """(classes, split -> shards) for a shard folder (its ``dataset.json``, or scanned) or a pattern."""
    folder = Path(root)
    indexed = shard_urls.read_url_index(root) if remote.is_url(root) else None
    if indexed is None and folder.is_dir() and (folder / INDEX_NAME).is_file():
        indexed = read_index(folder)
    if indexed is not None:
        classes, parts = indexed
        return classes, {name: ShardSet(name=name, **part) for name, part in parts.items()}
    if remote.is_url(root):
        found = shard_urls.find_url_shards(root)
    elif folder.is_dir():
        found = {}
        for split, names in SPLIT_DIRS.items():
            for name in names:
                paths = _tars(folder / name)
                if paths:
                    found[split] = paths
                    break
    else:
        found = {"train": _expand(root)}
        if "train" in root:  # train-{000..127}.tar beside validation-*.tar (or val-*.tar)
            wildcard = re.sub(r"\{[^}]*\}", "*", root)
            sibling = next(
                (m for v in ("validation", "val") if (m := sorted(glob.glob(wildcard.replace("train", v))))), None
            )
            if sibling:
                found["validation"] = [p for p in sibling if _is_regular(p)]
    if "train" not in found:
        raise DataError(f"{root}: no training shards (train/*.tar); cnnzoo data shards writes a shard set")
    if not found.get("validation"):
        raise DataError(
            f"{root}: no validation shards; give a folder with train/ and validation/ shard sets "
            f"(cnnzoo data shards writes one), or name the training shards train-... beside validation-..."
        )
    return _scan(found)


def _expand(pattern: str) -> list[str]:
    webdataset()  # braceexpand comes with it
    import braceexpand  # lazy: installed with webdataset

    paths = list(itertools.islice(braceexpand.braceexpand(pattern), MAX_SHARDS + 1))
    if len(paths) > MAX_SHARDS:
        raise DataError(f"{pattern}: names more than {MAX_SHARDS:,} shards; cnnzoo reads at most that many per split")
    missing = [p for p in paths if not _is_regular(p)]
    if missing:
        raise DataError(f"{pattern}: {len(missing)} of {len(paths)} shards not found (first: {missing[0]})")
    return paths


def label_of(sample: dict[str, Any]) -> int | str:
    """A sample's label as its member states it: a class number (``.cls``) or name (``.txt``, or
    ``.json``: a number, a name, or an object with ``label`` or ``class``); MemberError when the
    sample has none or it is not valid."""
    if SKIPPED in sample:
        raise MemberError(sample[SKIPPED])
    if "cls" in sample:
        found = _CLS.fullmatch(sample["cls"])
        if not found or int(found.group(1)) >= MAX_CLASSES:
            raise MemberError(f".cls {_shown(sample['cls'])} is not a class number (0 to {MAX_CLASSES - 1:,})")
        return int(found.group(1))
    if "txt" in sample:
        return _class_name(sample["txt"], ".txt")
    if "json" in sample:
        try:
            value = bounded_json(sample["json"], MAX_LABEL_BYTES, depth=MAX_LABEL_DEPTH)
        except ValueError as exc:
            raise MemberError(f".json is not valid JSON ({short_reason(exc, 80)})") from None
        value = value.get("label", value.get("class")) if isinstance(value, dict) else value
        if is_whole(value, 0, MAX_CLASSES - 1):
            return value
        if isinstance(value, str):
            return _class_name(value.encode(), ".json label")
        raise MemberError(f".json label {_shown(json.dumps(value).encode())} is not a class number or name")
    raise MemberError("no label member (.cls, .txt or .json)")


def _class_name(data: bytes, what: str) -> str:
    try:
        name = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise MemberError(f"{what} is not UTF-8 text") from None
    if not name or _CONTROL.search(name):
        raise MemberError(f"{what} {_shown(data)} is empty or holds control characters")
    return name


def _shown(data: bytes) -> str:
    """A member's bytes as a message shows them: short, printable."""
    return repr(data[:40].decode("utf-8", "replace")) + ("..." if len(data) > 40 else "")


def class_of(sample: dict[str, Any], index: dict[str, int]) -> int:
    """A sample's class number among ``index`` (class name -> number); MemberError when it has none."""
    label = label_of(sample)
    number = index.get(label) if isinstance(label, str) else label
    if number is None or number >= len(index):
        raise MemberError(f"label {label!r} is not one of the {len(index)} classes")
    return number


def labels_of(sample: dict[str, Any]) -> tuple[list[int | str], bool]:
    """A sample's label set (:mod:`cnnzoo.data.shard_labels`: a set member, or one label as a set
    of one) and whether its member states a set; MemberError when it has none or it is not valid."""
    if SKIPPED in sample:
        raise MemberError(sample[SKIPPED])
    try:
        return shard_labels.label_set(sample, label_of)
    except shard_labels.LabelError as exc:
        raise MemberError(str(exc)) from None


def class_set_of(sample: dict[str, Any], index: dict[str, int]) -> list[int]:
    """A multi-label sample's class numbers among ``index``; MemberError when one is not a class."""
    try:
        return shard_labels.numbers_of(labels_of(sample)[0], index)
    except shard_labels.LabelError as exc:
        raise MemberError(str(exc)) from None


def image_of(sample: dict[str, Any]) -> tuple[str, bytes]:
    """A sample's image member: (extension, bytes); MemberError when it has none."""
    if SKIPPED in sample:
        raise MemberError(sample[SKIPPED])
    ext = next((k for k in IMAGE_KEYS if k in sample), None)
    if ext is None:
        raise MemberError(f"no image member ({', '.join('.' + k for k in IMAGE_KEYS[:3])}, ...)")
    return ext, sample[ext]


def _scan(found: dict[str, list[str]]) -> tuple[list[str], dict[str, ShardSet]]:
    """Count each shard's samples and labels (label members only; no image is decoded): the
    classes are the training split's labels, which every other split's must be among."""
    labels: dict[str, list[list[list[int | str]]]] = {}
    multi = False
    for split, paths in found.items():
        labels[split] = []
        for p in paths:
            sets, sets_used = _shard_labels(p)
            labels[split].append(sets)
            multi = multi or sets_used
    seen = {v for per_shard in labels["train"] for values in per_shard for v in values}
    where = os.path.dirname(found["train"][0])
    if any(isinstance(v, str) for v in seen) and any(isinstance(v, int) for v in seen):
        raise DataError(f"{where}: some samples are labelled by number (.cls) and some by name (.txt, .json)")
    if not seen:
        raise DataError(f"{where}: the training shards hold no sample with a usable label (.cls, .txt or .json)")
    numbers = [v for v in seen if isinstance(v, int)]
    names = sorted(v for v in seen if isinstance(v, str)) or [str(i) for i in range(max(numbers) + 1)]
    classes = check_class_list(names, f"{where} (the training labels)")
    index = {c: i for i, c in enumerate(classes)}
    sets = {}
    for split, per_shard in labels.items():
        counts = [0] * len(classes)
        for path, shard in zip(found[split], per_shard):
            for value in (v for values in shard for v in values):
                number = index.get(value) if isinstance(value, str) else value
                if number is None or number >= len(classes):
                    raise DataError(
                        f"{path}: label {value!r} is not one of the training classes "
                        f"({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}); "
                        f"fix the label or remove the sample"
                    )
                counts[number] += 1  # type: ignore[index]
        sizes = [len(s) for s in per_shard]
        sets[split] = ShardSet(name=split, shards=found[split], counts=sizes, class_counts=counts, multi_label=multi)
        if sum(counts) > MAX_SPLIT_SAMPLES:
            raise DataError(
                f"{where}: the {split} shards hold over {MAX_SPLIT_SAMPLES:,} samples; cnnzoo reads at most that many"
            )
    return classes, sets


def _shard_labels(path: str) -> tuple[list[list[int | str]], bool]:
    """The usable label sets of one shard's samples (one label: a set of one), and whether any
    sample states a set (multi-label); the others are counted in one warning."""
    values: list[list[int | str]] = []
    skipped: list[str] = []
    multi = False
    for sample in iter_shard(path, keys=LABEL_KEYS):
        try:
            labels, stated_set = labels_of(sample)
            values.append(labels)
            multi = multi or stated_set
        except MemberError as exc:
            skipped.append(f"{sample['__key__']}: {exc}")
    if skipped:
        warn(f"skipped {len(skipped)} sample{'s' * (len(skipped) > 1)} of shard {path} (first: {skipped[0]})")
    return values, multi


def iter_shard(
    path: str, *, keys: tuple[str, ...] | None = None, on_damage: Callable[[str, str], None] | None = None
) -> Iterator[dict[str, Any]]:
    """The samples of one local tar shard (``keys``: only those members are read; by default the
    image and label members); a shard that is not a plain tar, or that breaks off, ends there and
    is reported to ``on_damage(path, reason)`` (by default named in a warning)."""
    wanted = set(keys or (*IMAGE_KEYS, *LABEL_KEYS))
    try:
        with remote.RetryingReader(path) if remote.is_url(path) else open(path, "rb") as f:
            head = f.read(6)
            kind = next((name for magic, name in _COMPRESSED if head.startswith(magic)), None)
            if kind:
                raise MemberError(f"{kind}-compressed; cnnzoo reads plain (uncompressed) tar shards")
            f.seek(0)
            with tarfile.open(fileobj=f, mode="r|") as tar:
                yield from _grouped(tar, path, wanted)
    except remote.RemoteError:  # the store refused or stopped answering: one line, not a damaged shard
        raise
    except Exception as exc:  # tarfile and the file system raise several types for a damaged archive
        reason = str(exc) if isinstance(exc, MemberError) else f"{type(exc).__name__}: {short_reason(exc, 120)}"
        (on_damage or _warn_damaged)(path, reason)


def _warn_damaged(path: str, reason: str) -> None:
    warn(f"skipped the rest of shard {path}: it is damaged ({reason})")


def _grouped(tar: tarfile.TarFile, path: str, wanted: set[str]) -> Iterator[dict[str, Any]]:
    """The members of a tar stream as samples (consecutive members that share a key), each
    member read only when wanted and within the size bounds; a sample over them gets SKIPPED."""
    sample: dict[str, Any] | None = None
    size = 0
    for info in tar:
        tar.members = []  # a stream's members would otherwise be kept, one per file
        found = _KEY.match(info.name)
        if not info.isreg() or not found or _META.match(info.name):
            continue
        key, ext = found.group(1), found.group(2).lower()
        if sample is None or key != sample["__key__"]:
            if sample is not None:
                yield sample
            sample, size = {"__key__": key, "__url__": path}, 0
        if ext not in wanted or SKIPPED in sample:
            continue
        size += info.size
        if ext in sample:
            sample[SKIPPED] = f"two members named {info.name}"
        elif ext in LABEL_KEYS and info.size > MAX_LABEL_BYTES:
            sample[SKIPPED] = f"{info.name} is over {MAX_LABEL_BYTES:,} bytes, too large for a label"
        elif size > MAX_SAMPLE_BYTES:
            sample[SKIPPED] = f"{info.name}: the sample is over {MAX_SAMPLE_BYTES // 2**20} MiB"
        else:
            sample[ext] = tar.extractfile(info).read()  # type: ignore[union-attr]
    if sample is not None:
        yield sample
