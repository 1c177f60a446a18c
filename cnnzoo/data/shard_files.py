"""WebDataset shard files: found (a folder of ``train/`` and ``validation/`` shard sets with its
``dataset.json``, or a brace pattern), counted, read member by member, and written.

Plain data only (no torch): :mod:`cnnzoo.data.sources` turns a :class:`ShardSet` into a split and
:mod:`cnnzoo.data.shards` streams it. The ``webdataset`` library (``cnnzoo[wds]``) is imported
when shards are first read or written.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..console import console, warn
from ..errors import DataError
from ..files import write_text

INDEX_NAME = "dataset.json"  # the class list and each split's shards, beside them
INDEX_FORMAT = "cnnzoo-shards/1"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
LABEL_KEYS = ("cls", "txt", "json")
SPLIT_DIRS = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}


def webdataset() -> Any:
    """The ``webdataset`` module, or one line naming the extra."""
    try:
        import webdataset as wds  # lazy: an optional extra that only shards need
    except ImportError:
        raise DataError("WebDataset shards need the webdataset library: pip install 'cnnzoo[wds]'") from None
    return wds


def is_shards(root: str) -> bool:
    """A brace pattern or ``.tar`` path, or a folder holding shards (``dataset.json``, ``train/*.tar``)."""
    if "{" in root or root.endswith(".tar"):
        return True
    folder = Path(root)
    return folder.is_dir() and ((folder / INDEX_NAME).is_file() or bool(glob.glob(str(folder / "train" / "*.tar"))))


@dataclass(kw_only=True)
class ShardSet:
    """One split's shards and how many samples of each class they hold."""

    name: str
    shards: list[str]
    counts: list[int]  # samples per shard
    class_counts: list[int]


def find_shards(root: str) -> tuple[list[str], dict[str, ShardSet]]:
    """(classes, split -> shards) for a shard folder (its ``dataset.json``, or scanned) or a pattern."""
    folder = Path(root)
    if folder.is_dir() and (folder / INDEX_NAME).is_file():
        return _read_index(folder)
    if folder.is_dir():
        found = {}
        for split, names in SPLIT_DIRS.items():
            for name in names:
                paths = sorted(glob.glob(str(folder / name / "*.tar")))
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
                found["validation"] = sibling
    if "validation" not in found:
        raise DataError(
            f"{root}: no validation shards; give a folder with train/ and validation/ shard sets "
            f"(cnnzoo data shards writes one), or name the training shards train-... beside validation-..."
        )
    return _scan(found)


def _expand(pattern: str) -> list[str]:
    webdataset()  # braceexpand comes with it
    import braceexpand  # lazy: installed with webdataset

    paths = list(braceexpand.braceexpand(pattern))
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{pattern}: {len(missing)} of {len(paths)} shards not found (first: {missing[0]})")
    return paths


def _read_index(folder: Path) -> tuple[list[str], dict[str, ShardSet]]:
    path = folder / INDEX_NAME
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        assert index["format"] == INDEX_FORMAT
        classes = [str(c) for c in index["classes"]]
        splits = {
            name: ShardSet(
                name=name,
                shards=[str(folder / s) for s in part["shards"]],
                counts=[int(n) for n in part["counts"]],
                class_counts=[int(n) for n in part["class_counts"]],
            )
            for name, part in index["splits"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise DataError(f"{path}: not a cnnzoo shard index; write the shards again with cnnzoo data shards") from None
    if "validation" not in splits or "train" not in splits:
        raise DataError(f"{path}: needs train and validation shard sets")
    return classes, splits


def label_of(sample: dict[str, Any]) -> int | str | None:
    if "cls" in sample:
        return int(sample["cls"].decode().strip())
    if "txt" in sample:
        return sample["txt"].decode("utf-8").strip()
    if "json" in sample:
        value = json.loads(sample["json"])
        value = value.get("label", value.get("class")) if isinstance(value, dict) else value
        return value if isinstance(value, (int, str)) else None
    return None


def _scan(found: dict[str, list[str]]) -> tuple[list[str], dict[str, ShardSet]]:
    """Count each shard's samples and labels (label members only; no image is decoded)."""
    labels: dict[str, list[list[int | str]]] = {}
    for split, paths in found.items():
        labels[split] = [[label_of(s) for s in iter_shard(p, keys=LABEL_KEYS)] for p in paths]
    seen = {v for per_split in labels.values() for per_shard in per_split for v in per_shard if v is not None}
    names = sorted(v for v in seen if isinstance(v, str))
    if names and len(names) != len(seen):
        raise DataError(f"{found['train'][0]}: some samples are labelled by index (.cls) and some by name (.txt)")
    classes = names or [str(i) for i in range(max(int(v) for v in seen) + 1)] if seen else []
    if len(classes) < 2:
        raise DataError(f"{found['train'][0]}: fewer than two classes in the shards' labels (.cls, .txt or .json)")
    index = {c: i for i, c in enumerate(classes)}
    sets = {}
    for split, per_shard in labels.items():
        counts = [0] * len(classes)
        for value in (v for shard in per_shard for v in shard if v is not None):
            counts[index[value] if isinstance(value, str) else int(value)] += 1
        sets[split] = ShardSet(name=split, shards=found[split], counts=[len(s) for s in per_shard], class_counts=counts)
    return classes, sets


def iter_shard(path: str, *, keys: tuple[str, ...] | None = None) -> Iterator[dict[str, Any]]:
    """The samples of one tar shard (``keys``: only those members are read); a shard that breaks
    off is named in a warning and ends there."""
    wds = webdataset()
    wanted = None if keys is None else (lambda name: name.rsplit(".", 1)[-1].lower() in keys)
    try:
        yield from wds.tariterators.tarfile_samples([{"url": path}], select_files=wanted)
    except Exception as exc:  # tarfile and webdataset raise several types for a damaged archive
        warn(f"skipped the rest of shard {path}: it is damaged ({type(exc).__name__}: {exc})")


def write_shards(
    splits: dict[str, Any], classes: list[str], out: Path, *, shard_size: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Write each split (a :class:`cnnzoo.data.sources.Samples`) as ``out/<split>/<split>-NNNNNN.tar``
    (the training split shuffled, so that every shard mixes the classes) and ``out/dataset.json``;
    returns the index."""
    wds = webdataset()
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: already exists and is not empty; choose a new folder or remove it")
    index: dict[str, Any] = {"format": INDEX_FORMAT, "classes": list(classes), "splits": {}}
    for name, samples in splits.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        order = np.random.default_rng(seed).permutation(len(samples)) if name == "train" else range(len(samples))
        pattern = str(out / name / f"{name}-%06d.tar")
        shard_counts: list[int] = []
        with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0) as writer:
            for n, i in enumerate(order):
                if n % shard_size == 0:
                    shard_counts.append(0)
                ext, data = _encoded(samples, int(i))
                writer.write({"__key__": f"{name}-{n:09d}", ext: data, "cls": str(samples.labels[i]).encode()})
                shard_counts[-1] += 1
        counts = np.bincount(samples.labels, minlength=len(classes)).tolist()
        index["splits"][name] = {
            "shards": [f"{name}/{name}-{k:06d}.tar" for k in range(len(shard_counts))],
            "counts": shard_counts,
            "class_counts": counts,
        }
        console.log(f"shards {name}: {len(samples)} images in {len(shard_counts)} shards under {out / name}")
    write_text(out / INDEX_NAME, json.dumps(index, indent=1))
    return index


def _encoded(samples: Any, i: int) -> tuple[str, bytes]:
    """An image's bytes as stored: a file as it is (no re-encoding), an array as PNG."""
    if samples.paths is not None:
        path = samples.paths[i]
        ext = Path(path).suffix.lower().lstrip(".")
        with open(path, "rb") as f:
            return ("jpg" if ext == "jpeg" else ext), f.read()
    buffer = io.BytesIO()
    Image.fromarray(samples.array[i]).save(buffer, format="PNG")  # type: ignore[index]
    return "png", buffer.getvalue()
