"""The scores of a labelled evaluation, from plain arrays (NumPy, torch-free): the one
implementation behind ``evaluate`` for every model format (checkpoint, ONNX, INT8 ONNX, TFLite),
behind training's confusion matrix, and behind the INT8 export's accuracy check.

Predictions follow one rule: a one-logit (binary) head predicts class 1 when its logit is positive,
a wider head its largest logit. The loss is the unweighted, unsmoothed cross-entropy (binary
cross-entropy for a one-logit head), computed in float64 from the logits.

Imports NumPy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def predictions(logits: np.ndarray) -> np.ndarray:
    """int64 [B]: the predicted class of each row of [B, outputs] logits."""
    logits = np.asarray(logits)
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).astype(np.int64)
    return logits.argmax(axis=1).astype(np.int64)


def loss_sum(logits: np.ndarray, labels: np.ndarray) -> float:
    """Cross-entropy summed over the rows (binary cross-entropy with logits for a one-logit head; for
    multi-hot labels, binary cross-entropy per class averaged over the classes)."""
    z = np.asarray(logits, dtype=np.float64)
    if np.ndim(labels) == 2:  # multi-hot: BCE per class, averaged over the classes (training's validation loss)
        y = np.asarray(labels, dtype=np.float64)
        return float((np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))).sum() / z.shape[1])
    labels = np.asarray(labels, dtype=np.int64)
    if z.shape[1] == 1:
        x, y = z[:, 0], labels.astype(np.float64)
        return float((np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))).sum())
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return float((log_norm - z[np.arange(len(z)), labels]).sum())


def confusion_counts(
    labels: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray, num_classes: int
) -> np.ndarray:
    """int64 [num_classes, num_classes]: counts[true][predicted]."""
    index = np.asarray(labels, dtype=np.int64) * num_classes + np.asarray(predicted, dtype=np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def confusion_matrix(labels: Sequence[int], predicted: Sequence[int], num_classes: int) -> list[list[int]]:
    """matrix[true][predicted] = count, as plain lists (for reports)."""
    return confusion_counts(labels, predicted, num_classes).tolist()


def per_class_scores(matrix: list[list[int]], classes: Sequence[str]) -> dict[str, Any]:
    """Precision, recall, F1 and support per class, with macro and weighted averages."""
    per_class = {}
    n = len(classes)
    for k, name in enumerate(classes):
        tp = matrix[k][k]
        predicted = sum(matrix[i][k] for i in range(n))
        support = sum(matrix[k])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    total = sum(v["support"] for v in per_class.values()) or 1
    averages = {}
    for avg in ("macro", "weighted"):
        averages[avg] = {}
        for metric in ("precision", "recall", "f1"):
            if avg == "macro":
                value = sum(v[metric] for v in per_class.values()) / max(1, n)
            else:
                value = sum(v[metric] * v["support"] for v in per_class.values()) / total
            averages[avg][metric] = value
    return {"per_class": per_class, "averages": averages}


def top_k_correct(probabilities: np.ndarray, labels: Sequence[int] | np.ndarray, k: int) -> int:
    """How many rows rank their label among their ``k`` most probable classes (ties: lower class first)."""
    probabilities = np.asarray(probabilities)
    k = min(k, probabilities.shape[1])
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return int((top == np.asarray(labels).reshape(-1, 1)).any(axis=1).sum())


def summary(
    logits: np.ndarray, probabilities: np.ndarray, labels: np.ndarray, classes: list[str], top_k: int
) -> dict[str, Any]:
    """The figures of eval.json: loss, accuracy, top-k accuracy, per-class scores, confusion matrix.

    Top-k is scored only where ``top_k`` is below the number of classes: with k classes or more the
    true class is always among them (100% says nothing), so ``top_k`` and ``top_k_accuracy`` are None."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = predictions(logits)
    matrix = confusion_matrix(labels, predicted, len(classes))
    scores = per_class_scores(matrix, classes)
    n = len(labels)
    k = top_k if top_k < len(classes) else None
    return {
        "classes": classes,
        "num_images": n,
        "loss": loss_sum(logits, labels) / n,
        "accuracy": int((predicted == labels).sum()) / n,
        "top_k": k,
        "top_k_accuracy": top_k_correct(probabilities, labels, k) / n if k is not None else None,
        "per_class": scores["per_class"],
        "averages": scores["averages"],
        "confusion_matrix": matrix,
    }
