"""The fold rule that train --folds and data issues share (cnnzoo.data.folds)."""

import numpy as np
import pytest

from cnnzoo.data.folds import assign_folds, check_folds
from cnnzoo.errors import DataError


def test_single_label_folds_are_stratified_balanced_and_seeded():
    labels = [0] * 50 + [1] * 23 + [2] * 7
    folds = assign_folds(labels, 5, seed=3)
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3, 4]
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    for label, count in ((0, 50), (1, 23), (2, 7)):
        per_fold = np.bincount(folds[np.asarray(labels) == label], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1 and per_fold.sum() == count
    assert np.array_equal(folds, assign_folds(labels, 5, seed=3))
    assert not np.array_equal(folds, assign_folds(labels, 5, seed=4))


def test_multilabel_folds_spread_every_label():
    rng = np.random.default_rng(0)
    rows = [sorted(set(rng.choice(6, size=rng.integers(0, 3), replace=False).tolist())) for _ in range(300)]
    folds = assign_folds(rows, 3, seed=0)
    assert set(folds.tolist()) == {0, 1, 2}
    sizes = np.bincount(folds, minlength=3)
    assert sizes.max() - sizes.min() <= 3
    for label in range(6):
        members = [i for i, row in enumerate(rows) if label in row]
        per_fold = np.bincount(folds[members], minlength=3)
        assert per_fold.max() - per_fold.min() <= 2, (label, per_fold)


@pytest.mark.parametrize(
    ("k", "counts", "words"),
    [(1, {"a": 5}, "at least 2 folds"), (6, {"a": 9, "b": 5}, "class 'b' has only 5 images"), (2, {}, "no labelled")],
)
def test_bad_k_is_one_line_naming_the_class(k, counts, words):
    with pytest.raises(DataError, match=words) as caught:
        check_folds(k, counts)
    assert "\n" not in str(caught.value)
