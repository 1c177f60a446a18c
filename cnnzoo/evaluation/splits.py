"""The labelled images ``evaluate`` scores, and what a model answered on them (torch-free).

``--data`` is read as the kind of source it holds (:func:`cnnzoo.data.sources.split_to_score`:
a folder with split folders or of class folders, a manifest, a Hugging Face dataset, shards), whose
classes must be the model's; without ``--data`` a checkpoint's own config names the data, and an
export's ``meta.data`` (the same settings), split as training split it. ``--data`` that is the
training data itself (a manifest with the digest the model kept, or the same folder) is split the
same way; a manifest that holds training images otherwise is scored with a warning that counts them.

Imports data.sources and data.manifest (torch-free), config, console, errors; NumPy.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config
from ..console import console
from ..data import manifest, preprocess, sources
from ..errors import DataError, UserError
from ..files import is_url

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
    temperature: float | np.ndarray | None = None  # the model's calibration (meta.calibration); None: none


def check_split(split: str | None) -> None:
    if split not in (None, *SPLITS):
        raise UserError(f"--split {split}: use test or validation")


def trained_rule(meta: dict, cfg: Config | None = None) -> dict:
    """What a model says about the data it trained on (``meta.data``: the source, root, seed, split
    keys and a manifest's digest); a model from before issue 30 names only its root (a checkpoint's
    config, an export's ``data_root``)."""
    rule = dict(meta.get("data") or {})
    if rule or cfg is None:
        return rule or ({"root": meta["data_root"]} if meta.get("data_root") else {})
    return {"root": cfg.data.root, "seed": cfg.seed} if cfg.data.root else {}  # the config holds the split


def is_training_data(data: str | Path, rule: dict) -> bool:
    """Whether ``--data`` names the data the model trained on: a manifest whose bytes have the digest
    the model kept (wherever it is now), or, without a digest, the same path. A rule without a seed
    (an export from before issue 30) cannot split it again: it cannot tell."""
    path = Path(data)
    if "seed" not in rule:
        return False
    if is_url(str(data)):  # a store's object: the same URL (its bytes are not fetched to compare)
        return str(data) == rule.get("root")
    if rule.get("digest"):
        found = path if path.is_file() else manifest.folder_manifest(path) if path.is_dir() else None
        return found is not None and manifest.file_digest(found) == rule["digest"]
    root = rule.get("root")
    return bool(root) and path.exists() and path.resolve() == Path(root).resolve()


def _at(cfg: Config, root: str | Path) -> Config:
    moved = copy.deepcopy(cfg)  # a copy: the model's config is not written to
    moved.data.root = str(root)
    return moved


def samples_for(
    cfg: Config,
    classes: list[str],
    *,
    data: str | Path | None,
    split: str | None,
    multi_label: bool = False,
    rule: dict | None = None,
) -> tuple[sources.Samples, str]:
    """The images to score and where they come from: ``data``'s, or the split training built from
    ``cfg`` (a checkpoint's config, or one an export's ``rule`` gives). ``data`` that is the data the
    model trained on (``rule``: :func:`trained_rule`) is split as training split it."""
    if data is not None and rule and is_training_data(data, rule):
        console.log(
            f"data: {data} is the data this model trained on; scoring the split training held out from it "
            f"(seed {cfg.seed}, data.val_fraction {cfg.data.val_fraction:g} where it has no split of its own)"
        )
        cfg, data = _at(cfg, data), None
    if data is not None:
        samples, where = sources.split_to_score(cfg, str(data), split, classes, multi_label=multi_label)
        _warn_trained_rows(samples, where, cfg, rule or {})
        return samples, where
    try:
        with console.scoped(True):  # the data's own lines are training's, not this report's
            spec = sources.load_data(cfg, task=cfg.train.task)
    except DataError as exc:
        raise DataError(f"{exc} (the data this model was trained on); pass --data to evaluate on other data") from None
    if split == "test" and spec.test is None:
        raise DataError(f"{spec.root}: has no test split; use --split validation or --data")
    name = "test" if (split == "test" or (split is None and spec.test is not None)) else "validation"
    where = spec.root or cfg.data.source
    if where and manifest.is_manifest(where):  # a split from its own file (test.csv) is named as that file
        where = str(manifest.split_files(Path(where)).get(name, where))
    return (spec.test if name == "test" else spec.val), where


def _warn_trained_rows(samples: sources.Samples, where: str, cfg: Config, rule: dict) -> None:
    """Warn when images of ``samples`` were in the model's training split: found by rebuilding that
    split from the training manifest, when it is still there with the digest the model kept."""
    root, files = rule.get("root"), samples.files()
    if not (files and root and rule.get("digest") and Path(root).is_file()):
        return
    try:
        if manifest.file_digest(root) != rule["digest"]:
            return  # changed since: its split is not the one trained on, and cannot be told
        with console.scoped(True):
            trained = {
                os.path.realpath(p) for p in sources.load_data(_at(cfg, root), task=cfg.train.task).train.files()
            }
    except (OSError, UserError):
        return  # the training data cannot be read again: nothing to compare with
    overlap = sum(os.path.realpath(p) in trained for p in files)
    if overlap:
        console.warn(
            f"{overlap} of {len(files)} images in {where} were in this model's training split, so these "
            f"scores overstate it; evaluate without --data (or on the training manifest) scores the held-out split"
        )


def export_config(path: str | Path, meta: dict) -> Config:
    """The config an export's data is read with: its ``meta.data`` (the columns, the split), its input
    size; an export from before issue 30 names only a data root, read with the defaults."""
    rule = trained_rule(meta)
    cfg = sources.rule_config(rule, image_size=list(meta["image_size"]), channels=int(meta["channels"]))
    cfg.train.task = meta.get("task", "single")
    return cfg


def export_data(model_path: str | Path, meta: dict) -> tuple[str | None, dict]:
    """What an export is scored on without ``--data``: None (its ``meta.data`` rebuilds the split
    training held out, as a checkpoint's config does), or for an export from before issue 30, the
    data root its metadata names when that holds split folders; it carried no split rule."""
    rule = trained_rule(meta)
    if "seed" in rule:
        return None, rule
    root = Path(rule["root"]) if rule.get("root") else None
    if root is not None and any((root / n).is_dir() for names in sources.SPLIT_FOLDERS.values() for n in names):
        return str(root), {}
    where = f"its training data {root} has no test/ or validation/ split" if root else "it names no data"
    raise DataError(
        f"{model_path}: {where} (an export from before cnnzoo kept its split); pass --data "
        f"(a labelled folder or manifest, shards or a Hugging Face folder)"
    )
