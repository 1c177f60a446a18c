"""Where a model fails, computed: calibration, the most confused pairs, the top losses, and
precision-recall curves, from plain arrays (probabilities [N, K] and integer labels [N]).

NumPy only, no torch: ``evaluate`` on an ONNX export reaches these without torch, and the report
page (:mod:`~cnnzoo.evaluation.page`) draws what they return.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CALIBRATION_BINS = 15  # the usual choice (Guo et al., 2017), so ECE figures compare with papers'


@dataclass(kw_only=True)
class CalibrationBin:
    """Predictions whose confidence falls in (low, high]: how many, how sure, how often right."""

    low: float
    high: float
    count: int
    confidence: float  # mean top-1 probability in the bin (0 when empty)
    accuracy: float  # share of the bin's predictions that are right (0 when empty)


def calibration_bins(
    confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray, bins: int = CALIBRATION_BINS
) -> list[CalibrationBin]:
    """Equal-width bins over [0, 1] of the top-1 probability; bin i holds (i/bins, (i+1)/bins],
    the first one also 0."""
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        out.append(
            CalibrationBin(
                low=float(edges[b]),
                high=float(edges[b + 1]),
                count=count,
                confidence=float(conf[members].mean()) if count else 0.0,
                accuracy=float(right[members].mean()) if count else 0.0,
            )
        )
    return out


def expected_calibration_error(bins: Sequence[CalibrationBin]) -> float:
    """Σ_b (n_b / N) · |accuracy_b − confidence_b|: how far, on average over the images, the model's
    confidence is from how often it is right (0 for a calibrated model)."""
    total = sum(b.count for b in bins)
    if not total:
        return 0.0
    return sum(b.count * abs(b.accuracy - b.confidence) for b in bins) / total


def confidence_and_correct(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a reliability diagram bins: each image's top-1 probability and whether its top class is
    right; with multi-hot labels [N, K], each (image, class) pair's yes/no answer at 0.5, its
    confidence the larger of p and 1 - p."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    if labels.ndim == 2:
        yes = probabilities >= 0.5
        return np.where(yes, probabilities, 1 - probabilities).ravel(), (yes == (labels > 0.5)).ravel()
    return probabilities.max(axis=1), probabilities.argmax(axis=1) == labels


def calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """The expected calibration error of these probabilities (:func:`confidence_and_correct`,
    :func:`expected_calibration_error` over ``bins`` equal bins)."""
    confidence, correct = confidence_and_correct(probabilities, labels)
    return expected_calibration_error(calibration_bins(confidence, correct, bins))


def most_confused(matrix: Sequence[Sequence[int]], limit: int = 10) -> list[tuple[int, int, int]]:
    """(true class, predicted class, count) of the off-diagonal cells with a count, the largest
    first; ties in class order."""
    cells = [(t, p, int(count)) for t, row in enumerate(matrix) for p, count in enumerate(row) if t != p and count > 0]
    return sorted(cells, key=lambda c: (-c[2], c[0], c[1]))[:limit]


def losses(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each image's cross-entropy, −log p(true class), from probabilities (clipped away from 0)."""
    true_probability = probabilities[np.arange(len(labels)), labels]
    return -np.log(np.clip(true_probability, 1e-12, 1.0))


def top_losses(probabilities: np.ndarray, labels: np.ndarray, limit: int = 16) -> list[int]:
    """Indices of the ``limit`` images with the highest loss, the highest first; ties by index."""
    per_image = losses(probabilities, labels)
    return [int(i) for i in np.argsort(-per_image, kind="stable")[:limit]]


@dataclass(kw_only=True)
class PRCurve:
    """One class against the rest: precision and recall at each distinct score threshold, from
    the highest threshold down, and the average precision (the area under the step curve)."""

    precision: list[float]
    recall: list[float]
    average_precision: float
    positives: int


def precision_recall_curve(scores: Sequence[float] | np.ndarray, positive: Sequence[bool] | np.ndarray) -> PRCurve:
    """Precision and recall of "score >= t" for every distinct score t, as scikit-learn's
    ``precision_recall_curve`` computes them, with its step-wise average precision
    ``Σ (R_n − R_{n−1}) P_n`` (no interpolation). A class without positives has AP 0."""
    score = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(positive, dtype=bool)
    order = np.argsort(-score, kind="stable")
    score, truth = score[order], truth[order]
    positives = int(truth.sum())
    if not positives or not len(score):
        return PRCurve(precision=[], recall=[], average_precision=0.0, positives=positives)
    last_of_each = np.r_[np.nonzero(np.diff(score))[0], len(score) - 1]  # ties cross a threshold together
    true_pos = np.cumsum(truth)[last_of_each]
    predicted = last_of_each + 1
    precision = true_pos / predicted
    recall = true_pos / positives
    average_precision = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return PRCurve(
        precision=precision.tolist(), recall=recall.tolist(), average_precision=average_precision, positives=positives
    )


def per_class_curves(probabilities: np.ndarray, labels: np.ndarray) -> list[PRCurve]:
    """One-vs-rest precision-recall curve of every class, scored by its probability."""
    return [precision_recall_curve(probabilities[:, k], labels == k) for k in range(probabilities.shape[1])]
