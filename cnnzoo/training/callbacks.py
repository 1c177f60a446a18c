"""What happens when an epoch ends: metrics.csv, checkpoints, history.png, the console line, and
the loggers ``train.loggers`` adds.

:func:`cnnzoo.training.run.fit` validates, then hands one
:class:`~cnnzoo.training.events.EpochEnd` to each callback in turn; :func:`make_callbacks` makes
the list a run asks for: the callbacks here, which every run has, then the loggers of
:data:`cnnzoo.training.loggers.LOGGERS` that ``train.loggers`` names. Only rank 0 of a
multi-process run has callbacks, so the run folder is written once.

Floor 7 (training): imports :mod:`cnnzoo.training.events` and :mod:`cnnzoo.training.loggers`.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import checkpoint as ckpt_io
from .. import runs
from ..config import TrainConfig
from ..console import console
from ..files import is_disk_full, write_text
from ..plots import plot_history
from .events import DISTILL_COLUMNS, METRIC_COLUMNS, MULTI_LABEL_COLUMNS, Callback, EpochEnd, RunStart
from .loggers import open_loggers

_TIMING_COLUMNS = ("seconds", "images_per_s", "data_wait", "lr", "backbone_lr")


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

    metrics.csv is always kept (resuming and plots read it); ``train.loggers`` adds the loggers
    it names (:mod:`~cnnzoo.training.loggers`), last.
    """
    columns = METRIC_COLUMNS + (MULTI_LABEL_COLUMNS if multi_label else []) + (DISTILL_COLUMNS if t.distill else [])
    metrics = MetricsCSV(run_dir, resumed_at, columns=columns)
    out: list[Callback] = [metrics, checkpoints, HistoryPlot(run_dir, metrics), EpochLine(t.epochs, monitor)]
    # last: a logger may upload history.png once HistoryPlot has drawn it for the last time
    return [*out, *open_loggers(RunStart(run_dir=run_dir, classes=classes, resumed_at=resumed_at), t)]
