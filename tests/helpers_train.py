"""Helpers shared by test_data.py and test_train.py (plain functions, no fixtures).

Nothing here mocks cnnzoo: these write real files in the formats cnnzoo reads and read
back the files a training run writes.
"""

from __future__ import annotations

import csv
import os
import struct
from pathlib import Path

import numpy as np

TIMING = ("seconds", "images_per_s", "data_wait")
HEADER = (
    "epoch,lr,train_loss,train_acc,val_loss,val_acc,seconds,images_per_s,data_wait,stage,trainable_params,backbone_lr"
)


def metric_rows(run_dir: Path, timing: bool = False) -> list[dict[str, str]]:
    """metrics.csv as a list of dicts; without the timing columns unless ``timing``."""
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if timing:
        return rows
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX ("SN3 Pascal Vincent") format MNIST ships in.

    Magic: two zero bytes, the type code (0x08 = unsigned byte), the number of
    dimensions; then each dimension as a big-endian int32; then the raw bytes.
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist_raw(
    root: Path, folder: str = "MNIST", n_train: int = 40, n_test: int = 10, seed: int = 0
) -> dict[str, np.ndarray]:
    """torchvision's on-disk layout ``<root>/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.

    Images are 28x28 uint8; labels cycle through 0..9 so that every class appears.
    """
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out[f"{prefix}_images"], out[f"{prefix}_labels"] = images, labels
    return out


def files_under(folder: Path) -> list[str]:
    """Every file below ``folder`` (relative paths, sorted), hidden ones included."""
    folder = Path(folder)
    found = []
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            found.append(os.path.relpath(os.path.join(dirpath, name), folder))
    return sorted(found)


def tiny_layers(outputs: object | None = "num_classes", dropout: float = 0.0) -> list:
    """The tiny network of conftest.tiny_config with a chosen head width (and optional dropout,
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
