"""Training-time augmentation (``data.augment``): a ``torchvision.transforms.v2`` pipeline applied
to each uint8 image of a batch, seeded per batch by :class:`cnnzoo.data.loaders.ImageDataset`
(geometry, colour jitter, then RandAugment / TrivialAugment / AugMix, then random erasing)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from ..config import AugmentConfig
from ..runtime.versions import check as check_torch_pair

check_torch_pair()  # a mismatched torch/torchvision pair gets one line before torchvision is imported
from torchvision.transforms import v2  # noqa: E402  (after the pair check)


def build_augment(aug: AugmentConfig, size: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torchvision.transforms.v2 pipeline on uint8 CxHxW tensors; None when nothing is on.

    Every value was range-checked with the config (:class:`cnnzoo.config.Bounds`).
    """
    steps: list[Any] = []
    if aug.random_resized_crop:
        steps.append(v2.RandomResizedCrop(list(size), scale=tuple(aug.random_resized_crop), antialias=True))
    hflip, vflip = aug.flip_probabilities
    if hflip:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if vflip:
        steps.append(v2.RandomVerticalFlip(vflip))
    translate = aug.translate if isinstance(aug.translate, list) else [aug.translate, aug.translate]
    if aug.rotation or aug.shear or aug.zoom or any(translate):
        steps.append(
            v2.RandomAffine(
                degrees=aug.rotation,
                translate=tuple(translate) if any(translate) else None,
                scale=(1 - aug.zoom, 1 + aug.zoom) if aug.zoom else None,
                shear=aug.shear or None,
                interpolation=v2.InterpolationMode.BILINEAR,
            )
        )
    if aug.color_jitter:
        steps.append(v2.ColorJitter(**dataclasses.asdict(aug.color_jitter)))
    steps += policy_steps(aug)
    if aug.random_erasing:
        steps.append(v2.RandomErasing(aug.random_erasing))
    return v2.Compose(steps) if steps else None


def policy_steps(aug: AugmentConfig) -> list[Any]:
    """RandAugment, TrivialAugment and AugMix: torchvision's per-image policies (each image draws
    its own operations; a batch given to them whole would share one draw)."""
    steps: list[Any] = []
    if aug.randaugment:
        steps.append(v2.RandAugment(num_ops=aug.randaugment.num_ops, magnitude=aug.randaugment.magnitude))
    if aug.trivialaugment:
        steps.append(v2.TrivialAugmentWide())
    if aug.augmix:
        steps.append(v2.AugMix())
    return steps
