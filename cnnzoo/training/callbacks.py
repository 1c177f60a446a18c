"""What happens when an epoch ends: metrics.csv, checkpoints, history.png, the console line, TensorBoard.

:func:`cnnzoo.training.run.fit` validates, then hands one :class:`EpochEnd` to each callback
in turn; :func:`make_callbacks` makes the list a run asks for (``train.loggers``). Only rank 0
of a multi-process run has callbacks, so the run folder is written once. Another
logger is one more class with ``epoch_end`` and ``close``, as MLflow's is
(:class:`~cnnzoo.training.tracking.MLflowLogger`).
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from .. import checkpoint as ckpt_io
from .. import runs
from ..config import TrainConfig
from ..console import console
from ..errors import ConfigError
from ..files import is_disk_full, write_text
from ..plots import confusion_figure, plot_history
from .tracking import MLflowLogger

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
_TIMING_COLUMNS = ("seconds", "images_per_s", "data_wait", "lr", "backbone_lr")
# multi-label runs add these (val_acc is then the exact-match rate: every class right at 0.5)
MULTI_LABEL_COLUMNS = ["val_map", "val_f1_micro", "val_f1_macro"]


@dataclass(kw_only=True)
class EpochEnd:
    """One epoch's record, as every callback sees it."""

    epoch: int
    row: dict[str, Any]  # METRIC_COLUMNS -> value (None where it does not apply)
    improved: bool  # the monitored metric is the best so far
    best_text: str  # the best value so far and its epoch, for people
    confusion: torch.Tensor | None  # validation counts [true class, predicted class]; None for multi-label
    best_epoch: int = 0  # the epoch best.pt holds now


class Callback(Protocol):
    def epoch_end(self, end: EpochEnd) -> None: ...

    def close(self) -> None: ...


def format_row(row: dict[str, Any], columns: list[str] = METRIC_COLUMNS) -> dict[str, str]:
    out = {}
    for key in columns:
        value = row.get(key)
        if value is None:
            out[key] = ""
        elif isinstance(value, int):
            out[key] = str(value)
        else:
            out[key] = f"{value:.6g}" if key in _TIMING_COLUMNS else f"{value:.6f}"
    return out


class Checkpoints:
    """``best.pt`` when the monitored metric improves, ``last.pt`` (resumable) every epoch, and
    ``runs/latest`` pointed at the run once it has a ``best.pt`` (so a run that fails first
    leaves ``latest`` at the last run that predict and evaluate can use)."""

    def __init__(self, run_dir: Path, snapshot: Callable[[int, dict | None, bool], dict], saved_epoch: int):
        self.dir, self.snapshot = run_dir, snapshot
        self.saved_epoch = saved_epoch  # what last.pt holds, for the Ctrl-C message
        self.pointed_latest = False

    def epoch_end(self, end: EpochEnd) -> None:
        if end.improved:
            ckpt_io.save_atomic(self.snapshot(end.epoch, end.row, False), self.dir / "best.pt")
            if not self.pointed_latest:
                runs.point_latest(runs.runs_root_of(self.dir), self.dir)
                self.pointed_latest = True
        ckpt_io.save_atomic(self.snapshot(end.epoch, end.row, True), self.dir / "last.pt")
        self.saved_epoch = end.epoch

    def close(self) -> None:
        # Ctrl-C can land between a temporary file's creation and save_atomic's own clean-up
        runs.clean_stale_temporaries(self.dir)


class MetricsCSV:
    """metrics.csv, rewritten whole (atomically) each epoch; a resumed run keeps the rows it had."""

    def __init__(self, run_dir: Path, keep_up_to: int | None = None, *, columns: list[str] = METRIC_COLUMNS):
        self.path, self.columns = run_dir / "metrics.csv", columns
        self.rows: list[dict[str, str]] = []
        if keep_up_to is not None and self.path.exists():
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= keep_up_to]
            self._write()

    def epoch_end(self, end: EpochEnd) -> None:
        self.rows.append(format_row(end.row, self.columns))
        self._write()

    def _write(self) -> None:
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=self.columns)
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, table.getvalue())

    def close(self) -> None:
        pass


class HistoryPlot:
    """history.png: redrawn at most every ``interval`` seconds (a plot costs ~0.5 s), and at the end."""

    interval = 10.0

    def __init__(self, run_dir: Path, metrics: MetricsCSV):
        self.path, self.metrics = run_dir / "history.png", metrics
        self._drawn_at = -math.inf
        self.best_epoch: int | None = None  # the epoch best.pt holds, marked on the plot

    def epoch_end(self, end: EpochEnd) -> None:
        self.best_epoch = end.best_epoch
        if time.monotonic() - self._drawn_at >= self.interval:
            self._draw()

    def _draw(self) -> None:
        if not self.metrics.rows:
            return
        self._drawn_at = time.monotonic()
        try:
            plot_history(self.metrics.rows, self.path, self.best_epoch)
        except Exception as exc:  # a plot must never end a training run, unless the disk is full
            if is_disk_full(exc):
                raise  # the checkpoints cannot be written either: the run ends in one line
            console.warn(f"could not draw history.png: {exc}")

    def close(self) -> None:
        self._draw()


class EpochLine:
    """The console's line per epoch."""

    def __init__(self, epochs: int, monitor: str):
        self.epochs, self.monitor = epochs, monitor

    def epoch_end(self, end: EpochEnd) -> None:
        row = end.row
        console.log(
            f"epoch {row['epoch']:>3}/{self.epochs}  train loss {row['train_loss']:.4f} acc "
            f"{100 * row['train_acc']:5.1f}%  val loss {row['val_loss']:.4f} acc "
            f"{100 * row['val_acc']:5.1f}%  lr {row['lr']:.2g}  {row['images_per_s']:.0f} img/s  "
            f"data wait {100 * row['data_wait']:.0f}%  {row['seconds']:.1f}s  "
            f"best {self.monitor} {end.best_text}"
            + (
                f"  mAP {100 * row['val_map']:.1f}%  F1 micro {100 * row['val_f1_micro']:.1f}% "
                f"macro {100 * row['val_f1_macro']:.1f}%"
                if row.get("val_map") is not None
                else ""
            )
        )

    def close(self) -> None:
        pass


class TensorBoard:
    """Scalars (loss, accuracy, learning rates, speed) and the validation confusion matrix per
    epoch, in ``<run>/tensorboard``: ``tensorboard --logdir runs``."""

    def __init__(self, run_dir: Path, classes: list[str], first_epoch: int):
        # lazy: tensorboard is an optional extra, checked by require_tensorboard before training starts
        from torch.utils.tensorboard import SummaryWriter

        self.classes = classes
        # a resumed run drops whatever an interrupted attempt logged after its checkpoint
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=first_epoch)

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


def require_tensorboard(loggers: list[str]) -> None:
    """Refuse ``tensorboard`` in train.loggers up front when its package is missing."""
    if "tensorboard" not in loggers:
        return
    try:
        import tensorboard  # noqa: F401  # lazy: an optional extra; torch.utils.tensorboard needs it
    except ImportError:
        raise ConfigError(
            "train.loggers: tensorboard needs the tensorboard package; "
            "pip install 'cnnzoo[tensorboard]' (or remove it from the list)"
        ) from None


def make_callbacks(
    t: TrainConfig,
    run_dir: Path,
    classes: list[str],
    *,
    checkpoints: Checkpoints,
    resumed_at: int | None,
    monitor: str,
    multi_label: bool = False,
) -> list[Callback]:
    """The callbacks of a run, in order. metrics.csv comes before the checkpoints: Ctrl-C between
    the two leaves a row that last.pt does not hold yet, which a resume drops and redoes; the
    other order would leave last.pt ahead of metrics.csv, and the resumed run without that row.

    metrics.csv is always kept (resuming and plots read it); ``train.loggers`` adds TensorBoard
    and MLflow (:mod:`~cnnzoo.training.tracking`).
    """
    metrics = MetricsCSV(
        run_dir, resumed_at, columns=METRIC_COLUMNS + MULTI_LABEL_COLUMNS if multi_label else METRIC_COLUMNS
    )
    out: list[Callback] = [metrics, checkpoints, HistoryPlot(run_dir, metrics), EpochLine(t.epochs, monitor)]
    if "tensorboard" in t.loggers:
        out.append(TensorBoard(run_dir, classes, (resumed_at or 0) + 1))
    if "mlflow" in t.loggers:  # last: it uploads history.png once HistoryPlot has drawn it for the last time
        out.append(MLflowLogger(run_dir, t, classes, resumed=resumed_at is not None))
    return out
