"""Stratified, seeded folds: which of K folds each labelled image is held out in.

k-fold cross-validation (``train --folds K``) and ``data issues`` (out-of-fold probabilities)
share this one rule, so an image lands in the same fold in both for the same seed and K.

- Single-label (:func:`assign_folds` with one class index per image): each class's images are
  shuffled with the seed and dealt round-robin, continuing the count from the previous class, so
  every fold holds each class's share to within one image and the folds' sizes differ by at most one.
- Multi-label (a list of label indices per image): iterative stratification (Sechidis, Tsoumakas
  and Vlahavas, 2011, "On the stratification of multi-label data"): the rarest label's images are
  placed first, each into the fold that still wants most of that label, ties to the fold that
  wants most images; images with no label are dealt round-robin at the end.

K below 2, or above the images of a (single-label) class, is refused in one line naming the
class. Torch-free: it imports numpy and the errors module only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DataError

FOLDS_OPTION = "--folds"


def check_folds(k: int, counts: dict[str, int], *, option: str = FOLDS_OPTION) -> None:
    """Refuse K below 2 or above the images of the smallest class, naming that class."""
    if k < 2:
        raise DataError(f"{option} {k}: k-fold needs at least 2 folds (each image is held out once); give 2 or more")
    if not counts:
        raise DataError(f"{option} {k}: the data has no labelled images to split into folds")
    name, smallest = min(counts.items(), key=lambda item: (item[1], item[0]))
    if k > smallest:
        raise DataError(
            f"{option} {k}: class {name!r} has only {smallest} image{'s' if smallest != 1 else ''}, so it cannot "
            f"appear in {k} folds; give {option} {max(smallest, 2)} or fewer, or add images of that class"
        )


def assign_folds(labels: Sequence[int] | Sequence[Sequence[int]], k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of each image: stratified by its class, or by its labels when multi-label.

    ``labels`` holds one class index per image (single-label) or one sequence of label indices per
    image (multi-label). The same labels, K and seed give the same folds on every machine.
    """
    if k < 2:
        raise DataError(f"{FOLDS_OPTION} {k}: k-fold needs at least 2 folds; give 2 or more")
    rng = np.random.default_rng(seed)
    if len(labels) and not isinstance(labels[0], (int, np.integer)):
        return _multilabel_folds([list(map(int, row)) for row in labels], k, rng)
    classes = np.asarray(labels, dtype=np.int64)
    folds = np.empty(len(classes), dtype=np.int64)
    dealt = 0
    for label in np.unique(classes):
        members = np.flatnonzero(classes == label)
        rng.shuffle(members)
        folds[members] = (dealt + np.arange(len(members))) % k
        dealt += len(members)
    return folds


def _multilabel_folds(rows: list[list[int]], k: int, rng: np.random.Generator) -> np.ndarray:
    folds = np.full(len(rows), -1, dtype=np.int64)
    order = rng.permutation(len(rows))
    n_labels = 1 + max((max(row) for row in rows if row), default=-1)
    per_label = np.zeros(n_labels, dtype=np.int64)
    for row in rows:
        per_label[list(set(row))] += 1
    wanted_images = np.full(k, len(rows) / k)
    wanted = np.outer(np.full(k, 1.0 / k), per_label)  # fold x label: images still wanted
    left = per_label.copy()
    placed = np.zeros(len(rows), dtype=bool)
    while True:
        open_labels = np.flatnonzero(left > 0)
        if not len(open_labels):
            break
        label = open_labels[np.argmin(left[open_labels])]  # the rarest label still to place
        for i in order:
            if placed[i] or label not in rows[i]:
                continue
            want = wanted[:, label]
            best = np.flatnonzero(want == want.max())
            fold = best[np.argmax(wanted_images[best])] if len(best) > 1 else best[0]
            folds[i], placed[i] = fold, True
            wanted_images[fold] -= 1
            for other in set(rows[i]):
                wanted[fold, other] -= 1
                left[other] -= 1
    unlabelled = [i for i in order if not placed[i]]
    for n, i in enumerate(unlabelled):
        folds[i] = int(np.argmax(wanted_images)) if wanted_images.max() > 0 else n % k
        wanted_images[folds[i]] -= 1
    return folds
