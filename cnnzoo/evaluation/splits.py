"""The labelled images ``evaluate`` scores, and what a model answered on them (torch-free).

A ``--data`` folder is a data root with split folders (``test/`` first, then ``validation/`` or
``val/``; ``--split`` picks one) or itself a folder of class folders, whose classes must be the
model's; without ``--data`` a checkpoint's own config names the data, split as training split it.

Imports data.sources (torch-free for folders), config, console, errors; NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config
from ..console import console
from ..data import hf, manifest, shard_files, sources
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


def check_split(split: str | None) -> None:
    if split not in (None, *SPLITS):
        raise UserError(f"--split {split}: use test or validation")


def split_from_folder(folder: Path, split: str | None, classes: list[str]) -> sources.Samples:
    """``folder`` is a data root with split folders, or itself a folder of class folders."""
    if not folder.is_dir():
        raise DataError(f"--data: folder not found: {folder}")
    wanted = [split] if split else ["test", "validation"]
    for name in wanted:
        for candidate in sources.SPLIT_FOLDERS[name]:
            if (folder / candidate).is_dir():
                folder = folder / candidate
                break
        else:
            continue
        break
    else:
        if split and any((folder / n).is_dir() for names in sources.SPLIT_FOLDERS.values() for n in names):
            raise DataError(f"--data {folder}: has no {split}/ split")
    present = [p.name for p in sources.class_dirs(folder)] if folder.is_dir() else []
    missing = [c for c in classes if c not in present]
    extra = [c for c in present if c not in classes]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing class folder{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        if extra:
            parts.append(f"class folder{'s' if len(extra) > 1 else ''} {', '.join(extra)} unknown to the model")
        raise DataError(f"--data {folder}: {'; '.join(parts)}; the model's classes are {', '.join(classes)}")
    samples, _, skipped = sources.scan_folder(folder, split or folder.name, classes)
    if skipped:
        console.warn(f"skipped {skipped} files that are not images under {folder}")
    return samples


def samples_for(
    cfg: Config, classes: list[str], *, data: str | Path | None, split: str | None, multi_label: bool = False
) -> tuple[sources.Samples, str]:
    """The images to score and where they come from: ``data``'s, or the split training built from
    ``cfg`` (a checkpoint's config)."""
    if data is not None and manifest.is_manifest(data):
        return sources.manifest_split(cfg, Path(data), split, classes, multi_label=multi_label), str(Path(data))
    if data is not None and multi_label:
        raise DataError(
            f"--data {data}: a multi-label model is scored on a manifest (a CSV with space-separated tags, "
            f"or 0/1 columns), not a folder of class folders"
        )
    if data is not None and hf.is_hf_dataset(str(data)):
        return sources.hf_split(cfg, str(data), split, classes), str(data)
    if data is not None and shard_files.is_shards(str(data)):
        from ..data import shards  # lazy: a shard stream is torch's (a checkpoint's path only)

        return shards.shard_split(str(data), split, classes), str(data)
    if data is not None:
        return split_from_folder(Path(data), split, classes), str(Path(data))
    try:
        with console.scoped(True):  # the data's own lines are training's, not this report's
            spec = sources.load_data(cfg)
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
