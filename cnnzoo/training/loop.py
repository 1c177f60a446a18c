"""The loop's pieces: one optimizer step (:class:`Stepper`, gradient accumulation and the weight
average included), one epoch (:func:`train_one_epoch`, MixUp/CutMix, augmentation on the batch, a
distillation teacher), validation (:func:`validate`), and which epoch ``best.pt`` holds (:class:`BestEpoch`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..console import console
from ..data.batch_augment import BatchAugment
from ..evaluation import metrics, multilabel
from ..evaluation.metrics import predict_loader
from ..runtime import distributed
from ..runtime.device import Feed
from .distill import Distiller
from .ema import WeightAverage
from .mixing import Mixer
from .recipe import LRSchedule


class Stepper:
    """One optimizer step from a loss: backward (scaled for fp16), clipping, step, schedule
    (none when the caller sets the rate itself, as lr-find does), the weight average.

    With ``accumulate`` K, the gradients of K batches (each loss divided by K) add up before one
    optimizer step; ``final`` (an epoch's last batch) steps whatever has gathered.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: LRSchedule | None,
        *,
        scaler=None,
        grad_clip: float | None = None,
        accumulate: int = 1,
        average: WeightAverage | None = None,
    ):
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.scaler, self.grad_clip = scaler, grad_clip
        self.accumulate, self.average = accumulate, average
        self.pending = 0  # batches whose gradients wait for the next optimizer step

    def steps_now(self, final: bool) -> bool:
        """Whether the next batch's :meth:`step` ends with an optimizer step."""
        return final or self.pending + 1 >= self.accumulate

    def step(self, loss: torch.Tensor, *, final: bool = True) -> bool:
        """Backward; an optimizer step when :meth:`steps_now` says so (True then)."""
        stepping = self.steps_now(final)
        if self.pending == 0:
            self.optimizer.zero_grad(set_to_none=True)
        if self.accumulate > 1:
            loss = loss / self.accumulate
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        self.pending += 1
        if not stepping:
            return False
        self._apply()
        return True

    def finish_epoch(self) -> None:
        """An optimizer step for gradients still gathered (an epoch whose last batch was empty)."""
        if self.pending:
            self._apply()

    def _apply(self) -> None:
        self.pending = 0
        if self.scaler is not None:
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if self.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step_batch()
        if self.average is not None:
            self.average.update(self.model)


def optimizer_steps(batches: int, accumulate: int) -> int:
    """Optimizer steps in an epoch of ``batches`` batches (the last group may be short)."""
    return -(-batches // accumulate)


def training_inputs(
    batch: tuple[torch.Tensor, ...], feed: Feed, augment: BatchAugment | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch on the device, ready for the network; a batch that carries its seed
    (images, labels, seed) is augmented there first."""
    images, labels, *seed = batch
    if seed and augment is not None:
        images = augment(images.to(feed.device, non_blocking=True), int(seed[0]))
    return feed.inputs(images), labels.to(feed.device, non_blocking=True)


@dataclass(kw_only=True)
class EpochParts:
    """What an epoch trains with besides the network and its batches."""

    criterion: nn.Module
    stepper: Stepper
    feed: Feed
    augment: BatchAugment | None = None  # data.augment on the device (batches that carry their seed)
    mixer: Mixer | None = None  # MixUp / CutMix
    distiller: Distiller | None = None  # train.distill: the teacher's soft targets


def _train_step(net: nn.Module, batch: tuple, parts: EpochParts, *, final: bool) -> tuple[torch.Tensor, ...]:
    """One batch forward and backward (an optimizer step when due): (loss, logits, labels)."""
    x, y = training_inputs(batch, parts.feed, parts.augment)
    mixed = parts.mixer.mix(x, y) if parts.mixer is not None else None
    if mixed is not None:
        x, soft_targets = mixed
    teacher = None
    if parts.distiller is not None:  # the last item of a distilling run's batch: each image's row
        rows = batch[-1] if len(batch) > 2 and batch[-1].dim() == 1 else None
        teacher = parts.distiller.targets(x, rows, ratio=parts.mixer.ratio if mixed is not None else None)
    # in DDP, gradients are averaged across processes only on the batch that steps
    between_steps = not parts.stepper.steps_now(final) and hasattr(net, "no_sync")
    with net.no_sync() if between_steps else nullcontext():
        with parts.feed.autocast():
            logits = net(x)
            loss = parts.criterion(logits, y) if mixed is None else parts.criterion.soft(logits, soft_targets)
            if teacher is not None:
                loss = parts.distiller.loss(logits, loss, teacher)
        parts.stepper.step(loss, final=final)
    return loss.detach(), logits.detach(), y


@dataclass(kw_only=True)
class EpochTally:
    """An epoch's sums so far on this process: the batches taken, the training loss and correct
    answers (device scalars, read once at the end), the images. A run resumed mid-epoch starts
    from the saved one (:mod:`cnnzoo.training.midepoch`), so the epoch's row is the uninterrupted run's."""

    step: int = 0
    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    lrs: tuple[float, float | None] | None = None  # the rates at the epoch's start (its row's)
    # a resumed epoch's generators, set once its first batch is in: making the loader's iterator
    # draws from torch's generator (a stream's, at its first batch), which the uninterrupted run did
    # before its first batch
    set_generators: Callable[[], None] | None = None

    @classmethod
    def start(cls, device: torch.device) -> EpochTally:
        return cls(loss_sum=torch.zeros((), device=device), correct=torch.zeros((), device=device, dtype=torch.int64))

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum += loss * len(y)
        self.correct += metrics.correct_count(logits, y)
        self.seen += len(y)

    def state(self) -> dict[str, Any]:
        """Plain values and CPU tensors (a checkpoint is read with weights_only=True)."""
        return {
            "step": self.step,
            "loss_sum": self.loss_sum.cpu(),
            "correct": self.correct.cpu(),
            "seen": self.seen,
            "lrs": list(self.lrs) if self.lrs is not None else None,
        }

    @classmethod
    def of_state(cls, state: dict[str, Any], device: torch.device) -> EpochTally:
        return cls(
            step=int(state["step"]),
            loss_sum=state["loss_sum"].to(device),
            correct=state["correct"].to(device),
            seen=int(state["seen"]),
            lrs=tuple(state["lrs"]) if state.get("lrs") is not None else None,
        )


def _show_progress(bar: Any, tally: EpochTally, *, images: int, start: float, total: int) -> None:
    if bar.disable is False and (tally.step % 5 == 0 or tally.step == total):
        bar.set_postfix(
            loss=f"{tally.loss_sum.item() / max(1, tally.seen):.3f}",
            acc=f"{tally.correct.item() / max(1, tally.seen):.1%}",
            img_s=f"{images / (time.perf_counter() - start):.0f}",
            refresh=False,
        )
    bar.update(1)


def train_one_epoch(
    net: nn.Module,
    loader,
    *,
    criterion: nn.Module,
    stepper: Stepper,
    feed: Feed,
    desc: str,
    augment: BatchAugment | None = None,
    mixer: Mixer | None = None,
    distiller: Distiller | None = None,
    tally: EpochTally | None = None,
    after_batch: Callable[[EpochTally], None] | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; ``net`` is the model, or its trainable part on cached features
    (in DDP, wrapped). Loss, accuracy and speed are totals over all processes; accuracy counts
    the labels before any mixing. ``tally``: where a resumed epoch stands (its loader set to go
    on from there); ``after_batch`` is told of each batch trained (a mid-epoch checkpoint)."""
    parts = EpochParts(
        criterion=criterion, stepper=stepper, feed=feed, augment=augment, mixer=mixer, distiller=distiller
    )
    net.train()
    tally = tally or EpochTally.start(feed.device)
    seen_before, wait, total = tally.seen, 0.0, len(loader)
    bar = console.bar(total, desc)
    if tally.step:
        bar.update(tally.step)
    start = time.perf_counter()
    iterator = iter(loader)
    while True:
        t_wait = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            break
        if tally.set_generators is not None:
            tally.set_generators()
            tally.set_generators = None
        wait += time.perf_counter() - t_wait
        tally.step += 1
        if len(batch[1]) == 0:
            continue
        tally.add(*_train_step(net, batch, parts, final=tally.step == total))
        _show_progress(bar, tally, images=tally.seen - seen_before, start=start, total=total)
        if after_batch is not None:
            after_batch(tally)
    bar.close()
    parts.stepper.finish_epoch()
    seconds = distributed.all_max(time.perf_counter() - start, feed.device)
    # the speed counts this attempt's images only (a resumed epoch's sums hold the earlier ones too)
    loss_total, correct_total, seen, here = distributed.all_sum(
        [tally.loss_sum.item(), tally.correct.item(), tally.seen, tally.seen - seen_before], feed.device
    )
    return {
        "train_loss": loss_total / max(1, seen),
        "train_acc": correct_total / max(1, seen),
        "train_seconds": seconds,
        "images_per_s": here / seconds if seconds else 0.0,
        "data_wait": wait / seconds if seconds else 0.0,
    }


def validate(
    net: nn.Module, loader, *, feed: Feed, num_classes: int, thresholds: float | str | None = None
) -> tuple[dict[str, float], torch.Tensor | None]:
    """Loss, accuracy and the confusion matrix; in DDP each process scores its share and the
    sums are reduced, so the figures equal one process's over the whole split. Multi-label
    (``thresholds`` given): :func:`validate_multi_label`'s figures, and no confusion matrix."""
    logits, labels = predict_loader(net, loader, feed, bar=console.bar(len(loader), " validate"))
    if thresholds is not None:
        return validate_multi_label(logits, labels, feed=feed, num_classes=num_classes, thresholds=thresholds), None
    predicted = metrics.predictions(logits) if len(labels) else labels
    confusion = metrics.confusion_counts(labels, predicted, num_classes)
    confusion = distributed.all_sum_tensor(confusion.to(feed.device)).cpu()
    loss_sum = metrics.plain_loss_sum(logits, labels).item() if len(labels) else 0.0
    loss_sum, n = distributed.all_sum([loss_sum, len(labels)], feed.device)
    n = max(1.0, n)
    return {"val_loss": loss_sum / n, "val_acc": confusion.diagonal().sum().item() / n}, confusion


def validate_multi_label(
    logits: torch.Tensor, targets: torch.Tensor, *, feed: Feed, num_classes: int, thresholds: float | str
) -> dict[str, Any]:
    """val_loss, val_acc (exact match at 0.5), val_map (macro AP), F1 micro/macro at 0.5 (or at
    ``thresholds`` when a number), and ``thresholds`` per class: tuned on this split when asked.
    In DDP the processes' scores are gathered first (AP needs them all)."""
    logits, targets = distributed.all_gather_rows(logits), distributed.all_gather_rows(targets)
    if not len(targets):
        targets = torch.zeros((0, num_classes))
        logits = torch.zeros((0, num_classes))
    scores, truth = torch.sigmoid(logits).numpy(), targets.numpy()
    fixed = 0.5 if thresholds == "tuned" else float(thresholds)
    at = multilabel.threshold_scores(scores, truth, [fixed] * num_classes)
    n = max(1, len(targets))
    return {
        "val_loss": metrics.plain_loss_sum(logits, targets).item() / n if len(targets) else 0.0,
        "val_acc": at["exact_match"],
        "val_map": multilabel.mean_average_precision(scores, truth),
        "val_f1_micro": at["f1_micro"],
        "val_f1_macro": at["f1_macro"],
        "thresholds": (multilabel.tune_thresholds(scores, truth) if thresholds == "tuned" else [fixed] * num_classes),
    }


def monitored_metric(setting: str, multi_label: bool) -> str:
    """What ``train.monitor`` watches: ``auto`` is val_map on multi-label data, val_acc otherwise."""
    if setting == "auto":
        return "val_map" if multi_label else "val_acc"
    return setting


class BestEpoch:
    """The epoch ``best.pt`` holds, and early stopping's count of epochs without progress.

    Progress is the monitored metric beating its best so far by more than ``min_delta``; such
    an epoch takes best.pt. So does one that is no worse on the monitored metric and no worse
    on the other validation figure (val_loss when monitoring val_acc, val_acc when monitoring
    val_loss): on a small validation split accuracy ties often, and the later epoch with the
    lower loss is the better checkpoint. Only progress resets the patience count.

    It takes the figure it watches (``monitor``, resolved), ``min_delta`` and ``patience``;
    :meth:`of` picks them out of ``train``. ``saved`` is a ``last.pt``'s record of it.
    """

    def __init__(
        self,
        monitor: str,
        *,
        min_delta: float = 0.0,
        patience: int | None = None,
        saved: dict[str, Any] | None = None,
    ):
        self.monitor = monitor
        self.maximize = self.monitor != "val_loss"
        self.other = "val_loss" if self.maximize else "val_acc"
        self.min_delta, self.patience = min_delta, patience
        saved = saved or {}
        self.value = saved.get("best_value")  # the monitored figure of the epoch best.pt holds
        self.other_value = saved.get("best_other")  # None in a last.pt from before ties were broken
        self.reference = saved.get("progress_value", self.value)  # what progress has to beat
        self.epoch = saved.get("best_epoch", 0)
        self.bad_epochs = saved.get("bad_epochs", 0)

    @classmethod
    def of(cls, t: TrainConfig, *, multi_label: bool = False, saved: dict[str, Any] | None = None) -> BestEpoch:
        """The rule ``train.monitor``, ``min_delta`` and ``patience`` set (``auto`` resolved for the data)."""
        monitor = monitored_metric(t.monitor, multi_label)
        return cls(monitor, min_delta=t.min_delta, patience=t.patience, saved=saved)

    def _at_least(self, a: float, b: float, maximize: bool) -> bool:
        return a >= b if maximize else a <= b

    def update(self, val: dict[str, float], epoch: int) -> bool:
        """Record an epoch's validation figures; True when best.pt should now hold this epoch."""
        value, other = val[self.monitor], val[self.other]
        progress = self.reference is None or (
            value > self.reference + self.min_delta if self.maximize else value < self.reference - self.min_delta
        )
        no_worse = (
            self.value is not None
            and self.other_value is not None
            and self._at_least(value, self.value, self.maximize)
            and self._at_least(other, self.other_value, not self.maximize)
        )
        if progress:
            self.reference, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if progress or no_worse:
            self.value, self.other_value, self.epoch = value, other, epoch
        return progress or no_worse

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def text(self, digits: int = 1) -> str:
        if self.value is None:
            return "n/a"
        return f"{100 * self.value:.{digits}f}%" if self.maximize else f"{self.value:.4f}"

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_value": self.value,
            "best_other": self.other_value,
            "progress_value": self.reference,
            "best_epoch": self.epoch,
            "bad_epochs": self.bad_epochs,
        }


SMALL_VALIDATION = 100  # images; below it one image moves val_acc by more than a point


def warn_small_validation(images: int, monitor: str) -> None:
    """Say when one validation image moves val_acc by more than a point: epochs then tie often."""
    if images >= SMALL_VALIDATION or monitor == "val_map":  # a ranking figure: epochs seldom tie on it
        return
    how = "ties go to the lower val_loss" if monitor == "val_acc" else "best.pt follows val_loss (train.monitor)"
    console.warn(
        f"the validation split has {images} images: one image moves val_acc by "
        f"{100 / images:.1f} points, so epochs often tie ({how}); more validation images "
        f"(data.val_fraction, or a larger validation/ folder) make the choice of best.pt steadier"
    )
