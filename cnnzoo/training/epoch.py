"""One epoch of a run (:func:`cnnzoo.training.run.fit` calls it): the network it trains, wrapped in
DistributedDataParallel when distributed (:class:`TrainingNet`), and :func:`train_epoch`, which trains
it, validates, and returns the record every callback gets.

Floor 7 (training): imports torch, :mod:`cnnzoo.data` (the loaders' seeds), :mod:`cnnzoo.errors`,
:mod:`cnnzoo.runtime` (DDP) and, in training, the loop, the events and the transfer stages; the
:class:`~cnnzoo.training.run.Job` only as a type.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import DataError
from ..runtime import distributed
from .events import EpochEnd
from .loop import EpochTally, train_one_epoch, validate
from .transfer import TransferStages

if TYPE_CHECKING:
    from .run import Job


class TrainingNet:
    """The network an epoch trains: the stages' net, in DistributedDataParallel when distributed,
    wrapped again only when the trainable parameters change (DDP tracks a fixed set of them)."""

    def __init__(self) -> None:
        self.net: nn.Module | None = None
        self.key: tuple[int, int | None] | None = None

    def for_epoch(self, stages: TransferStages, device: Any) -> nn.Module:
        key = (id(stages.net), stages.trainable)
        if key != self.key:
            self.net = None  # the old wrapper lets go of the parameters before a new one takes them
            self.net, self.key = distributed.wrap(stages.net, device), key
        return self.net


def _row(job: Job, epoch: int, lrs: tuple, stats: dict[str, float], val: dict[str, Any]) -> dict[str, Any]:
    """The epoch's metrics.csv row; ``lrs``: the rates at its start."""
    row = {
        "epoch": epoch,
        "lr": lrs[0],
        "train_loss": stats["train_loss"],
        "train_acc": stats["train_acc"],
        **val,
        "seconds": stats["train_seconds"],
        "images_per_s": stats["images_per_s"],
        "data_wait": stats["data_wait"],
        "stage": job.stages.stage_at(epoch),
        "trainable_params": sum(p.numel() for p in job.model.parameters() if p.requires_grad),
        "backbone_lr": lrs[1],
    }
    if job.distiller is not None:  # its first epoch's includes the cached mode's one pass over the images
        row["teacher_seconds"] = job.distiller.take_seconds()
    return row


def train_epoch(
    job: Job,
    epoch: int,
    net: nn.Module,
    *,
    tally: EpochTally | None = None,
    after_batch: Callable[[EpochTally], None] | None = None,
) -> EpochEnd:
    """One epoch trained (on ``net``) and validated: the record every callback gets. ``tally``:
    where a run resumed mid-epoch stands; ``after_batch``: the mid-epoch checkpoints."""
    t, stages, schedule = job.cfg.train, job.stages, job.stepper.schedule
    tally = tally or EpochTally.start(job.feed.device)
    if tally.lrs is None:
        tally.lrs = (schedule.lr, schedule.backbone_lr)
    stats = train_one_epoch(
        net,
        stages.train_loader,
        criterion=job.criterion,
        stepper=job.stepper,
        feed=job.feed,
        desc=f"epoch {epoch}/{t.epochs}",
        augment=stages.loaders.batch_augment,
        mixer=job.mixer,
        distiller=job.distiller,
        tally=tally,
        after_batch=after_batch,
    )
    if not stats["images_per_s"]:  # no image decoded (a stream's every member failed): no best.pt of nothing
        raise DataError(
            f"{job.cfg.data.root}: none of the training images could be read in epoch {epoch} (each was skipped "
            f"as unreadable); cnnzoo data check names them. Replace or remove those files"
        )
    distributed.broadcast_buffers(job.model)  # every process validates rank 0's model
    if job.average is not None:  # and rank 0's average of it (its BatchNorm statistics differ)
        distributed.broadcast_buffers(job.average.averaged)
    multi_label = job.multi_label
    with job.average.swapped_in(job.model) if job.average is not None else nullcontext():
        val, confusion = validate(
            stages.net,
            stages.val_loader,
            feed=job.feed.without_autocast(),
            num_classes=job.num_classes,
            thresholds=t.thresholds if multi_label else None,
        )
    if multi_label:
        job.base_state["meta"]["thresholds"] = val.pop("thresholds")
    row = _row(job, epoch, tally.lrs, stats, val)
    schedule.step_epoch(val[job.best.monitor])
    improved = job.best.update(val, epoch)
    best_text = f"{job.best.text()} (epoch {job.best.epoch})"
    return EpochEnd(
        epoch=epoch, row=row, improved=improved, best_text=best_text, confusion=confusion, best_epoch=job.best.epoch
    )
