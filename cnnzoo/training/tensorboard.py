"""TensorBoard logging of a training run: ``train.loggers: [csv, tensorboard]``
(``pip install 'cnnzoo[tensorboard]'``).

Scalars (loss, accuracy, learning rates, speed, the multi-label scores) and the validation
confusion matrix per epoch, in one event file under ``<run>/tensorboard``: ``tensorboard --logdir runs``.

Floor 7 (training): imports :mod:`cnnzoo.training.events` and the plots; torch's SummaryWriter is
imported lazily, as tensorboard is an optional extra.
"""

from __future__ import annotations

from ..config import TrainConfig
from ..console import console
from ..errors import ConfigError
from ..plots import confusion_figure
from .events import MULTI_LABEL_COLUMNS, EpochEnd, RunStart


class TensorBoard:
    """Scalars and the confusion matrix of each epoch in ``<run>/tensorboard``."""

    def __init__(self, run: RunStart):
        # lazy: tensorboard is an optional extra, checked by require() before training starts
        from torch.utils.tensorboard import SummaryWriter

        self.classes = run.classes
        # a resumed run drops whatever an interrupted attempt logged after its checkpoint
        self.writer = SummaryWriter(str(run.run_dir / "tensorboard"), purge_step=run.first_epoch)

    @classmethod
    def require(cls) -> None:
        try:
            import tensorboard  # noqa: F401  # lazy: an optional extra; torch.utils.tensorboard needs it
        except ImportError:
            raise ConfigError(
                "train.loggers: tensorboard needs the tensorboard package; "
                "pip install 'cnnzoo[tensorboard]' (or remove it from the list)"
            ) from None

    @classmethod
    def open(cls, run: RunStart, t: TrainConfig) -> TensorBoard:
        return cls(run)  # no setting of its own

    def epoch_end(self, end: EpochEnd) -> None:
        row, step, w = end.row, end.epoch, self.writer
        # one event file per run (add_scalars would make a TensorBoard "run" of every curve)
        for name, key in (
            ("loss/train", "train_loss"),
            ("loss/validation", "val_loss"),
            ("accuracy/train", "train_acc"),
            ("accuracy/validation", "val_acc"),
        ):
            w.add_scalar(name, row[key], step)
        w.add_scalar("lr/head", row["lr"], step)
        if row["backbone_lr"] is not None:
            w.add_scalar("lr/backbone", row["backbone_lr"], step)
        w.add_scalar("speed/images_per_s", row["images_per_s"], step)
        w.add_scalar("speed/data_wait", row["data_wait"], step)
        for key in MULTI_LABEL_COLUMNS:
            if row.get(key) is not None:
                w.add_scalar(f"multi_label/{key}", row[key], step)
        if end.confusion is None:
            w.flush()
            return
        try:
            w.add_figure(
                "validation/confusion_matrix",
                confusion_figure(end.confusion.tolist(), self.classes, f"epoch {step}"),
                step,
            )
        except Exception as exc:  # a picture must never end a training run
            console.warn(f"tensorboard: could not draw the confusion matrix: {exc}")
        w.flush()

    def close(self) -> None:
        self.writer.close()
