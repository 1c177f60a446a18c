"""Test-time augmentation (``evaluate --tta``, ``predict --tta``, ``model.predict(..., tta=True)``): each image is
scored as it is, mirrored, and in three crops of 7/8 of its sides (centre, top-left,
bottom-right) resized back, and the five views' probabilities are averaged.

The wrapper returns logits whose softmax (or sigmoid, for one output) is that average, so every
rule downstream (probabilities, loss, top-k) stays the one of :mod:`cnnzoo.inference.classifier`.

Floor 5 (inference, with torch): imports torch only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CROP = 0.875  # the crops' share of each side
VIEWS = ("as it is", "mirrored", "centre crop", "top-left crop", "bottom-right crop")


def views(x: torch.Tensor) -> list[torch.Tensor]:
    """The five views of a normalised batch ``[B, C, H, W]`` (in :data:`VIEWS`' order)."""
    height, width = x.shape[-2:]
    h, w = max(1, round(height * CROP)), max(1, round(width * CROP))
    corners = [((height - h) // 2, (width - w) // 2), (0, 0), (height - h, width - w)]
    crops = [
        F.interpolate(x[..., t : t + h, left : left + w], size=(height, width), mode="bilinear", align_corners=False)
        for t, left in corners
    ]
    out = [x, x.flip(-1), *crops]
    if x.is_contiguous(memory_format=torch.channels_last):
        out = [v.contiguous(memory_format=torch.channels_last) for v in out]
    return out


class AveragedViews(nn.Module):
    """``module`` scored on the :func:`views` of every batch; the averaged probabilities as logits."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [self.module(v).float() for v in views(x)]
        if outputs[0].shape[1] == 1:  # one logit: a binary classifier's sigmoid
            p = torch.stack([o.sigmoid() for o in outputs]).mean(0).clamp(1e-7, 1 - 1e-7)
            return torch.log(p) - torch.log1p(-p)
        p = torch.stack([o.softmax(dim=1) for o in outputs]).mean(0)
        return torch.log(p.clamp_min(1e-12))
