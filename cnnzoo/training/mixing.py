"""MixUp and CutMix (``train.mixup``, ``train.cutmix``): pairs of training images blended, or one
pasted into the other, with soft targets in the same proportion (label smoothing folded in). For
multi-label data the targets are the two images' multi-hot rows blended per class (an image that
shows a cat and is 30% pasted over by one showing a dog is 0.7 cat, 0.3 dog), scored by the
per-class BCE.

Each batch is paired with itself reversed; one mixing ratio per batch, drawn from
Beta(alpha, alpha) by a NumPy generator seeded from (seed, epoch[, rank]) at each epoch's start, so a
resumed run draws what the uninterrupted one drew. With both on, ``train.mix_switch_prob`` is the
chance a mixed batch uses CutMix; ``train.mix_prob`` the chance a batch is mixed at all; the last
``train.mix_off_epochs`` epochs train on plain images.

The mixer takes only the settings it reads (:class:`MixSettings`, picked out of ``train`` by ``of``).

Floor 7 (training): imports torch, :mod:`cnnzoo.config` and :mod:`cnnzoo.data.loaders` (the seeds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import TrainConfig
from ..data.batch_order import mix_seed


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot rows with label smoothing as ``nn.CrossEntropyLoss`` applies it: (1 - s) on the
    class, s / K spread over all K classes; multi-hot rows (multi-label ``labels``, one row per
    image) as the multi-label BCE smooths them: each class's 0/1 pulled toward one half."""
    if labels.dim() == 2:
        return smoothed_multi_hot(labels, smoothing)
    return F.one_hot(labels, num_classes).float() * (1 - smoothing) + smoothing / num_classes


def smoothed_multi_hot(labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Multi-label targets with label smoothing: 1 -> 1 - s/2, 0 -> s/2 (each class a binary choice)."""
    return labels.float() * (1 - smoothing) + 0.5 * smoothing


@dataclass(frozen=True, kw_only=True)
class MixSettings:
    """What MixUp and CutMix read: ``train.mixup``, ``cutmix``, ``mix_prob``, ``mix_switch_prob``,
    ``label_smoothing``, and the last epoch that mixes (``epochs`` less ``mix_off_epochs``)."""

    mixup: float = 0.0  # Beta's alpha; 0 is off
    cutmix: float = 0.0
    prob: float = 1.0  # the chance a batch is mixed at all
    switch_prob: float = 0.5  # with both on: the chance a mixed batch uses CutMix
    last_epoch: int = 10  # later epochs train on plain batches
    label_smoothing: float = 0.0

    @classmethod
    def of(cls, t: TrainConfig) -> MixSettings:
        return cls(
            mixup=t.mixup,
            cutmix=t.cutmix,
            prob=t.mix_prob,
            switch_prob=t.mix_switch_prob,
            last_epoch=t.epochs - t.mix_off_epochs,
            label_smoothing=t.label_smoothing,
        )

    @property
    def wanted(self) -> bool:
        """Will any batch be mixed?"""
        return bool(self.mixup or self.cutmix) and self.prob > 0

    @property
    def keys_on(self) -> list[str]:
        """The ``train`` keys that will mix images (what keeps the frozen-feature cache off)."""
        return [key for key in ("mixup", "cutmix") if getattr(self, key)] if self.wanted else []


class Mixer:
    """Mixes a training batch on its device: ``mix(x, labels)`` -> (images, soft targets) or None."""

    def __init__(self, settings: MixSettings, *, num_classes: int, seed: int, rank: int = 0):
        self.settings, self.num_classes, self.seed, self.rank = settings, num_classes, seed, rank
        self.active = False
        self.rng = np.random.default_rng(0)
        # the last mixed batch's share of each image itself (the rest is the reversed batch's), which
        # a distillation teacher's cached answers are blended by
        self.ratio = 1.0

    def set_epoch(self, epoch: int) -> None:
        self.active = epoch <= self.settings.last_epoch
        # NumPy's generator: torch's Beta distribution takes no generator of its own
        self.rng = np.random.default_rng(mix_seed(self.seed, epoch, 3, self.rank))

    def _uniform(self) -> float:
        return float(self.rng.random())

    def mix(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The mixed images and their targets (single-label rows sum to one; multi-label rows hold
        each class's blended 0/1), or None for a batch left plain."""
        s = self.settings
        if not self.active or len(labels) < 2:
            return None
        # every draw happens whatever the outcome, so one batch's choice never shifts the next's
        mixed, switch = self._uniform() < s.prob, self._uniform()
        use_cutmix = bool(s.cutmix) and (not s.mixup or switch < s.switch_prob)
        alpha = s.cutmix if use_cutmix else s.mixup
        lam = float(self.rng.beta(alpha, alpha))
        box = [self._uniform(), self._uniform()]
        if not mixed:
            return None
        if use_cutmix:
            x, lam = _paste_box(x, lam, box)
        else:
            x = x * lam + x.flip(0) * (1 - lam)
        self.ratio = lam
        return x, blend(soft_targets(labels, self.num_classes, s.label_smoothing), lam)


def blend(rows: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per-image rows (targets, a teacher's probabilities) mixed as the images were: each row
    ``ratio`` of itself and the rest of the reversed batch's row."""
    return rows * ratio + rows.flip(0) * (1 - ratio)


def _paste_box(x: torch.Tensor, lam: float, centre: list[float]) -> tuple[torch.Tensor, float]:
    """CutMix: a box of about (1 - lam) of the area, centred at ``centre`` (fractions) and clipped
    to the image, taken from the paired image; lam recomputed from the clipped box."""
    height, width = x.shape[-2:]
    cut = math.sqrt(1 - lam)
    cy, cx = int(centre[0] * height), int(centre[1] * width)
    half_h, half_w = int(height * cut) // 2, int(width * cut) // 2
    top, bottom = max(cy - half_h, 0), min(cy + half_h, height)
    left, right = max(cx - half_w, 0), min(cx + half_w, width)
    out = x.clone()
    out[..., top:bottom, left:right] = x.flip(0)[..., top:bottom, left:right]
    return out, 1 - (bottom - top) * (right - left) / (height * width)
