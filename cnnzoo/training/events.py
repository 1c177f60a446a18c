"""What a run tells its callbacks and loggers: the record of an epoch (:class:`EpochEnd`), what a
logger is opened with (:class:`RunStart`), and the two shapes they fill (:class:`Callback`,
:class:`Logger`).

:func:`cnnzoo.training.run.fit` hands one :class:`EpochEnd` to each callback in turn, then calls
``close`` once when training ends (or is interrupted). The loggers a user picks in
``train.loggers`` are looked up by name in :data:`cnnzoo.training.loggers.LOGGERS`.

Floor 7 (training): imports torch (for a type) and :mod:`cnnzoo.config`; every callback and logger
module imports this one, and this one imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ..config import TrainConfig

METRIC_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "seconds",
    "images_per_s",
    "data_wait",
    "stage",
    "trainable_params",
    "backbone_lr",
]
# multi-label runs add these (val_acc is then the exact-match rate: every class right at 0.5)
MULTI_LABEL_COLUMNS = ["val_map", "val_f1_micro", "val_f1_macro"]
# distilling runs add the seconds the teacher ran in each epoch (train.distill)
DISTILL_COLUMNS = ["teacher_seconds"]


@dataclass(kw_only=True)
class EpochEnd:
    """One epoch's record, as every callback sees it."""

    epoch: int
    row: dict[str, Any]  # METRIC_COLUMNS -> value (None where it does not apply)
    improved: bool  # the monitored metric is the best so far
    best_text: str  # the best value so far and its epoch, for people
    confusion: torch.Tensor | None  # validation counts [true class, predicted class]; None for multi-label
    best_epoch: int = 0  # the epoch best.pt holds now


class StopTraining(Exception):
    """Raised by a callback's ``epoch_end`` to end the run after this epoch (``cnnzoo tune`` pruning a
    trial): the callbacks close, the fits after training are skipped, and the run folder is returned."""


class Callback(Protocol):
    """What is told of each finished epoch, and of the end of training."""

    def epoch_end(self, end: EpochEnd) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class RunStart:
    """What a logger is opened with: the run folder (its ``config.yaml`` written already), the
    classes in the model's order, and the epoch a resumed run's ``last.pt`` held (None: a new run)."""

    run_dir: Path
    classes: list[str]
    resumed_at: int | None = None

    @property
    def first_epoch(self) -> int:
        """The first epoch this attempt trains."""
        return (self.resumed_at or 0) + 1


class Logger(Callback, Protocol):
    """A ``train.loggers`` choice: a callback that also says, before any work starts, whether it can
    run here (:meth:`require`), and opens itself from the run and the settings it reads (:meth:`open`)."""

    @classmethod
    def require(cls) -> None:
        """Raise a one-line :class:`~cnnzoo.errors.ConfigError` when a package it needs is missing."""
        ...

    @classmethod
    def open(cls, run: RunStart, t: TrainConfig) -> Logger:
        """The logger of ``run``, given only the settings it picks out of ``t``."""
        ...
