"""``cnnzoo data shards``' writer: each split of a source as WebDataset tar shards and the set's
``dataset.json`` (:mod:`cnnzoo.data.shard_index` reads it back), filled beside the target and put in
place whole by :class:`~cnnzoo.data.shard_output.StagedFolder`. One label per image (a ``.cls``
member) or a label set (a ``.json`` member, :mod:`cnnzoo.data.shard_labels`).

Imports console, errors, files and the shard modules; torch-free. Each tar is a file opened here and
handed to webdataset's ``TarWriter``: never a path its URL opener would read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..console import console, warn
from ..errors import DataError
from ..files import write_text
from . import remote, shard_labels
from .shard_files import webdataset
from .shard_index import INDEX_FORMAT, INDEX_NAME
from .shard_output import StagedFolder


def write_shards(
    splits: dict[str, Any],
    classes: list[str],
    out: Path,
    *,
    roots: list[Path],
    shard_size: int = 1000,
    seed: int = 0,
    force: bool = False,
    multi_label: bool = False,
) -> dict[str, Any]:
    """Write each split (a :class:`cnnzoo.data.sources.Samples`) as ``out/<split>/<split>-NNNNNN.tar``
    (the training split shuffled, so that every shard mixes the classes) and ``out/dataset.json``;
    returns the index. The folder is filled beside ``out`` and renamed into place whole, its index
    last (:class:`~cnnzoo.data.shard_output.StagedFolder`; ``force`` replaces a shard set cnnzoo
    wrote there). One label per image, or with ``multi_label`` each image's label set (a ``.json``
    member, :mod:`cnnzoo.data.shard_labels`); image files only, each under one of ``roots``."""
    wds = webdataset()
    for samples in splits.values():
        _check_copyable(samples, roots, len(classes), multi_label=multi_label)
    index: dict[str, Any] = {"format": INDEX_FORMAT, "classes": list(classes), "splits": {}}
    if multi_label:
        index["multi_label"] = True
    with StagedFolder(out, force=force, index_name=INDEX_NAME, index_format=INDEX_FORMAT) as staging:
        for name, samples in splits.items():
            part = _write_split(
                wds, samples, staging / name, len(classes), shard_size=shard_size, seed=seed, multi=multi_label
            )
            index["splits"][name] = part
        write_text(staging / INDEX_NAME, json.dumps(index, indent=1))  # last: the set is complete
    for name, part in index["splits"].items():
        console.log(f"shards {name}: {sum(part['counts'])} images in {len(part['counts'])} shards under {out / name}")
    return index


def _check_copyable(samples: Any, roots: list[Path], num_classes: int, *, multi_label: bool = False) -> None:
    """One line for a sample that a shard cannot hold: not one label of the classes (several, none,
    or out of range), or a file outside the source's folders (a manifest row ``../../secret``, an
    absolute path, a link out)."""
    for i, label in enumerate([] if multi_label else samples.labels):  # a label set's classes are its source's
        count = 1 if samples.label_sets is None else len(samples.label_sets[i])
        if count != 1:
            raise DataError(
                f"{samples.describe(i)}: {count} labels; shards hold one label per image: keep multi-label "
                f"data as a manifest (train reads it as it is)"
            )
        if not 0 <= label < num_classes:
            raise DataError(f"{samples.describe(i)}: label {label} is not one of the {num_classes} classes")
    folders = [os.path.realpath(r) for r in roots]
    for path in samples.files():
        if remote.is_url(path):  # a remote manifest's image: fetched, no local file to escape to
            continue
        real = os.path.realpath(path)
        if not any(real == f or real.startswith(f.rstrip(os.sep) + os.sep) for f in folders):
            raise DataError(
                f"{path}: resolves to {real}, outside the source's folder ({', '.join(folders)}); data shards "
                f"copies only files under it: move the image there or remove its row"
            )


def _write_split(
    wds: Any, samples: Any, folder: Path, num_classes: int, *, shard_size: int, seed: int, multi: bool = False
) -> dict:
    """One split's tars in ``folder`` (a file that cannot be read as an image is skipped and counted); its
    index entry. ``multi``: each image's label set as a ``.json`` member."""
    name = folder.name
    folder.mkdir()
    order = np.random.default_rng(seed).permutation(len(samples)) if name == "train" else range(len(samples))
    shard_counts: list[int] = []
    class_counts = [0] * num_classes
    skipped: list[str] = []
    file, writer, written = None, None, 0
    try:
        for i in map(int, order):
            encoded = samples.encoded(i)
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
            numbers = samples.label_sets[i] if multi else [samples.labels[i]]
            member = shard_labels.encode_set(numbers) if multi else ("cls", b"%d" % numbers[0])
            writer.write({"__key__": f"{name}-{written:09d}", encoded[0]: encoded[1], member[0]: member[1]})
            written += 1
            shard_counts[-1] += 1
            for label in numbers:
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
