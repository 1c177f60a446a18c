"""The recipe: optimizer (and its parameter groups), learning-rate schedule, class weights, loss, seeds.

The optimizer and the schedule are made from the few settings each reads
(:class:`OptimizerSettings`, :class:`ScheduleSettings`), picked out of ``train`` by their ``of``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig
from ..errors import ConfigError
from ..model.backbones import backbone_of
from .mixing import smoothed_multi_hot


@dataclass(frozen=True, kw_only=True)
class OptimizerSettings:
    """What the optimizer is made from: ``train.optimizer``, ``lr``, ``backbone_lr`` (resolved),
    ``momentum``, ``nesterov`` and ``weight_decay``."""

    name: str = "adam"  # sgd, adam, adamw, rmsprop
    lr: float = 1e-3
    backbone_lr: float = 1e-4  # a backbone's parameter group
    momentum: float = 0.9  # sgd and rmsprop
    nesterov: bool = False  # sgd
    weight_decay: float = 0.0

    @classmethod
    def of(cls, t: TrainConfig) -> OptimizerSettings:
        return cls(
            name=t.optimizer,
            lr=t.lr,
            backbone_lr=t.backbone_learning_rate(),
            momentum=t.momentum,
            nesterov=t.nesterov,
            weight_decay=t.weight_decay,
        )


def param_groups(model: nn.Module, settings: OptimizerSettings) -> list[dict[str, Any]]:
    """The head at ``lr``; a backbone, frozen parts included (they may thaw later), at ``backbone_lr``."""
    backbone = backbone_of(model)
    if backbone is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": settings.lr}]
    inside = {id(p) for p in backbone.parameters()}
    head = [p for p in model.parameters() if id(p) not in inside and p.requires_grad]
    return [{"params": head, "lr": settings.lr}, {"params": list(backbone.parameters()), "lr": settings.backbone_lr}]


def make_optimizer(model: nn.Module, settings: OptimizerSettings) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer ``settings`` names over :func:`param_groups`."""
    s, params = settings, param_groups(model, settings)
    if s.name == "sgd":
        return torch.optim.SGD(
            params, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov and s.momentum > 0, weight_decay=s.weight_decay
        )
    if s.name == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    if s.name == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.RMSprop(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


@dataclass(frozen=True, kw_only=True)
class ScheduleSettings:
    """What the learning-rate schedule reads: ``train.scheduler``, ``epochs``, ``warmup_epochs``,
    ``step_size``, ``gamma``, ``plateau_patience``, and whether ``monitor`` is a loss (lower is better)."""

    kind: str = "none"  # none, step, cosine, one-cycle, reduce-on-plateau
    epochs: int = 10
    warmup_epochs: float = 0.0
    step_size: int = 10
    gamma: float = 0.1
    plateau_patience: int = 2
    minimize: bool = False  # reduce-on-plateau: the monitored figure is val_loss

    @classmethod
    def of(cls, t: TrainConfig) -> ScheduleSettings:
        return cls(
            kind=t.scheduler,
            epochs=t.epochs,
            warmup_epochs=t.warmup_epochs,
            step_size=t.step_size,
            gamma=t.gamma,
            plateau_patience=t.plateau_patience,
            minimize=t.monitor == "val_loss",
        )


class LRSchedule:
    """Per-step learning rate: linear warm-up, then none/step/cosine/one-cycle; or plateau per epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, settings: ScheduleSettings, steps_per_epoch: int):
        self.optimizer, self.settings = optimizer, settings
        self.steps_per_epoch = steps_per_epoch
        self.total = settings.epochs * steps_per_epoch
        self.warmup = round(settings.warmup_epochs * steps_per_epoch)
        self.step_count = 0
        self.plateau = None
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]  # head, then backbone
        if settings.kind == "one-cycle":
            pct = self.warmup / self.total if self.warmup else 0.3
            self.torch_schedule = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=list(self.base_lrs), total_steps=self.total, pct_start=min(max(pct, 0.01), 0.99)
            )
        elif settings.kind == "reduce-on-plateau":
            mode = "min" if settings.minimize else "max"
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=mode, factor=settings.gamma, patience=settings.plateau_patience
            )
            self.torch_schedule = None
            self._warm(0)
        else:
            self.torch_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self.factor)

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.settings.kind == "step":
            return self.settings.gamma ** ((step // self.steps_per_epoch) // self.settings.step_size)
        if self.settings.kind == "cosine":
            progress = (step - self.warmup) / max(1, self.total - self.warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    def _warm(self, step: int) -> None:
        if step < self.warmup:
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base * (step + 1) / self.warmup
        elif step == self.warmup and self.warmup:
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base

    def step_batch(self) -> None:
        self.step_count += 1
        if self.torch_schedule is not None:
            if self.step_count < self.total or self.settings.kind != "one-cycle":
                self.torch_schedule.step()
        else:
            self._warm(self.step_count)

    def step_epoch(self, monitored: float) -> None:
        if self.plateau is not None and self.step_count >= self.warmup:
            self.plateau.step(monitored)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def backbone_lr(self) -> float | None:
        groups = self.optimizer.param_groups
        return float(groups[1]["lr"]) if len(groups) > 1 else None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"step_count": self.step_count, "steps_per_epoch": self.steps_per_epoch}
        if self.torch_schedule is not None:
            state["torch"] = self.torch_schedule.state_dict()
            if "lr_lambdas" in state["torch"]:  # our factor is a method: rebuilt from the config
                state["torch"]["lr_lambdas"] = [None] * len(state["torch"]["lr_lambdas"])
        if self.plateau is not None:
            state["plateau"] = self.plateau.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = state["step_count"]
        saved_steps = state.get("steps_per_epoch", self.steps_per_epoch)
        # resumed with another number of processes (or batch size): the same point of the
        # schedule, counted in this run's steps
        rescaled = saved_steps != self.steps_per_epoch
        if rescaled:
            self.step_count = round(self.step_count * self.steps_per_epoch / saved_steps)
        if self.torch_schedule is not None and "torch" in state:
            saved = dict(state["torch"])
            # the plan (length, phases) comes from the current config, so that a resume with
            # more epochs re-plans the schedule instead of running off its end
            for key in ("total_steps", "_schedule_phases"):
                saved.pop(key, None)
            self.torch_schedule.load_state_dict(saved)
            if rescaled:
                self.torch_schedule.last_epoch = self.step_count
        if self.plateau is not None and "plateau" in state:
            self.plateau.load_state_dict(state["plateau"])


def check_class_weights(setting: Any, classes: list[str]) -> None:
    """A ``train.class_weights`` mapping names only classes the data has (checked before the cache is built)."""
    unknown = [c for c in setting if c not in classes] if isinstance(setting, dict) else []
    if unknown:
        raise ConfigError(f"train.class_weights.{unknown[0]}: no such class; classes are {', '.join(classes)}")


def class_weight_vector(setting: Any, classes: list[str], counts: list[int]) -> torch.Tensor | None:
    """``balanced`` gives N / (K * n_c) (scikit-learn's rule) from the images training reads; a
    mapping names classes (:func:`check_class_weights`)."""
    check_class_weights(setting, classes)
    if setting == "none":
        return None
    if setting == "balanced":
        total, k = sum(counts), len(classes)
        return torch.tensor([total / (k * max(1, n)) for n in counts], dtype=torch.float32)
    return torch.tensor([float(setting.get(c, 1.0)) for c in classes], dtype=torch.float32)


def pos_weight_vector(setting: Any, classes: list[str], counts: list[int], images: int) -> torch.Tensor | None:
    """Multi-label ``class_weights``: a ``pos_weight`` per class; ``balanced`` gives negatives /
    positives (each class's positives weigh as much as its negatives); a mapping names classes."""
    check_class_weights(setting, classes)
    if setting == "none":
        return None
    if setting == "balanced":
        return torch.tensor([(images - n) / max(1, n) for n in counts], dtype=torch.float32)
    return torch.tensor([float(setting.get(c, 1.0)) for c in classes], dtype=torch.float32)


MULTI_LABEL_LOSS = "bce_multi_label"  # a sigmoid and BCE per class


class Criterion(nn.Module):
    """The training loss: cross-entropy over K logits, BCE over one logit for two classes, or
    (multi-label) BCE over each of K logits against multi-hot targets, ``weights`` its pos_weight."""

    def __init__(self, kind: str, weights: torch.Tensor | None, label_smoothing: float):
        super().__init__()
        self.kind, self.label_smoothing = kind, label_smoothing
        if kind == MULTI_LABEL_LOSS:
            self.loss = nn.BCEWithLogitsLoss(pos_weight=weights)
        elif kind == "bce":
            pos_weight = None if weights is None else (weights[1] / weights[0]).view(1)
            self.loss = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        else:
            self.loss = nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)

    def soft(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss against rows of class probabilities (MixUp/CutMix's targets, which hold the
        label smoothing already, :func:`cnnzoo.training.mixing.soft_targets`)."""
        if self.kind == MULTI_LABEL_LOSS:
            return self.loss(logits.float(), targets)
        if self.kind == "bce":
            return self.loss(logits[:, 0].float(), targets[:, 1])
        return nn.functional.cross_entropy(logits.float(), targets, weight=self.loss.weight)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.kind == MULTI_LABEL_LOSS:
            return self.loss(logits.float(), smoothed_multi_hot(labels, self.label_smoothing))
        if self.kind == "bce":
            return self.loss(logits[:, 0].float(), smoothed_multi_hot(labels, self.label_smoothing))
        return self.loss(logits.float(), labels)


def loss_kind(setting: str, outputs: int, num_classes: int, *, multi_label: bool = False) -> str:
    if multi_label:
        if setting == "cross_entropy" or outputs != num_classes:
            raise ConfigError(
                f"train.loss: multi-label data (several labels per image) needs one output per class and "
                f"a BCE loss per class; this network has {outputs} output{'s' if outputs != 1 else ''} for "
                f"{num_classes} classes and train.loss is {setting} (use auto, and dense: {{out_features: "
                f"num_classes}} or leave out_features to the data)"
            )
        return MULTI_LABEL_LOSS
    if setting == "auto":
        return "bce" if outputs == 1 else "cross_entropy"
    if setting == "bce" and (outputs != 1 or num_classes != 2):
        raise ConfigError(
            f"train.loss: bce needs a one-output head over 2 classes; this network has "
            f"{outputs} outputs for {num_classes} classes (use cross_entropy or dense: "
            f"{{out_features: 1}})"
        )
    if setting == "cross_entropy" and outputs == 1:
        raise ConfigError(
            "train.loss: cross_entropy needs one output per class, the network has one "
            "output; use bce (or auto) or out_features: num_classes"
        )
    return setting


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
