"""Fold ``i`` of K as the split (``data.folds`` and ``data.fold``): the labelled images pooled, dealt
into K stratified, seeded folds, and fold ``i`` held out as the validation split.

The training and validation splits a source gives are pooled in that order (a test split stays
out); :func:`cnnzoo.data.folds.assign_folds` deals them (by class, or by labels for a multi-label
manifest) with the config's seed, so ``train --folds K``, ``evaluate`` of a fold's model and
``data issues`` find the same folds. The :class:`FoldPool` keeps the pooled images and each
fold's rows, so that the loaders decode the pool once and every fold indexes into it (and so the
frozen-feature cache of a transfer config is computed once for all folds).

Torch-free: imports data.folds, the samples, errors; NumPy.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import DataError
from ..folds import assign_folds, check_folds
from .base import Splits
from .samples import Samples

POOL_NAME = "labelled"  # the pooled split's name (cache file names, messages)
ALL = "all"  # data.fold: all: no fold held out


@dataclass(kw_only=True)
class FoldPool:
    """The pooled labelled images and the fold (0..K-1) each is held out in; ``fold`` (1..K) is
    the one held out as this run's validation split."""

    samples: Samples
    folds: np.ndarray
    fold: int | str  # 1..K, or "all": every image trains and validates (a final model)

    @property
    def k(self) -> int:
        return int(self.folds.max()) + 1

    @property
    def train_rows(self) -> list[int]:
        if self.fold == ALL:
            return list(range(len(self.folds)))
        return np.flatnonzero(self.folds != self.fold - 1).tolist()

    @property
    def val_rows(self) -> list[int]:
        if self.fold == ALL:
            return list(range(len(self.folds)))
        return np.flatnonzero(self.folds == self.fold - 1).tolist()


def class_counts(samples: Samples, classes: list[str]) -> dict[str, int]:
    """Images per class (multi-label: images that carry the label), the classes with any."""
    if samples.label_sets is not None:
        counted = Counter(label for row in samples.label_sets for label in set(row))
    else:
        counted = Counter(samples.labels)
    return {classes[i]: n for i, n in sorted(counted.items()) if 0 <= i < len(classes)}


def pool_folds(
    found: Splits, *, k: int, seed: int, multi_label: bool = False, option: str = "data.folds"
) -> tuple[Samples, np.ndarray]:
    """The training and validation images pooled, and each one's fold (0..K-1); K is refused in
    one line (naming ``option``) when it is below 2 or above the images of the smallest class."""
    pool = found.train.joined(found.val, POOL_NAME)
    check_folds(k, class_counts(pool, found.classes), option=option)
    by_labels = multi_label and pool.label_sets is not None
    return pool, assign_folds(pool.label_sets if by_labels else pool.labels, k, seed)


def fold_splits(
    found: Splits, *, k: int, fold: int | str, seed: int, multi_label: bool = False
) -> tuple[Splits, FoldPool]:
    """``found`` with fold ``fold`` of ``k`` as its validation split and the other folds as its
    training split (the test split, if any, as it was); ``fold`` ``all``: every image in both."""
    pool, folds = pool_folds(found, k=k, seed=seed, multi_label=multi_label)
    held = FoldPool(samples=pool, folds=folds, fold=fold)
    train, val = pool.subset(held.train_rows), pool.subset(held.val_rows)
    train.name, val.name = "train", "validation"
    return dataclasses.replace(found, train=train, val=val), held


def held_out_fold(found: Splits, data: Any, *, seed: int, task: str) -> tuple[Splits, FoldPool | None]:
    """``found`` as ``data.folds`` and ``data.fold`` split it (``data``: the config's data section),
    with its pool; as it is, and None, when they are unset. ``task``: the trainer's ``train.task``."""
    if data.folds is None or data.fold is None:
        if data.folds is None and data.fold is None:
            return found, None
        given, missing = ("data.folds", "data.fold") if data.fold is None else ("data.fold", "data.folds")
        raise DataError(
            f"{given}: is set without {missing}; give both (fold 2 of 5: data.folds=5, data.fold=2), or use "
            f"cnnzoo train --folds K to train every fold"
        )
    multi = task == "multi" or bool(found.kind.get("multi_label"))
    return fold_splits(found, k=data.folds, fold=data.fold, seed=seed, multi_label=multi)
