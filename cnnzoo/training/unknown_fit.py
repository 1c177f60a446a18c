"""After training: fit the "unknown" score on best.pt's weights and store it with its threshold (issue 31).

:func:`fit_unknown` runs once, on rank 0, after the epochs. It reads ``best.pt``, runs the
training images (un-augmented) and the validation images through the network, and stores in
``best.pt`` (rewritten atomically):

- ``meta.unknown``: the score (``train.unknown.score``), the threshold that keeps
  ``train.unknown.keep`` of the validation images as known, and how it was fitted;
- for the ``knn`` score, ``unknown_bank``: the L2-normalised penultimate features of up to
  :data:`MAX_BANK` training images, which the network carries as a buffer
  (:class:`cnnzoo.inference.scored.ScoredNetwork`) into every export.

No validation split (nothing to set the threshold on), a multi-label model (an image with no label
past its threshold is already its "none of these") or ``train.unknown.enabled: false``: one line,
and best.pt stays as it was. See docs/unknown.md for the measurements behind the default score.

Floor 7 (training): imports checkpoint, console, data loaders, inference, the transfer stages.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import checkpoint as ckpt_io
from ..config.schema import UnknownConfig
from ..console import console
from ..data import loaders as loaders_mod
from ..inference import unknown
from ..inference.scored import head_split
from ..runtime.device import Feed
from .feature_cache import Suffix
from .transfer import TransferStages

MAX_BANK = 2048  # training images whose features the knn score compares with (the first of the last epoch's order)


def fit_unknown(
    run_dir: Path,
    stages: TransferStages,
    *,
    settings: UnknownConfig,
    multi_label: bool,
) -> dict[str, Any] | None:
    """Fit and store the unknown score in ``run_dir/best.pt``: its weights are loaded into the run's
    model, and the images go through the network the last epoch ran (with a backbone, the frozen
    stages' output comes from the feature cache). Returns ``meta.unknown`` (None: skipped, with the
    line that says why)."""
    if not settings.enabled:
        return None
    if multi_label:
        console.log("unknown: not fitted for a multi-label model (an image with no label past its threshold says none)")
        return None
    path = run_dir / "best.pt"
    if not len(stages.loaders.val_set) or not path.is_file():
        console.log("unknown: no validation split to set its threshold on; predict answers no unknown")
        return None
    ckpt = ckpt_io.load_checkpoint(path)
    stages.model.load_state_dict(ckpt["model_state"])  # training is over: the model becomes best.pt's
    stages.enter(max(1, int(ckpt.get("epoch") or 1)))  # best epoch's stage: its net reads the feature cache
    split = _split(stages.net)
    score = settings.score
    if score == "knn" and split is None:
        console.log("unknown: the knn score needs a Linear head; the network has none, so energy is used")
        score = "energy"
    body, head = split if split is not None else (stages.net, None)
    cached = stages.net is not stages.model
    feed = stages.feed.without_autocast()
    if not cached and not isinstance(stages.loaders.val_set, loaders_mod.ImageDataset):
        console.log("unknown: not fitted on streamed data (read once, in order); predict answers no unknown")
        return None
    val_features = _collect(body, stages.val_loader if cached else _plain(stages.loaders.val_set), feed)
    entry: dict[str, Any] = {"score": score, "keep": float(settings.keep)}
    if score == "knn":
        train = stages.train_loader if cached else _plain(stages.loaders.train_set)
        bank = _bank(_collect(body, train, feed, limit=MAX_BANK))
        val_scores = unknown.knn_score(val_features, bank, settings.k)
        ckpt["unknown_bank"] = torch.from_numpy(bank)
        entry.update(k=int(min(settings.k, len(bank))), bank_images=len(bank))
    else:
        logits = val_features if head is None else _head(head, val_features)
        val_scores = unknown.logit_score(score, logits)
    if not np.isfinite(val_scores).all():  # a diverged model's features (NaN): no score to answer with
        console.log("unknown: the validation scores are not finite (nor are the model's outputs); no unknown answer")
        return None
    threshold = unknown.threshold_keeping(val_scores, settings.keep)
    entry.update(threshold=threshold, validation_images=len(val_scores))
    ckpt["meta"]["unknown"] = entry
    ckpt.pop("path", None)
    ckpt_io.save_atomic(ckpt, path)
    kept = float(np.mean(val_scores <= threshold))
    console.log(
        f"unknown: {score} score fitted; threshold {threshold:.4g} keeps {100 * kept:.1f}% of "
        f"{len(val_scores)} validation images (train.unknown.keep {settings.keep:g}); stored in {path}"
    )
    return entry


class _SuffixBody(nn.Module):
    """A feature-cache suffix without its last layer: the penultimate features from cached ones."""

    def __init__(self, suffix: Suffix):
        super().__init__()
        self.suffix = suffix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.suffix
        if s.cut < len(s.backbone.stages):
            x = s.backbone.run(x, s.cut, len(s.backbone.stages))
        return s.head[:-1](x)


def _split(net: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """(the network less its head, the Linear head), on images or on cached features; None without one."""
    if isinstance(net, Suffix):
        return (_SuffixBody(net), net.head[-1]) if isinstance(net.head[-1], nn.Linear) else None
    return head_split(net)


def _plain(dataset: loaders_mod.ImageDataset):
    """A loader over every image of ``dataset`` as it is (no augmentation), in order."""
    plain = copy.copy(dataset)
    plain.augment, plain.seeds, plain.crop_min_area = None, False, None
    return loaders_mod.make_loader(plain, 64, shuffle=False, seed=0, workers=0)


@torch.inference_mode()
def _collect(net: nn.Module, loader, feed: Feed, *, limit: int | None = None) -> np.ndarray:
    """``net``'s outputs over ``loader`` (the first ``limit`` rows when given), as float32 rows."""
    net.eval()
    rows, count = [], 0
    for batch in loader:
        images = batch[0]
        rows.append(net(feed.inputs(images)).float().flatten(1).cpu().numpy())
        count += len(rows[-1])
        if limit is not None and count >= limit:
            break
    return np.concatenate(rows)[:limit] if rows else np.zeros((0, 0), np.float32)


def _head(head: torch.nn.Module, features: np.ndarray) -> np.ndarray:
    parameter = next(head.parameters())
    with torch.inference_mode():
        x = torch.from_numpy(features).to(parameter.device, parameter.dtype)
        return head(x).float().cpu().numpy()


def _bank(features: np.ndarray) -> np.ndarray:
    """Up to :data:`MAX_BANK` rows, evenly spaced, L2-normalised (float32)."""
    if len(features) > MAX_BANK:
        features = features[np.linspace(0, len(features) - 1, MAX_BANK).round().astype(int)]
    norms = np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return (features / norms).astype(np.float32)
