"""Turning logits into probabilities and predictions, scoring them, and running a model over a loader.

One rule for both kinds of head: a one-logit head (binary, trained with
``BCEWithLogitsLoss``) gives ``[1 - sigmoid, sigmoid]``; a wider head gives softmax.
The scores themselves (confusion matrix, per-class precision/recall/F1, top-k, the report's
loss) are :mod:`cnnzoo.evaluation.scores`' (NumPy), which every model format shares.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..inference.classifier import probabilities as probability_rule
from ..runtime.device import Feed
from . import scores


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
    """int64 [num_classes, num_classes]: counts[true][predicted], as a tensor (DDP sums it across
    processes); counted by :func:`cnnzoo.evaluation.scores.confusion_counts`, evaluate's rule."""
    return torch.from_numpy(scores.confusion_counts(labels, predicted, num_classes))


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
