"""The exponential moving average of the weights (``train.ema``).

``torch.optim.swa_utils.AveragedModel`` with ``use_buffers=True`` (BatchNorm's running statistics
are averaged too) keeps the average, updated after every optimizer step. Validation runs on it
(:meth:`WeightAverage.swapped_in` puts the averaged weights into the model for the while, so a
network that is a part of the model, the frozen-feature cache's, sees them too); ``best.pt``
holds it as the model's weights, so evaluate, predict and the exports use it; ``last.pt`` keeps
the raw weights and the average, and a resumed run continues both exactly.

It takes ``train.ema`` alone (:class:`~cnnzoo.config.schema.EmaConfig`); a falsy one (no decay) is off.

Floor 7 (training): imports torch and :mod:`cnnzoo.config`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ..config import EmaConfig


class WeightAverage:
    """The average of ``model``'s weights and buffers; ``update`` after each optimizer step."""

    def __init__(self, model: nn.Module, settings: EmaConfig):
        self.decay, self.warmup = float(settings.decay), settings.warmup
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)

    def decay_at(self, step: int) -> float:
        """The decay at the ``step``-th update: timm's warm-up keeps the random start from lingering."""
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def _average(self, averaged: list[torch.Tensor], current: list[torch.Tensor], count: torch.Tensor) -> None:
        if not torch.is_floating_point(averaged[0]):  # BatchNorm's batch counters: the model's own
            torch._foreach_copy_(averaged, current)
            return
        torch._foreach_lerp_(averaged, current, 1 - self.decay_at(int(count)))

    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights under the model's own names (what ``best.pt`` stores)."""
        return {k: v.detach().cpu() for k, v in self.averaged.module.state_dict().items()}

    def full_state(self) -> dict[str, Any]:
        """What resuming needs: the average and how many steps it has taken in."""
        return {"weights": self.state_dict(), "updates": int(self.averaged.n_averaged)}

    def load_full_state(self, state: dict[str, Any]) -> None:
        self.averaged.module.load_state_dict(state["weights"])
        self.averaged.n_averaged.fill_(int(state["updates"]))

    @contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """``model`` holds the averaged weights inside the block, its own again after it."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.averaged.module.state_dict())
        try:
            yield
        finally:
            model.load_state_dict(own)
