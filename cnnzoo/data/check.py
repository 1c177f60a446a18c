"""``cnnzoo data check``: what cnnzoo will train on, and what is wrong with it, before any training.

Resolves a config's data as training does (:func:`cnnzoo.data.sources.load_data`, missing
manifest rows kept aside rather than stopping), then reads every file once: images per class and
split, missing, unreadable and duplicate files (by the SHA-1 of their bytes), image sizes, class
imbalance, and classes that only one split has. Shards are read member by member, as training
reads them: their counts are the samples it can use, and a sample it would skip (an image that does
not decode, a label that is not valid) or a shard that breaks off or holds fewer samples than its
index lists is unreadable. Floor 5, like the rest of :mod:`cnnzoo.data`.
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..config import Config
from ..files import is_url
from . import remote_images, shard_files
from .sources import ArraySamples, DataSpec, Pretrained, Samples, ShardSamples, load_data

SHOWN = 5  # files named per problem before "..."
_CHUNK = 2048  # files handed to the reading threads at a time


@dataclass(kw_only=True, slots=True)
class _Facts:
    """One file as read: a million of them stay in memory until the report is built, hence slots
    and the SHA-1 as 20 bytes, not 40 hex digits."""

    digest: bytes
    size: tuple[int, int] | None  # (W, H); None when unreadable
    error: str = ""
    where: str = ""  # a shard's sample or the shard itself (other files are their samples' paths)
    label: int = -1  # a shard sample's class, when it is usable
    labels: list[int] | None = None  # a multi-label shard sample's classes, when it is usable


def _file_facts(path: str) -> _Facts:
    try:
        if is_url(path):  # a remote manifest's image; a refused or unreachable store stops the check
            data = remote_images.fetch(path)
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as exc:
        return _Facts(digest=b"", size=None, error=exc.strerror or str(exc))
    return _bytes_facts(data)  # a truncated or corrupt file fails at load, not at open


def _bytes_facts(data: bytes) -> _Facts:
    digest = hashlib.sha1(data).digest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return _Facts(digest=digest, size=img.size)
    except Exception as exc:  # PIL raises many types for broken files
        return _Facts(digest=digest, size=None, error=f"{type(exc).__name__}: {str(exc).strip() or 'unreadable'}")


def _image_facts(samples: ArraySamples, i: int) -> _Facts:
    try:
        img = samples.array[i]
        return _Facts(digest=hashlib.sha1(img.tobytes()).digest(), size=img.size)
    except Exception as exc:  # the library and PIL raise many types for a broken image
        return _Facts(digest=b"", size=None, error=f"{type(exc).__name__}: {exc}")


def _array_facts(samples: ArraySamples) -> list[_Facts]:
    if not samples.decoded:  # a Hugging Face dataset's images, decoded one by one
        return [_image_facts(samples, i) for i in range(len(samples))]
    shape = samples.array.shape  # an in-memory array (torchvision sets): every image is readable
    return [_Facts(digest=hashlib.sha1(row.tobytes()).digest(), size=(shape[2], shape[1])) for row in samples.array]


def _shard_facts(samples: ShardSamples, index: dict[str, int]) -> list[_Facts]:
    """Every sample of every shard read once, as training reads it, and one entry per shard that
    breaks off or holds fewer samples than the index lists."""
    facts = []
    for path, expected in zip(samples.shards, samples.shard_counts):
        damage: list[str] = []
        read = 0
        for sample in shard_files.iter_shard(path, on_damage=lambda _, reason, into=damage: into.append(reason)):
            read += 1
            where = f"{path}: {sample['__key__']}"
            try:
                label = (shard_files.class_set_of if samples.multi_label else shard_files.class_of)(sample, index)
                fact = _bytes_facts(shard_files.image_of(sample)[1])
            except shard_files.MemberError as exc:
                fact = _Facts(digest=b"", size=None, error=str(exc))
            fact.where = where
            if not fact.error:
                fact.labels, fact.label = (label, -1) if samples.multi_label else (None, label)
            facts.append(fact)
        if damage or read < expected:
            reason = f"damaged shard ({damage[0]})" if damage else "shard holds fewer samples"
            facts.append(_Facts(digest=b"", size=None, error=f"{reason}: read {read} of {expected}", where=path))
    return facts


def _split_facts(samples: Samples, classes: list[str]) -> list[_Facts]:
    """One entry per image (and per damaged shard): what the check reads is the kind's own business
    (facts are this module's, so the kinds are told apart here rather than taught the check)."""
    if isinstance(samples, ShardSamples):  # every member of every shard, read once
        return _shard_facts(samples, {name: i for i, name in enumerate(classes)})
    if isinstance(samples, ArraySamples):
        return _array_facts(samples)
    paths = samples.files()
    facts: list[_Facts] = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes outside the GIL
        # a chunk at a time: map() submits every task at once, and a million futures took gigabytes
        for start in range(0, len(paths), _CHUNK):
            facts.extend(pool.map(_file_facts, paths[start : start + _CHUNK]))
    return facts


def check_data(cfg: Config, *, task: str = "auto", pretrained: Pretrained | None = None) -> dict[str, Any]:
    """The report ``cnnzoo data check`` prints, as plain data (``task``, ``pretrained``: as for :func:`load_data`)."""
    spec = load_data(cfg, task=task, missing_ok=True, pretrained=pretrained)
    splits = {s.name: s for s in (spec.train, spec.val, spec.test) if s is not None}
    facts = {name: _split_facts(s, spec.classes) for name, s in splits.items()}
    counts = {name: np.bincount(_class_indices(s, spec.multi_label, facts[name]), minlength=len(spec.classes)).tolist()
              for name, s in splits.items()}  # fmt: skip
    sizes = [f.size for fs in facts.values() for f in fs if f.size is not None]
    train_counts = [n for n in counts["train"] if n]
    return {
        "data": spec.root,
        "classes": spec.classes,
        "counts": counts,
        "missing": spec.missing,
        "unreadable": [
            {"file": f.where or s.describe(i), "reason": f.error}
            for name, s in splits.items()
            for i, f in enumerate(facts[name])
            if f.error
        ],  # fmt: skip
        "duplicates": _duplicates(splits, facts),
        "sizes": _size_summary(sizes),
        "imbalance": round(max(train_counts) / min(train_counts), 2) if train_counts else None,
        "one_split_only": _one_split_only(spec, counts),
        **({"task": "multi", "images": {name: len(s) for name, s in splits.items()}} if spec.multi_label else {}),
    }


def _class_indices(samples: Samples, multi_label: bool, facts: list[_Facts]) -> list[int]:
    """Every label of every image (multi-label: an image counts once in each of its classes; shards:
    every usable sample, as read)."""
    if samples.streamed:
        return [c for f in facts for c in (f.labels or [])] if multi_label else [f.label for f in facts if f.label >= 0]
    if multi_label:
        return [c for labels in samples.label_sets or [] for c in labels]
    return [c for c in samples.labels if c >= 0]


def _duplicates(splits: dict[str, Samples], facts: dict[str, list[_Facts]]) -> list[dict[str, Any]]:
    """Groups of files with the same bytes; ``splits`` says whether a group crosses splits (a leak).
    Only files met twice are named: a file's first (split, index) is all that is kept of it."""
    first: dict[bytes, tuple[str, int]] = {}
    groups: dict[bytes, list[tuple[str, int]]] = {}
    for name in splits:
        for i, f in enumerate(facts[name]):
            if f.digest:
                seen = first.setdefault(f.digest, (name, i))
                if seen != (name, i):
                    groups.setdefault(f.digest, [seen]).append((name, i))
    return [
        {
            "files": [facts[name][i].where or splits[name].describe(i) for name, i in group],
            "splits": sorted({name for name, _ in group}),
        }
        for group in (groups[digest] for digest in first if digest in groups)
    ]


def _size_summary(sizes: list[tuple[int, int]]) -> dict[str, Any] | None:
    if not sizes:
        return None
    areas = [w * h for w, h in sizes]
    order = np.argsort(areas)
    return {
        "smallest": list(sizes[order[0]]),
        "median": list(sizes[order[len(order) // 2]]),
        "largest": list(sizes[order[-1]]),
        "distinct": len(set(sizes)),
    }


def _one_split_only(spec: DataSpec, counts: dict[str, list[int]]) -> dict[str, list[str]]:
    """Classes some split has and another lacks, by the split that has them."""
    out: dict[str, list[str]] = {}
    for c, name in enumerate(spec.classes):
        present = [split for split, n in counts.items() if n[c]]
        if len(present) < len(counts):
            out[name] = present
    return out


def problems(report: dict[str, Any]) -> int:
    """How many files cannot be trained on (missing or unreadable): ``data check`` exits 1 when any."""
    return len(report["missing"]) + len(report["unreadable"])


def format_check(report: dict[str, Any]) -> str:
    """The report as the terminal shows it: a table of images per class and split, then findings."""
    splits = list(report["counts"])
    width = max(len(c) for c in [*report["classes"], "total"])
    lines = [f"data: {report['data']}, {len(report['classes'])} classes", ""]
    lines.append(f"  {'':<{width}}" + "".join(f"  {s:>10}" for s in splits))
    for c, name in enumerate(report["classes"]):
        lines.append(f"  {name:<{width}}" + "".join(f"  {report['counts'][s][c]:>10}" for s in splits))
    if "images" in report:  # multi-label: a class's count is the images that have it
        lines.append(f"  {'images':<{width}}" + "".join(f"  {report['images'][s]:>10}" for s in splits))
    else:
        lines.append(f"  {'total':<{width}}" + "".join(f"  {sum(report['counts'][s]):>10}" for s in splits))
    lines.append("")
    sizes = report["sizes"]
    if sizes:
        text = lambda wh: f"{wh[0]}x{wh[1]}"  # noqa: E731
        lines.append(
            f"image sizes (WxH): smallest {text(sizes['smallest'])}, median {text(sizes['median'])}, "
            f"largest {text(sizes['largest'])} ({sizes['distinct']} distinct)"
        )
    if report["imbalance"] is not None:
        lines.append(f"class imbalance (train): the largest class has {report['imbalance']:g}x the smallest's images")
    lines += _findings(report)
    return "\n".join(lines)


def _findings(report: dict[str, Any]) -> list[str]:
    def named(items: list[str]) -> str:
        return ", ".join(items[:SHOWN]) + (", ..." if len(items) > SHOWN else "")

    missing = report["missing"]
    out = [f"missing: {len(missing) or 'none'}" + (f" ({named(missing)})" if missing else "")]
    bad = [f"{u['file']} ({u['reason']})" for u in report["unreadable"]]
    out.append(f"unreadable: {len(bad) or 'none'}" + (f" ({named(bad)})" if bad else ""))
    dups = report["duplicates"]
    across = [d for d in dups if len(d["splits"]) > 1]
    text = f"duplicates (same bytes): {len(dups) or 'none'}"
    text += f" group(s), {len(across)} across splits" if dups else ""
    out.append(text + (f" ({named([' = '.join(d['files'][:3]) for d in (across or dups)])})" if dups else ""))
    only = report["one_split_only"]
    out.append(
        "classes missing from a split: "
        + (named([f"{c} (only {', '.join(s) or 'none'})" for c, s in only.items()]) if only else "none")
    )
    return out
