"""Turning logits into probabilities and predictions, scoring them, and running a model over a loader.

One rule for both kinds of head: a one-logit head (binary, trained with
``BCEWithLogitsLoss``) gives ``[1 - sigmoid, sigmoid]``; a wider head gives softmax.
The scores (confusion matrix, per-class precision/recall/F1, top-k) work on plain
integer label lists so that ``evaluate``, training's validation and tests share them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..inference.classifier import probabilities as probability_rule
from ..runtime.device import Feed


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """[B, K] logits -> [B, K] probabilities; [B, 1] (binary) -> [B, 2]: the rule of
    :func:`cnnzoo.inference.classifier.probabilities`, which every model format uses."""

    return torch.from_numpy(probability_rule(logits.detach().float().cpu().numpy()))


def predictions(logits: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def correct_count(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Images predicted right: the class, or (multi-hot labels) every class at probability 0.5."""
    if labels.dim() > 1:
        return ((logits > 0) == (labels > 0.5)).all(dim=1).sum()
    return (predictions(logits) == labels).sum()


def plain_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Unweighted, unsmoothed loss summed over the batch: the validation/evaluation loss."""
    logits = logits.float()
    if labels.dim() > 1:  # multi-label: BCE per class, averaged over the classes, summed over images
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float(), reduction="sum")
        return loss / logits.shape[1]
    if logits.shape[1] == 1:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels.float(), reduction="sum")
    return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")


def confusion_counts(
    labels: Sequence[int] | torch.Tensor, predicted: Sequence[int] | torch.Tensor, num_classes: int
) -> torch.Tensor:
    """int64 [num_classes, num_classes]: counts[true][predicted]."""
    if not len(labels):
        return torch.zeros((num_classes, num_classes), dtype=torch.int64)
    index = torch.as_tensor(labels) * num_classes + torch.as_tensor(predicted)
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


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


def top_k_correct(probs: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    k = min(k, probs.shape[1])
    top = probs.topk(k, dim=1).indices
    return int((top == labels.view(-1, 1)).any(dim=1).sum())


@torch.inference_mode()
def predict_loader(model: torch.nn.Module, loader, feed: Feed, *, bar=None) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits (float32, CPU) and labels of a loader, in loader order."""
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in loader:
        if len(labels):
            with feed.autocast():
                all_logits.append(model(feed.inputs(images)).float().cpu())
            all_labels.append(labels)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if not all_logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.int64)
    return torch.cat(all_logits), torch.cat(all_labels)
