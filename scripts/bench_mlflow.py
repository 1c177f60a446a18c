#!/usr/bin/env python
"""What ``train.loggers: [csv, mlflow]`` adds to a run: the MLflow logger replayed on a finished run.

    python scripts/bench_mlflow.py [--run runs/latest] [--repeat 3]

In one invocation: the epochs of the run's metrics.csv handed, as training hands them, to
metrics.csv's own writer (the baseline) and to the MLflow logger, in a copy of the run folder with a
new SQLite store (cnnzoo's default): the logger's start (run, parameters), its time per epoch
against metrics.csv's, and its close (config.yaml, history.png, the confusion matrix and best.pt
uploaded); medians over --repeat rounds, after a first round that creates the store's tables (once
per store), reported apart.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _ends(run: Path, classes: int) -> list:
    import torch

    from cnnzoo.training.events import METRIC_COLUMNS, EpochEnd

    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    typed = [{k: (float(r[k]) if r[k] != "" else None) for k in METRIC_COLUMNS} for r in rows]
    confusion = torch.eye(classes, dtype=torch.int64)
    return [EpochEnd(epoch=int(r["epoch"]), row=r, improved=True, best_text="", confusion=confusion) for r in typed]


def _round(run: Path, copy: Path, classes: list[str]) -> dict[str, float]:
    from cnnzoo.config import load_config
    from cnnzoo.training.callbacks import MetricsCSV
    from cnnzoo.training.events import RunStart
    from cnnzoo.training.tracking import MLflowLogger

    shutil.copytree(run, copy)
    (copy / "mlflow.json").unlink(missing_ok=True)
    ends = _ends(copy, len(classes))
    start = time.perf_counter()
    metrics = MetricsCSV(copy)
    for end in ends:
        metrics.epoch_end(end)
    csv_time = (time.perf_counter() - start) / len(ends)
    start = time.perf_counter()
    logger = MLflowLogger.open(RunStart(run_dir=copy, classes=classes), load_config(str(copy / "config.yaml")).train)
    opened = time.perf_counter() - start
    start = time.perf_counter()
    for end in ends:
        logger.epoch_end(end)
    per_epoch = (time.perf_counter() - start) / len(ends)
    start = time.perf_counter()
    logger.close()
    assert not logger.failed, "the MLflow logger failed; see the warning above"
    return {"start": opened, "epoch": per_epoch, "csv": csv_time, "close": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/latest", help="a finished run folder (default: runs/latest)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import os

    from cnnzoo.checkpoint import load_checkpoint

    run = Path(args.run).resolve()
    classes = list(load_checkpoint(run / "best.pt")["meta"]["classes"])
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # cnnzoo's default store, in the scratch folder
    with tempfile.TemporaryDirectory() as scratch:  # one store: the first round creates its tables
        rounds = [
            _round(run, Path(scratch) / "runs" / run.parent.name / str(i), classes) for i in range(args.repeat + 1)
        ]
    first, rounds = rounds[0], rounds[1:]
    median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    size = (run / "best.pt").stat().st_size
    print(f"run {run}: {len(_ends(run, len(classes)))} epochs, best.pt {size / 1e6:.1f} MB; medians of {args.repeat}")
    print(f"start (run, parameters): {median['start']:.2f} s; in a new store (tables made): {first['start']:.2f} s")
    print(
        f"per epoch: mlflow {1000 * median['epoch']:.1f} ms, metrics.csv {1000 * median['csv']:.1f} ms "
        f"({median['epoch'] / median['csv']:.1f}x)"
    )
    print(f"close (four files uploaded): {median['close']:.2f} s")


if __name__ == "__main__":
    main()
