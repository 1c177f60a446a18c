"""The labelled images ``evaluate`` scores, and what a model answered on them (torch-free).

``--data`` is read as the kind of source it holds (:func:`cnnzoo.data.sources.split_to_score`:
a folder with split folders or of class folders, a manifest, a Hugging Face dataset, shards), whose
classes must be the model's; without ``--data`` a checkpoint's own config names the data, split as
training split it.

Imports data.sources (torch-free for folders), config, console, errors; NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config
from ..console import console
from ..data import preprocess, sources
from ..errors import DataError, UserError

SPLITS = ("test", "validation")


@dataclass(kw_only=True)
class Scored:
    """What a model answered on a split: logits [N, outputs] for the readable images, their labels,
    which of ``samples`` each row is, and what the report says about the model."""

    logits: np.ndarray
    labels: np.ndarray
    rows: np.ndarray | None  # None for streamed shards, whose samples have no positions to go back to
    samples: sources.Samples
    where: str  # the data's folder (or source), as the report names it
    classes: list[str]
    channels: int
    about: dict  # the report's first keys: checkpoint and epoch, or model, format and epoch
    thresholds: list[float] | None = None  # a multi-label model's (labels are then multi-hot [N, classes])
    fit: preprocess.Fit = preprocess.SQUASH  # how the model's images are brought to its size


def check_split(split: str | None) -> None:
    if split not in (None, *SPLITS):
        raise UserError(f"--split {split}: use test or validation")


def samples_for(
    cfg: Config, classes: list[str], *, data: str | Path | None, split: str | None, multi_label: bool = False
) -> tuple[sources.Samples, str]:
    """The images to score and where they come from: ``data``'s, or the split training built from
    ``cfg`` (a checkpoint's config)."""
    if data is not None:
        return sources.split_to_score(cfg, str(data), split, classes, multi_label=multi_label)
    try:
        with console.scoped(True):  # the data's own lines are training's, not this report's
            spec = sources.load_data(cfg, task=cfg.train.task)
    except DataError as exc:
        raise DataError(
            f"{exc} (the data this checkpoint was trained on); pass --data DIR to evaluate on another folder"
        ) from None
    if split == "test" and spec.test is None:
        raise DataError(f"{spec.root}: has no test/ split; use --split validation or --data DIR")
    samples = spec.test if (split == "test" or (split is None and spec.test is not None)) else spec.val
    return samples, spec.root or cfg.data.source


def export_data(model_path: str | Path, data_root: str | None) -> str:
    """The folder an export is scored on without ``--data``: the data root its metadata names, when
    that still holds split folders. An export carries no config, so a single folder of class folders
    (training held out ``data.val_fraction`` of it, seeded) cannot be split again here."""
    root = Path(data_root) if data_root else None
    if root is not None and any((root / n).is_dir() for names in sources.SPLIT_FOLDERS.values() for n in names):
        return str(root)
    where = f"its training data {root} has no test/ or validation/ folder" if root else "it names no data"
    raise DataError(f"{model_path}: {where}; pass --data DIR (a labelled folder, or a root with test/ or validation/)")
