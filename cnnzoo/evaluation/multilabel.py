"""Multi-label scores (NumPy, no torch): average precision and its PR curve per class, F1 at
per-class thresholds, exact match, Hamming loss, and the per-class thresholds that maximise F1.

Inputs are ``scores`` (probabilities, [N, K]) and ``targets`` (0/1, [N, K]). A class is predicted
present when its probability is at or above its threshold. Average precision follows
scikit-learn's ``average_precision_score``: the sum over the distinct scores, highest first, of
(recall gain) x precision. A class with no positive image in the split has no AP (None) and is left
out of the mean (mAP) and of macro F1, which are averages over the classes the split has; an image
with none of the classes counts in exact match (right when nothing is predicted), Hamming loss
and micro F1 (its false positives), like any other.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _ranked(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct scores highest first, true positives, false positives at or above each)."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positives[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # the last image of each distinct score
    tp = np.cumsum(y)[last]
    return s[last], tp, (last + 1) - tp


def pr_curve(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, threshold) at each distinct score, highest threshold first."""
    thresholds, tp, fp = _ranked(np.asarray(scores, dtype=np.float64), np.asarray(positives))
    n_pos = max(1.0, float(np.sum(positives)))
    return tp / (tp + fp), tp / n_pos, thresholds


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """AP of one class; None when no image has it."""
    if not np.any(positives):
        return None
    precision, recall, _ = pr_curve(scores, positives)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro AP over the classes that have a positive image (0.0 when none has)."""
    aps = [average_precision(scores[:, k], targets[:, k]) for k in range(targets.shape[1])]
    present = [ap for ap in aps if ap is not None]
    return float(np.mean(present)) if present else 0.0


def best_f1_threshold(scores: np.ndarray, positives: np.ndarray, default: float = 0.5) -> float:
    """The threshold that maximises F1 for one class: half-way between the score where F1 peaks and
    the next lower one (a margin either side); ``default`` for a class no image has."""
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = float(np.sum(positives))
    if n_pos == 0 or len(scores) == 0:
        return default
    thresholds, tp, fp = _ranked(scores, np.asarray(positives))
    f1 = 2 * tp / (tp + fp + n_pos)
    k = int(np.argmax(f1))
    lower = thresholds[k + 1] if k + 1 < len(thresholds) else 0.0
    return float((thresholds[k] + lower) / 2)


def tune_thresholds(scores: np.ndarray, targets: np.ndarray, default: float = 0.5) -> list[float]:
    """Per class, the F1-maximising threshold (:func:`best_f1_threshold`)."""
    return [best_f1_threshold(scores[:, k], targets[:, k], default) for k in range(targets.shape[1])]


def _counts(predicted: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = targets.astype(bool)
    return (predicted & t).sum(0), (predicted & ~t).sum(0), (~predicted & t).sum(0)


def _f1(tp: Any, fp: Any, fn: Any) -> Any:
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def threshold_scores(scores: np.ndarray, targets: np.ndarray, thresholds: list[float]) -> dict[str, float]:
    """F1 (micro, and macro over the classes present), exact match and Hamming loss at ``thresholds``."""
    predicted = scores >= np.asarray(thresholds, dtype=np.float64)
    tp, fp, fn = _counts(predicted, targets)
    present = targets.sum(0) > 0
    return {
        "f1_micro": float(_f1(tp.sum(), fp.sum(), fn.sum())),
        "f1_macro": float(np.mean(_f1(tp, fp, fn)[present])) if present.any() else 0.0,
        "exact_match": float(np.mean(np.all(predicted == targets.astype(bool), axis=1))) if len(scores) else 0.0,
        "hamming_loss": float(np.mean(predicted != targets.astype(bool))) if len(scores) else 0.0,
    }


def per_class(scores: np.ndarray, targets: np.ndarray, thresholds: list[float], classes: list[str]) -> dict[str, Any]:
    """Per class: ap, precision, recall, f1, support (images that have it) and threshold."""
    predicted = scores >= np.asarray(thresholds, dtype=np.float64)
    tp, fp, fn = _counts(predicted, targets)
    f1 = _f1(tp, fp, fn)
    out = {}
    for k, name in enumerate(classes):
        out[name] = {
            "ap": average_precision(scores[:, k], targets[:, k]),
            "precision": float(tp[k] / (tp[k] + fp[k])) if tp[k] + fp[k] else 0.0,
            "recall": float(tp[k] / (tp[k] + fn[k])) if tp[k] + fn[k] else 0.0,
            "f1": float(f1[k]),
            "support": int(targets[:, k].sum()),
            "threshold": float(thresholds[k]),
        }
    return out


def report_fields(
    scores: np.ndarray, targets: np.ndarray, thresholds: list[float], classes: list[str]
) -> dict[str, Any]:
    """``evaluate``'s multi-label report: map, f1_micro, f1_macro, exact_match, hamming_loss, per class
    ap/precision/recall/f1/support/threshold, and how many images have none of the classes."""
    return {
        "task": "multi",
        "classes": classes,
        "num_images": int(len(scores)),
        "images_without_labels": int(np.sum(targets.sum(1) == 0)),
        "map": mean_average_precision(scores, targets),
        **threshold_scores(scores, targets, thresholds),
        "per_class": per_class(scores, targets, thresholds, classes),
    }


def format_report(report: dict[str, Any], heading: str) -> str:
    """The multi-label report as text: the overall figures, then a row per class."""
    classes = report["classes"]
    width = max(12, max(len(c) for c in classes))
    out = [
        heading,
        f"loss {report['loss']:.4f}   mAP {100 * report['map']:.2f}%   F1 micro {100 * report['f1_micro']:.2f}%   "
        f"macro {100 * report['f1_macro']:.2f}%   exact match {100 * report['exact_match']:.2f}%   "
        f"Hamming loss {report['hamming_loss']:.4f}",
        f"{report['images_without_labels']} of {report['num_images']} images have none of the classes",
        "",
        f"{'class':<{width}}      AP  precision  recall      f1  support  threshold",
    ]
    for name in classes:
        s = report["per_class"][name]
        ap = "     -" if s["ap"] is None else f"{s['ap']:6.3f}"
        out.append(
            f"{name:<{width}}  {ap}  {s['precision']:9.3f}  {s['recall']:6.3f}  {s['f1']:6.3f}  "
            f"{s['support']:7d}  {s['threshold']:9.3f}"
        )
    return "\n".join(out)
