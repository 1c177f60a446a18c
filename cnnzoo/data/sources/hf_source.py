"""``data.source: hf``: a local Hugging Face dataset (``save_to_disk``, Parquet files, or an
``imagefolder``) read through :mod:`cnnzoo.data.hf`.

Imports config, console, errors, hf and the sibling modules; torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...config import Config
from ...console import console
from ...errors import DataError
from .. import hf
from .base import Source, Splits, resolve_task
from .samples import ArraySamples, DataSpec, Samples, stratified_split


class HFSource(Source):
    """A local Hugging Face dataset; detected from a folder written by ``save_to_disk`` or holding Parquet files."""

    name = "hf"
    root_hint = "point it at the dataset's folder (save_to_disk, Parquet files)"

    @classmethod
    def detects(cls, path: str) -> bool:
        return hf.is_hf_dataset(path)

    def splits(self, missing: list[str] | None = None) -> Splits:
        root = self.root()
        classes, train, val, test = _hf_splits(self.cfg)
        where = str(Path(root).resolve())
        multi = resolve_task(self.task, where, train.label_sets is not None)
        kind = {"multi_label": True} if multi else {}
        return Splits(classes=classes, train=train, val=val, test=test, where=where, kind=kind)

    def split_to_score(
        self, data: str, split: str | None, classes: list[str], *, multi_label: bool
    ) -> tuple[Samples, str]:
        samples = hf_split(self.cfg, data, split, classes)
        if (samples.label_sets is not None) != multi_label:
            kinds = {True: "label sets (multi-label)", False: "one label per image"}
            raise DataError(
                f"--data {data}: its label column holds {kinds[samples.label_sets is not None]}, the model "
                f"is {'multi' if multi_label else 'single'}-label"
            )
        return samples, data

    def build_loaders(self, spec: DataSpec, *, augment: Any, cuda: bool) -> Any:
        """Streamed (:mod:`cnnzoo.data.hf_stream`) when ``data.stream`` says so, else decoded into the cache."""
        from .. import hf_stream  # lazy: the stream is torch's

        if hf_stream.streams(self.cfg, spec):
            return hf_stream.stream_loaders(self.cfg, spec, augment=augment, cuda=cuda)
        return super().build_loaders(spec, augment=augment, cuda=cuda)


def _samples(split: str, images: Any, labels: list[Any], origin: str) -> ArraySamples:
    """A split of the dataset; label sets (a ``Sequence(ClassLabel)`` column) give each image's
    first class as its label (-1: none), as a multi-label manifest does."""
    if labels and isinstance(labels[0], list):
        firsts = [s[0] if s else -1 for s in labels]
        return ArraySamples(name=split, labels=firsts, label_sets=labels, array=images, origin=origin)
    return ArraySamples(name=split, labels=labels, array=images, origin=origin)


def _hf_splits(cfg: Config) -> tuple[list[str], Samples, Samples, Samples | None]:
    d = cfg.data
    kind = "auto" if hf.is_hf_dataset(d.root) else "imagefolder"  # type: ignore[arg-type]
    classes, parts = hf.load_hf(d.root, kind=kind, image_column=d.image_column, label_column=d.label_column)  # type: ignore[arg-type]
    made = {split: _samples(split, images, labels, f"{d.root}:{split}") for split, (images, labels) in parts.items()}
    if "validation" not in made:
        made["train"], made["validation"] = stratified_split(made["train"], d.val_fraction, cfg.seed)
        console.log(
            f"data: {d.root} has no validation split; held out {d.val_fraction:g} of each class (data.val_fraction)"
        )
    return classes, made["train"], made["validation"], made.get("test")


def hf_split(cfg: Config, root: str, split: str | None, classes: list[str]) -> Samples:
    """A split of a local Hugging Face dataset to score (``evaluate --data``): ``split``, else test,
    else validation; its classes must be the model's."""
    kind = "auto" if hf.is_hf_dataset(root) else "imagefolder"
    found, parts = hf.load_hf(root, kind=kind, image_column=cfg.data.image_column, label_column=cfg.data.label_column)
    name = split or ("test" if "test" in parts else "validation")
    if name not in parts:
        raise DataError(f"{root}: has no {name} split")
    if found != classes:
        raise DataError(f"{root}: its classes ({', '.join(found[:8])}) are not the model's ({', '.join(classes[:8])})")
    images, labels = parts[name]
    return _samples(name, images, labels, f"{root}:{name}")
