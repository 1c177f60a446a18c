"""A shard set's ``dataset.json``, validated like a config before anything in it is used: its
size and JSON nesting (checked before parsing), the class list, each split's counts, and shard
paths that must stay files under the folder the index is in.

Plain data only (no torch); :mod:`cnnzoo.data.shard_files` reads the tars the index names. Every
refusal is one line (:class:`cnnzoo.errors.DataError`) naming the index and the field.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..checkpoint import MAX_CLASSES  # the one cap on a class list, the checkpoint's and the shards'
from ..config.checks import is_whole
from ..errors import DataError

INDEX_NAME = "dataset.json"  # the class list and each split's shards, beside them
INDEX_FORMAT = "cnnzoo-shards/1"
SPLITS = ("train", "validation", "test")
SPLIT_DIRS = {
    "train": ("train",),
    "validation": ("validation", "val"),
    "test": ("test",),
}  # an index-less set's folders
MAX_INDEX_BYTES = 32 * 2**20  # ~100,000 shards' entries fit in a few MiB
MAX_JSON_DEPTH = 16  # the index nests 4 deep; json.loads recurses once per level
MAX_SHARDS = 100_000  # per split
MAX_SPLIT_SAMPLES = 100_000_000  # per split: a split's labels are held as one list of that length

_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # strings (skipped whole) and brackets
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def bounded_json(data: bytes, limit: int, *, depth: int = MAX_JSON_DEPTH) -> Any:
    """``data`` parsed as JSON, refused (ValueError, with the reason) when larger than ``limit``
    bytes, not UTF-8, nested deeper than ``depth`` or not JSON. The nesting is counted before
    parsing: the parser recurses once per level."""
    if len(data) > limit:
        raise ValueError(f"larger than {limit:,} bytes")
    text = data.decode("utf-8")  # UnicodeDecodeError is a ValueError
    level = 0
    for token in _JSON_TOKENS.finditer(text):
        level += _DEPTH_STEP.get(token.group(), 0)
        if level > depth:
            raise ValueError(f"nested more than {depth} deep")
    try:
        return json.loads(text)
    except RecursionError:  # the count above already bounds it; kept so no input can crash the parse
        raise ValueError(f"nested more than {depth} deep") from None


def check_class_list(classes: Any, where: str) -> list[str]:
    """``classes`` when it is a list of 2 to MAX_CLASSES unique, non-empty names without control
    characters; otherwise one line naming ``where``."""
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DataError(f"{where}: classes should be a list of class names (strings)")
    if len(classes) < 2:
        raise DataError(
            f"{where}: only {len(classes)} class{'' if len(classes) == 1 else 'es'}"
            f"{' (' + classes[0] + ')' if classes else ''}; a classifier needs at least two"
        )
    if len(classes) > MAX_CLASSES:
        raise DataError(f"{where}: {len(classes):,} classes; at most {MAX_CLASSES:,} are supported")
    bad = next((c for c in classes if not c.strip() or _CONTROL.search(c)), None)
    if bad is not None:
        raise DataError(f"{where}: class name {bad!r} is empty or holds control characters")
    twice = [name for name, n in Counter(classes).items() if n > 1]
    if twice:
        raise DataError(f"{where}: class {twice[0]!r} is listed more than once; class names must be unique")
    return classes


def _count(value: Any) -> bool:
    return is_whole(value, 0, MAX_SPLIT_SAMPLES)


def read_index(folder: Path) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(classes, split -> {shards: paths, counts, class_counts, multi_label}) from
    ``folder/dataset.json``, every field checked; each shard path is ``folder``'s, absolute."""
    path = folder / INDEX_NAME
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_INDEX_BYTES + 1)
    except OSError as exc:
        raise DataError(
            f"{path}: not a cnnzoo shard index ({exc}); write the shards again with cnnzoo data shards"
        ) from None
    root = Path(os.path.abspath(path.parent))
    return parse_index(data, str(path), lambda entry, where: _shard_path(root, entry, where))


def parse_index(
    data: bytes, path: str, locate: Callable[[Any, str], str]
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """:func:`read_index` of an index's bytes read from ``path`` (a file or a URL); ``locate(entry,
    where)`` turns a shard entry into the path or URL to read, or refuses it in one line."""
    try:
        index = bounded_json(data, MAX_INDEX_BYTES)
    except ValueError as exc:
        raise DataError(
            f"{path}: not a cnnzoo shard index ({exc}); write the shards again with cnnzoo data shards"
        ) from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise DataError(f"{path}: format should be {INDEX_FORMAT!r}; write the shards again with cnnzoo data shards")
    classes = check_class_list(index.get("classes"), str(path))
    splits = index.get("splits")
    if not isinstance(splits, dict) or not {"train", "validation"} <= set(splits):
        raise DataError(f"{path}: needs train and validation shard sets (splits.train, splits.validation)")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise DataError(f"{path}: splits.{unknown[0]}: not a split cnnzoo reads ({', '.join(SPLITS)})")
    multi = index.get("multi_label", False)
    if not isinstance(multi, bool):
        raise DataError(f"{path}: multi_label should be true or false")
    parts = {name: _split(path, name, part, len(classes), locate, multi=multi) for name, part in splits.items()}
    _refuse_classes_only_outside_training(path, classes, parts)
    return classes, parts


def _split(
    path: str, name: str, part: Any, num_classes: int, locate: Callable[[Any, str], str], *, multi: bool = False
) -> dict[str, Any]:
    """One split's entry, checked: shards, counts (one per shard) and class_counts (one per class;
    of a multi-label set, samples that have the class, which need not add up to the samples)."""
    where = f"{path}: splits.{name}"
    if not isinstance(part, dict):
        raise DataError(f"{where}: should be a mapping of shards, counts and class_counts")
    shards, counts, class_counts = part.get("shards"), part.get("counts"), part.get("class_counts")
    if not isinstance(shards, list) or not 1 <= len(shards) <= MAX_SHARDS:
        raise DataError(f"{where}.shards: should be a list of 1 to {MAX_SHARDS:,} tar files")
    for key, values, length in (("counts", counts, len(shards)), ("class_counts", class_counts, num_classes)):
        if not isinstance(values, list) or len(values) != length or not all(map(_count, values)):
            raise DataError(
                f"{where}.{key}: should be a list of {length:,} whole numbers from 0 to {MAX_SPLIT_SAMPLES:,} "
                f"(one per {'shard' if key == 'counts' else 'class'})"
            )
    total = sum(counts)  # type: ignore[arg-type]
    if (total != sum(class_counts) and not multi) or total > MAX_SPLIT_SAMPLES:  # type: ignore[arg-type]
        raise DataError(
            f"{where}: counts add up to {total:,} and class_counts to {sum(class_counts):,}; "  # type: ignore[arg-type]
            f"they should agree, and a split holds at most {MAX_SPLIT_SAMPLES:,} samples"
        )
    if name == "train" and total == 0:
        raise DataError(f"{where}: holds no samples; a classifier needs training images")
    paths = [locate(entry, f"{where}.shards") for entry in shards]
    if len(set(paths)) != len(paths):
        raise DataError(f"{where}.shards: a shard is listed more than once")
    return {"shards": paths, "counts": counts, "class_counts": class_counts, "multi_label": multi}


def _shard_path(root: Path, entry: Any, where: str) -> str:
    """``root / entry`` when ``entry`` is a relative path that stays a regular file under ``root``
    once every symlink is resolved: never a URL (``pipe:``, ``http://``), an absolute path or ``..``."""
    ok = isinstance(entry, str) and entry and "\x00" not in entry and not os.path.isabs(entry)
    if ok:
        path = root / entry
        real, real_root = Path(os.path.realpath(path)), Path(os.path.realpath(root))
        try:  # a name too long for the file system is not a file under root either
            ok = real.is_relative_to(real_root) and stat.S_ISREG(os.stat(real).st_mode)
        except OSError:
            ok = False
    if not ok:
        shown = repr(entry)[:200]
        raise DataError(
            f"{where}: {shown} is not a file under {root}; the index lists tar files by their paths "
            f"relative to its folder"
        )
    return str(path)


def _refuse_classes_only_outside_training(path: str, classes: list[str], parts: dict[str, dict[str, Any]]) -> None:
    """A class with validation or test samples and no training sample: the model could never learn it."""
    train = parts["train"]["class_counts"]
    for name, part in parts.items():
        lacking = [c for c, n in enumerate(part["class_counts"]) if n and not train[c]]
        if lacking:
            raise DataError(
                f"{path}: splits.{name} has samples of class {classes[lacking[0]]!r}, which no training "
                f"sample has; every class needs training images"
            )
