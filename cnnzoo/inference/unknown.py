"""The "unknown" answer: how unlike the training data an image looks, and where to draw the line (torch-free).

A model trained after issue 31 carries ``meta.unknown``: the name of its out-of-distribution
score, the threshold above which an image is answered ``unknown`` and the share of validation
images that threshold keeps (``train.unknown.keep``). Every score here is *higher = more
unknown*, so one comparison (``score > threshold``) serves them all:

- ``msp``: minus the largest softmax probability (Hendrycks & Gimpel 2017);
- ``max_logit``: minus the largest logit;
- ``energy``: minus ``logsumexp`` of the logits (Liu et al. 2020);
- ``knn``: one minus the cosine similarity of the image's penultimate features to their k-th
  nearest training image (Sun et al. 2022); the bank of training features travels inside the
  network (:mod:`cnnzoo.inference.scored`), which answers the score as a second output.

The logit scores read the raw logits, so a calibration temperature (issue 31 item 3) changes the
probabilities but never the score. :func:`auroc` and :func:`fpr_at_keep` are what
``evaluate --unknown`` reports. Imports NumPy and floors 0-2 only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..checkpoint import UNKNOWN_SCORES
from ..errors import UserError

LOGIT_SCORES = ("msp", "max_logit", "energy")
FEATURE_SCORES = ("knn",)
SCORES = UNKNOWN_SCORES  # checked in meta by cnnzoo.checkpoint (floor 2), named here
DEFAULT_KEEP = 0.95
SCORE_OUTPUT = "unknown_score"  # the name of an ONNX export's second output (the knn score)
UNKNOWN_LABEL = "unknown"


def logit_score(name: str, logits: np.ndarray) -> np.ndarray:
    """[B, K] raw logits -> [B] score of the named logit rule (higher = more unknown)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.shape[1] == 1:  # a binary head's one logit is the two logits [0, z] (its sigmoid is their softmax)
        z = np.concatenate([np.zeros_like(z), z], axis=1)
    top = z.max(axis=1)
    if name == "max_logit":
        return -top
    lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    if name == "energy":
        return -lse
    if name == "msp":
        return -np.exp(top - lse)
    raise ValueError(f"not a logit score: {name}")


def knn_score(features: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """One minus the cosine similarity to the k-th nearest row of ``bank`` (rows L2-normalised)."""
    f = np.asarray(features, dtype=np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    similarity = f @ np.asarray(bank, dtype=np.float32).T
    k = min(k, similarity.shape[1])
    kth = -np.partition(-similarity, k - 1, axis=1)[:, k - 1]
    return 1.0 - kth


def mahalanobis_fit(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class means [K, D] and the shared precision [D, D] (Lee et al. 2018), measured in the benchmark."""
    f = np.asarray(features, dtype=np.float64)
    classes = np.unique(labels)
    means = np.stack([f[labels == c].mean(axis=0) for c in classes])
    centred = f - means[np.searchsorted(classes, labels)]
    covariance = centred.T @ centred / len(f)
    return means, np.linalg.pinv(covariance, hermitian=True)


def mahalanobis_score(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """The smallest Mahalanobis distance to a class mean (squared)."""
    f = np.asarray(features, dtype=np.float64)
    out = np.full(len(f), np.inf)
    for mean in means:
        d = f - mean
        out = np.minimum(out, np.einsum("bd,de,be->b", d, precision, d))
    return out


def threshold_keeping(scores: np.ndarray, keep: float) -> float:
    """A threshold that keeps (score at or below it) the ``ceil(keep * n)`` lowest of ``scores``: halfway
    to the next score, so that a score computed again in another format (a rounding away) stays put."""
    ranked = np.sort(np.asarray(scores, dtype=np.float64))
    kept = min(len(ranked), max(1, math.ceil(keep * len(ranked) - 1e-9)))
    if kept == len(ranked):  # all kept: a little past the largest (float32 formats differ by ~1e-7)
        return float(ranked[-1] + 1e-5 * max(1.0, abs(ranked[-1])))
    return float((ranked[kept - 1] + ranked[kept]) / 2)


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Area under the ROC curve of telling unknown (positive, higher score) from known images: the
    chance that an unknown image scores above a known one, ties counting half (Mann-Whitney U)."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    both = np.concatenate([known, unknown])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both))
    sorted_scores = both[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(both)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u = ranks[len(known) :].sum() - len(unknown) * (len(unknown) + 1) / 2.0
    return float(u / (len(known) * len(unknown)))


def fpr_at_keep(known: np.ndarray, unknown: np.ndarray, keep: float = DEFAULT_KEEP) -> float:
    """The share of unknown images accepted (score at or below the threshold) when the threshold
    keeps ``keep`` of the known ones (FPR95 at the default)."""
    threshold = threshold_keeping(known, keep)
    return float(np.mean(np.asarray(unknown, np.float64) <= threshold))


# where each score lies: a threshold outside it would answer every image alike
SCORE_RANGES = {
    "msp": (-1.0, 0.0),
    "max_logit": (-math.inf, math.inf),
    "energy": (-math.inf, math.inf),
    "knn": (0.0, 2.0),
}
NO_SCORE = (
    "has no unknown score (trained before cnnzoo fitted one, with train.unknown.enabled false, "
    "or multi-label: there an image with no label past its threshold is the answer none of these)"
)


def check_threshold(value: float, score: str) -> float:
    """A threshold the user gave for ``score``: finite and inside the score's range."""
    low, high = SCORE_RANGES[score]
    if not (math.isfinite(value) and low <= value <= high):
        span = "a finite number" if math.isinf(low) else f"a number in [{low:g}, {high:g}]"
        raise UserError(f"--unknown-threshold: {value:g} is out of range for the model's {score} score; give {span}")
    return float(value)


def answer(score: float, threshold: float) -> dict[str, Any]:
    """What a prediction record says about one image: unknown or not, and its score."""
    return {"unknown": bool(score > threshold), "unknown_score": round(score, 6)}
