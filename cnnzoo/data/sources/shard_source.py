"""``data.source: webdataset``: WebDataset tar shards (:mod:`cnnzoo.data.shard_files`), streamed
by :mod:`cnnzoo.data.shards` (decoded in the loader workers each epoch, never cached).

Imports errors, shard_files and the sibling modules; torch-free (the stream is imported lazily).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import DataError
from ...files import is_url
from .. import shard_files
from .base import Source, Splits
from .samples import DataSpec, Samples, ShardSamples


class ShardSource(Source):
    """Shards; detected from a brace pattern, a ``.tar`` path, or a folder holding shards."""

    name = "webdataset"
    root_hint = "point it at a folder of shards or a pattern (shards/train-{0..9}.tar)"

    @classmethod
    def detects(cls, path: str) -> bool:
        return shard_files.is_shards(path)

    def splits(self, missing: list[str] | None = None) -> Splits:
        root = self.root()
        classes, train, val, test = _shard_splits(root)
        where = root if "{" in root or is_url(root) else str(Path(root).resolve())
        multi = train.multi_label  # type: ignore[attr-defined]
        if self.task == "single" and multi:
            raise DataError(f"{where}: the shards carry label sets (multi-label), but train.task is single")
        if self.task == "multi" and not multi:
            raise DataError(f"{where}: the shards carry one label per image; train.task multi needs label sets")
        kind = {"multi_label": True} if multi else {}
        return Splits(classes=classes, train=train, val=val, test=test, where=where, kind=kind)

    def class_names(self) -> list[str]:
        return _shard_splits(self.root())[0]

    def split_to_score(
        self, data: str, split: str | None, classes: list[str], *, multi_label: bool
    ) -> tuple[Samples, str]:
        samples = shard_split(data, split, classes)
        if samples.multi_label != multi_label:  # type: ignore[attr-defined]
            kinds = {True: "label sets (multi-label)", False: "one label per image"}
            raise DataError(
                f"--data {data}: the shards carry {kinds[samples.multi_label]}, the model "  # type: ignore[attr-defined]
                f"is {'multi' if multi_label else 'single'}-label"
            )
        return samples, data

    def build_loaders(self, spec: DataSpec, *, augment: Any, cuda: bool) -> Any:
        from .. import shards  # lazy: the stream is torch's

        return shards.stream_loaders(self.cfg, spec, augment=augment, cuda=cuda)


def shard_samples(shard_set: shard_files.ShardSet) -> Samples:
    """A split of shards: their paths and sizes, and labels that only count the classes (the
    order of the samples is the stream's)."""
    if shard_set.multi_label:
        labels = [-1] * sum(shard_set.counts)
    else:
        labels = [c for c, n in enumerate(shard_set.class_counts) for _ in range(n)]
    return ShardSamples(
        name=shard_set.name,
        labels=labels,
        shards=list(shard_set.shards),
        shard_counts=list(shard_set.counts),
        class_counts=list(shard_set.class_counts) if shard_set.multi_label else None,
        multi_label=shard_set.multi_label,
    )


def _shard_splits(root: str) -> tuple[list[str], Samples, Samples, Samples | None]:
    classes, found = shard_files.find_shards(root)
    test = shard_samples(found["test"]) if "test" in found else None
    return classes, shard_samples(found["train"]), shard_samples(found["validation"]), test


def shard_split(root: str, split: str | None, classes: list[str]) -> Samples:
    """A split of a shard set to score (``evaluate --data``): ``split``, else test, else validation;
    its classes must be the model's."""
    found_classes, found = shard_files.find_shards(root)
    name = split or ("test" if "test" in found else "validation")
    if name not in found:
        raise DataError(f"{root}: has no {name} shards")
    if found_classes != classes:
        raise DataError(
            f"{root}: the shards' classes ({', '.join(found_classes[:8])}) are not the model's "
            f"({', '.join(classes[:8])})"
        )
    return shard_samples(found[name])
