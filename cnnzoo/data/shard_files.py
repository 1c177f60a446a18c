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
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..console import console, warn
from ..errors import DataError
from ..files import write_text
from .shard_output import StagedFolder

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
    splits: dict[str, Any],
    classes: list[str],
    out: Path,
    *,
    roots: list[Path],
    shard_size: int = 1000,
    seed: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Write each split (a :class:`cnnzoo.data.sources.Samples`) as ``out/<split>/<split>-NNNNNN.tar``
    (the training split shuffled, so that every shard mixes the classes) and ``out/dataset.json``;
    returns the index. The folder is filled beside ``out`` and renamed into place whole, its index
    last (:class:`~cnnzoo.data.shard_output.StagedFolder`; ``force`` replaces a shard set cnnzoo
    wrote there). One label per image; image files only, each under one of ``roots``."""
    wds = webdataset()
    for samples in splits.values():
        _check_copyable(samples, roots, len(classes))
    index: dict[str, Any] = {"format": INDEX_FORMAT, "classes": list(classes), "splits": {}}
    with StagedFolder(out, force=force, index_name=INDEX_NAME, index_format=INDEX_FORMAT) as staging:
        for name, samples in splits.items():
            part = _write_split(wds, samples, staging / name, len(classes), shard_size=shard_size, seed=seed)
            index["splits"][name] = part
        write_text(staging / INDEX_NAME, json.dumps(index, indent=1))  # last: the set is complete
    for name, part in index["splits"].items():
        console.log(f"shards {name}: {sum(part['counts'])} images in {len(part['counts'])} shards under {out / name}")
    return index


def _check_copyable(samples: Any, roots: list[Path], num_classes: int) -> None:
    """One line for a sample that a shard cannot hold: not one label of the classes (several, none,
    or out of range), or a file outside the source's folders (a manifest row ``../../secret``, an
    absolute path, a link out)."""
    for i, label in enumerate(samples.labels):
        count = 1 if samples.label_sets is None else len(samples.label_sets[i])
        if count != 1:
            raise DataError(
                f"{samples.describe(i)}: {count} labels; shards hold one label per image: keep multi-label "
                f"data as a manifest (train reads it as it is)"
            )
        if not 0 <= label < num_classes:
            raise DataError(f"{samples.describe(i)}: label {label} is not one of the {num_classes} classes")
    if samples.paths is None:
        return
    folders = [os.path.realpath(r) for r in roots]
    for path in samples.paths:
        real = os.path.realpath(path)
        if not any(real == f or real.startswith(f.rstrip(os.sep) + os.sep) for f in folders):
            raise DataError(
                f"{path}: resolves to {real}, outside the source's folder ({', '.join(folders)}); data shards "
                f"copies only files under it: move the image there or remove its row"
            )


def _write_split(wds: Any, samples: Any, folder: Path, num_classes: int, *, shard_size: int, seed: int) -> dict:
    """One split's tars in ``folder`` (a file that cannot be read as an image is skipped and counted); its
    index entry."""
    name = folder.name
    folder.mkdir()
    order = np.random.default_rng(seed).permutation(len(samples)) if name == "train" else range(len(samples))
    shard_counts: list[int] = []
    class_counts = [0] * num_classes
    skipped: list[str] = []
    file, writer, written = None, None, 0
    try:
        for i in map(int, order):
            encoded = _encoded(samples, i)
            if encoded is None:
                skipped.append(samples.describe(i))
                continue
            if writer is None or shard_counts[-1] == shard_size:
                if writer is not None:
                    writer.close()
                    file.close()
                file = open(folder / f"{name}-{len(shard_counts):06d}.tar", "wb")  # not a URL: never gopen's
                writer = wds.TarWriter(file, encoder=False)
                shard_counts.append(0)
            label = samples.labels[i]
            writer.write({"__key__": f"{name}-{written:09d}", encoded[0]: encoded[1], "cls": b"%d" % label})
            written += 1
            shard_counts[-1] += 1
            class_counts[label] += 1
    finally:
        if writer is not None:
            writer.close()
            file.close()
    if not shard_counts:
        first = f" (first: {skipped[0]})" if skipped else ""
        raise DataError(f"{name} split: none of its {len(samples)} files can be read as an image{first}")
    if skipped:
        s = "s" if len(skipped) > 1 else ""
        warn(f"skipped {len(skipped)} {name} file{s} that cannot be read as an image (first: {skipped[0]})")
    shards = [f"{name}/{name}-{k:06d}.tar" for k in range(len(shard_counts))]
    return {"shards": shards, "counts": shard_counts, "class_counts": class_counts}


# an image's format (PIL's name) as the member extension the shard readers know (IMAGE_KEYS)
_FORMAT_KEYS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif", "GIF": "gif"}


def _encoded(samples: Any, i: int) -> tuple[str, bytes] | None:
    """An image's bytes as stored, under the extension of its format as read from the file (not
    its name, which may have none): a file as it is (no re-encoding; a format the readers do not
    name, such as PPM, as PNG), an array as PNG. None for a file that cannot be read as an image."""
    if samples.paths is None:
        buffer = io.BytesIO()
        Image.fromarray(samples.array[i]).save(buffer, format="PNG")  # type: ignore[index]
        return "png", buffer.getvalue()
    try:
        with open(samples.paths[i], "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a huge image's DecompressionBombWarning: copied, not decoded here
            image = Image.open(f)  # the header only: what the file is
            key = _FORMAT_KEYS.get(image.format or "")
            if key is not None:
                f.seek(0)
                return key, f.read()
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return "png", buffer.getvalue()
    except Exception:  # PIL raises several types for a file that is not an image it can read; OSError: unreadable
        return None
