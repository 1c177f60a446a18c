"""An export scored on WebDataset shards without torch: each shard read in order
(:func:`cnnzoo.data.shard_files.iter_shard`), its images decoded by the export's own predict path
in batches; a sample without a usable image or label is skipped and named, as training skips it.

Torch-free: imports data.shard_files, errors; NumPy.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..data import shard_files


def stream_batches(
    model: Any, samples: Any, *, batch_size: int, errors: list
) -> Iterator[tuple[list[int], np.ndarray, list[int]]]:
    """(positions in the stream, uint8 pixels, class indices: label sets for a multi-label model) per
    batch of a streamed split's samples; ``errors`` collects (sample, reason) for each one skipped."""
    index = {name: i for i, name in enumerate(model.classes)}
    items: list[io.BytesIO] = []
    labels: list[Any] = []
    seen = 0
    for shard in samples.shards:
        for sample in shard_files.iter_shard(shard):
            where = f"{shard} sample {sample.get('__key__', seen)}"
            seen += 1
            try:
                image = shard_files.image_of(sample)[1]
                label = (shard_files.class_set_of if model.multi_label else shard_files.class_of)(sample, index)
            except shard_files.MemberError as exc:
                errors.append((where, str(exc)))
                continue
            items.append(io.BytesIO(image))
            labels.append(label)
            if len(items) == batch_size:
                yield from _batch(model, items, labels, errors)
                items, labels = [], []
    if items:
        yield from _batch(model, items, labels, errors)


def _batch(
    model: Any, items: list, labels: list[int], errors: list
) -> Iterator[tuple[list[int], np.ndarray, list[int]]]:
    for positions, pixels in model.batches(items, batch_size=len(items), errors=errors):
        yield positions, pixels, [labels[p] for p in positions]
