"""Training for real, small: the tiny config and network, a trained run in its own folder, and what
a run folder holds (metrics.csv rows, its files)."""

from __future__ import annotations

import csv
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cnnzoo.training.run import train

from .cli import CONFIGS, run_cnnzoo
from .images import make_image_tree

TIMING = ("seconds", "images_per_s", "data_wait", "teacher_seconds")
HEADER = (
    "epoch,lr,train_loss,train_acc,val_loss,val_acc,seconds,images_per_s,data_wait,stage,trainable_params,backbone_lr"
)


def tiny_layers(outputs: object | None = "num_classes", dropout: float = 0.0) -> list:
    """The tiny network of :func:`tiny_config` with a chosen head width (and optional dropout,
    which draws from the global torch RNG: the test that a resumed run draws what the
    uninterrupted one drew, since every epoch reseeds from (seed, epoch))."""
    head = [{"dropout": {"p": dropout}}] if dropout else []
    return [
        {"conv": {"out_channels": 4, "kernel_size": 3, "padding": 1}},
        "relu",
        "pool",
        "flatten",
        *head,
        {"dense": {"out_features": outputs}},
    ]


def tiny_config(root: Path, **train: Any) -> dict:
    """A small CNN that trains in about a second on the ``image_root`` fixture's images."""
    return {
        "name": "tiny",
        "seed": 0,
        "data": {"root": str(root), "image_size": 16, "cache": "ram", "workers": 0},
        "model": {"layers": tiny_layers()},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, **train},
    }


@dataclass
class TrainedRun:
    base: Path  # holds runs/ (so cwd=base makes runs/latest the default checkpoint)
    root: Path  # the data the model was trained on
    run_dir: Path

    @property
    def best(self) -> Path:
        return self.run_dir / "best.pt"


def train_run(
    base: Path, make_data: Callable[[Path], Path], edit: Callable[[dict], None] | None = None, **train_settings: Any
) -> TrainedRun:
    """Write data with ``make_data(base)``, then train :func:`tiny_config` on it into ``base/runs``,
    with CNNZOO_HOME in ``base`` (a module-scoped fixture runs before the per-test home exists)."""
    root = make_data(base)
    cfg = tiny_config(root, **train_settings)
    if edit is not None:
        edit(cfg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNZOO_HOME", str(base / "home"))
        run_dir = train(cfg, out=base / "runs", quiet=True)
    return TrainedRun(base, root, Path(run_dir))


@dataclass
class QuickstartRun:
    base: Path  # the folder the command ran in: base/runs/latest is the run
    home: Path  # its CNNZOO_HOME, where the shapes data set was generated
    stdout: str  # what `cnnzoo train` printed

    @property
    def run_dir(self) -> Path:
        return self.base / "runs" / "latest"


def train_quickstart(base: Path) -> QuickstartRun:
    """``cnnzoo train --config configs/quickstart.yaml`` in ``base``, a real subprocess as the README
    runs it, with CNNZOO_HOME in ``base/home``; it must succeed."""
    home = base / "home"
    # timeout: a hang guard only (20 epochs take under a minute on 2 quiet cores, many more beside other jobs)
    trained = run_cnnzoo(["train", "--config", CONFIGS / "quickstart.yaml"], base, timeout=2400, CNNZOO_HOME=str(home))
    assert trained.returncode == 0, trained.stderr[-2000:]
    return QuickstartRun(base, home, trained.stdout)


def metric_rows(run_dir: Path, timing: bool = False) -> list[dict[str, str]]:
    """metrics.csv as a list of dicts; without the timing columns unless ``timing``."""
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if timing:
        return rows
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def files_under(folder: Path) -> list[str]:
    """Every file below ``folder`` (relative paths, sorted), hidden ones included."""
    found = []
    for dirpath, _, filenames in os.walk(folder):
        found += [os.path.relpath(os.path.join(dirpath, name), folder) for name in filenames]
    return sorted(found)


@contextmanager
def ctrl_c_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt inside the block, as Ctrl-C does in a terminal: a shell that
    starts jobs in the background (as CI may) hands them SIGINT ignored, and Python then never
    raises it, so a test of Ctrl-C would see nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def trained_batchnorm_cnn(base: Path, *, train_per_class: int, validation_per_class: int) -> TrainedRun:
    """A BatchNorm CNN trained on three classes of JPEGs (``a``, ``b``, ``c``): the model the export
    tests (ONNX, INT8, TFLite) convert, a BatchNorm layer among what they must carry over."""

    def jpeg_tree(folder: Path) -> Path:
        per_split = {"train": train_per_class, "validation": validation_per_class}
        counts = {split: dict.fromkeys("abc", n) for split, n in per_split.items()}
        return make_image_tree(folder / "images", **counts, ext="jpg")

    def with_batchnorm(cfg: dict) -> None:
        cfg["model"]["layers"].insert(1, "batchnorm")

    return train_run(base, jpeg_tree, with_batchnorm)
