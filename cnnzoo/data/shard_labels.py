"""Multi-label targets in WebDataset shards: how a sample states several classes, read and written.

A multi-label sample carries a label set in one of its label members:

- ``.json``: a list of class numbers or names (``[3, 7]``, ``["cat", "dog"]``, ``[]`` for none), or
  an object with ``labels`` holding such a list (``{"labels": [3, 7]}``);
- ``.cls``: several class numbers separated by spaces or commas (``3 7``).

``cnnzoo data shards`` writes ``<key>.json`` as ``[3, 7]`` (class numbers of the set's
``dataset.json``, which says ``"multi_label": true``). A single label (``.cls`` ``3``, ``.txt``,
``.json`` ``{"label": ...}``) reads as a set of one, so a single-label set is a multi-label set
whose samples each name one class. What a member holds is checked before it is used; a bad one is
a :class:`~cnnzoo.data.shard_files.MemberError` (the sample is skipped and named, as for any bad
label).

Torch-free; imports shard_index (the bounded JSON reader) and checkpoint (the class cap).
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..checkpoint import MAX_CLASSES
from ..config.checks import is_whole
from ..errors import short_reason
from .shard_index import bounded_json

MAX_LABEL_BYTES = 4096  # a .cls, .txt or .json label member
MAX_LABEL_DEPTH = 8  # a .json label's nesting ({"label": ...} is 1)
MAX_SET = 1024  # classes one sample may name
_NUMBERS = re.compile(rb"\s*[0-9]{1,9}(?:\s*[,\s]\s*[0-9]{1,9})*\s*")


class LabelError(ValueError):
    """A label member that cannot be used (the caller turns it into its MemberError)."""


def _shown(data: bytes) -> str:
    return repr(data[:40].decode("utf-8", "replace")) + ("..." if len(data) > 40 else "")


def _stated(sample: dict[str, Any]) -> tuple[bool, Any]:
    """(whether the sample's label member states a set rather than one class: a JSON list,
    ``{"labels": ...}``, or a ``.cls`` of several numbers; the set as stated, unchecked). The member
    is parsed once here, for both answers."""
    if "cls" in sample and "txt" not in sample:
        numbers = sample["cls"].replace(b",", b" ").split()
        if _NUMBERS.fullmatch(sample["cls"]) and len(numbers) != 1:
            return True, [int(n) for n in numbers]
        return False, None
    if "json" in sample and not any(k in sample for k in ("cls", "txt")):
        try:
            value = bounded_json(sample["json"], MAX_LABEL_BYTES, depth=MAX_LABEL_DEPTH)
        except ValueError:
            return False, None  # the one-label reader names what is wrong with it
        if isinstance(value, list):
            return True, value
        if isinstance(value, dict) and "labels" in value:
            return True, value["labels"]
    return False, None


def label_set(sample: dict[str, Any], single: Any) -> tuple[list[int | str], bool]:
    """A sample's classes as its member states them, and whether it states a set: a set member's
    numbers or names, else the one label ``single(sample)`` reads (in a list); LabelError when a set
    is not valid."""
    is_set, value = _stated(sample)
    if not is_set:
        return [single(sample)], False
    what = ".cls" if "cls" in sample else ".json labels"
    if not isinstance(value, list):
        raise LabelError(f".json labels {_shown(json.dumps(value).encode())} is not a list of classes")
    return _checked(value, what), True


def _checked(values: list[Any], what: str) -> list[int | str]:
    if len(values) > MAX_SET:
        raise LabelError(f"{what} names {len(values):,} classes; a sample may name at most {MAX_SET:,}")
    out: list[int | str] = []
    for value in values:
        if is_whole(value, 0, MAX_CLASSES - 1):
            out.append(value)
        elif isinstance(value, str) and value.strip() and not re.search(r"[\x00-\x1f\x7f]", value):
            out.append(value.strip())
        else:
            shown = short_reason(json.dumps(value), 40) if not isinstance(value, bytes) else _shown(value)
            raise LabelError(f"{what}: {shown} is not a class number (0 to {MAX_CLASSES - 1:,}) or name")
    if len(set(out)) < len(out):
        raise LabelError(f"{what} names a class twice ({_shown(json.dumps(out).encode())})")
    return out


def numbers_of(labels: list[int | str], index: dict[str, int]) -> list[int]:
    """A label set as class numbers among ``index`` (class name -> number); LabelError naming the
    first label that is not one of them."""
    out = []
    for label in labels:
        number = index.get(label) if isinstance(label, str) else label
        if number is None or number >= len(index):
            raise LabelError(f"label {label!r} is not one of the {len(index)} classes")
        out.append(number)
    return out


def encode_set(numbers: list[int]) -> tuple[str, bytes]:
    """The label member ``data shards`` writes for a multi-label image: ``json`` ``[3, 7]``."""
    return "json", json.dumps(sorted(numbers)).encode()
