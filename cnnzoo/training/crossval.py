"""k-fold cross-validation (``train --folds K``): one run per fold, the spread of their scores, every
image's out-of-fold probabilities, and a final model trained on all the labelled images.

The folds are :mod:`cnnzoo.data.sources.fold_split`'s (``data.folds`` and ``data.fold``, which each
fold's run records in its config and its model's ``meta.data``, so ``evaluate RUN/fold-2/best.pt``
scores fold 2's held-out images). The runs share one pool of decoded images, and for a transfer
config one frozen-feature cache (:func:`cnnzoo.data.cache.kept_between_runs`), so K folds cost far
less than K runs. A run folder ``RUN`` (``<runs>/<name>/<N>``) holds:

- ``fold-1`` .. ``fold-K``: a normal run folder each, its fold held out as the validation split;
- ``cv.json``: each validation metric's mean, standard deviation (n - 1) and per-fold values, of
  each fold's best epoch;
- ``oof.csv``: ``image,label,fold`` and one probability column per class, every image once,
  predicted by the fold's ``best.pt`` that did not train on it;
- the final model (``best.pt``, ``runs/latest``), trained on every labelled image (``data.fold:
  all``; its validation figures are then on images it trained on), unless ``final`` is off.

It trains through a callable the caller hands over (:func:`cnnzoo.training.run.train`'s one run),
so it does not import the run module. Imports config, console, errors, files, runs, runtime, the
data sources and cache, and evaluation's checkpoint scoring.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint as ckpt_io
from .. import runs
from ..config import Config, load_config
from ..config.checks import is_number
from ..console import console
from ..data import sources
from ..data.cache import kept_between_runs
from ..data.sources import fold_split
from ..errors import UserError
from ..evaluation.checkpoints import score_checkpoint
from ..files import write_text

OneRun = Callable[..., Path]  # (config, overrides, run_dir=...) -> the run folder


def refuse_folds_with(*, resume: Any, distributed: bool) -> None:
    """The options ``--folds`` does not compose with, refused in one line before anything loads."""
    if resume is not None:
        raise UserError(
            "--folds: a k-fold run cannot be resumed from one last.pt; resume a fold's own run "
            "(cnnzoo train --resume RUN/fold-N/last.pt) or start the k-fold run again"
        )
    if distributed:
        raise UserError(
            "--folds: k-fold trains one process at a time; drop --nproc/torchrun, or train each fold under "
            "torchrun with --set data.folds=K --set data.fold=N"
        )


def _fold_pool(cfg: Config, k: int) -> tuple[sources.Samples, np.ndarray, list[str], bool]:
    """The pooled labelled images, each one's fold, the classes and whether the task is multi-label
    (no image decoded; K refused in one line, naming ``--folds``)."""
    if cfg.data.folds is not None:
        raise UserError(
            f"--folds {k}: the config already picks fold {cfg.data.fold} of {cfg.data.folds} (data.folds, "
            f"data.fold); give --folds or those keys, not both"
        )
    with console.scoped(True):
        found = sources.source_for(cfg, task=cfg.train.task).splits(None)
    multi = cfg.train.task == "multi" or bool(found.kind.get("multi_label"))
    pool, folds = fold_split.pool_folds(found, k=k, seed=cfg.seed, multi_label=multi, option="--folds")
    return pool, folds, found.classes, multi


def cross_validate(
    config: Any, overrides: list[str], *, k: int, out: str | Path, final: bool = True, one_run: OneRun
) -> Path:
    """Train K folds and (unless ``final`` is off) the final model; return the k-fold run folder."""
    cfg = load_config(config, overrides)
    pool, folds, classes, multi = _fold_pool(cfg, k)
    run_dir = runs.next_run_dir(Path(out), cfg.run_name)
    console.log(f"k-fold: {k} folds of {len(pool)} labelled images (stratified, seed {cfg.seed}); run folder {run_dir}")
    rows: list[dict[str, Any]] = []
    probabilities = np.zeros((len(pool), len(classes)), dtype=np.float64)
    scored = np.zeros(len(pool), dtype=bool)
    with kept_between_runs():
        for fold in range(1, k + 1):
            fold_dir = run_dir / f"fold-{fold}"
            fold_dir.mkdir()
            console.log(f"k-fold: fold {fold} of {k} ({int((folds == fold - 1).sum())} images held out)")
            one_run(config, [*overrides, f"data.folds={k}", f"data.fold={fold}"], run_dir=fold_dir)
            rows.append(_best_row(fold_dir / "best.pt"))
            held = np.flatnonzero(folds == fold - 1)
            at, probs = _held_out_probabilities(fold_dir / "best.pt", multi=multi)
            probabilities[held[at]], scored[held[at]] = probs, True
        summary = summarize(rows, k=k, seed=cfg.seed, images=len(pool))
        write_text(run_dir / "cv.json", json.dumps(summary, indent=2) + "\n")
        write_text(run_dir / "oof.csv", oof_csv(pool, folds, probabilities, scored, classes=classes))
        console.log(summary_table(summary))
        console.log(f"k-fold: {run_dir / 'cv.json'}, {run_dir / 'oof.csv'} (out-of-fold probabilities)")
        if final:
            console.log(
                f"k-fold: the final model trains on all {len(pool)} labelled images; its validation "
                f"figures are on images it trained on (cv.json holds the held-out estimate)"
            )
            one_run(config, [*overrides, f"data.folds={k}", "data.fold=all"], run_dir=run_dir)
    return run_dir


def _best_row(best: Path) -> dict[str, Any]:
    """The best epoch's metrics row a fold's ``best.pt`` keeps."""
    state = ckpt_io.load_checkpoint(best)
    return {"epoch": state.get("epoch"), **(state.get("metrics") or {})}


def _held_out_probabilities(best: Path, *, multi: bool) -> tuple[np.ndarray, np.ndarray]:
    """A fold's model's probabilities on its held-out images: which of them (positions in the
    fold's validation split, unreadable images left out) and the probabilities [n, classes]."""
    with console.scoped(True):
        scored = score_checkpoint(best, None, split="validation", batch_size=None, device=None, progress=False)
    logits = scored.logits.astype(np.float64)
    if multi:
        probs = 1.0 / (1.0 + np.exp(-logits))
    else:
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
    return np.asarray(scored.rows, dtype=np.int64), probs


def summarize(rows: list[dict[str, Any]], *, k: int, seed: int, images: int) -> dict[str, Any]:
    """cv.json: each validation metric's mean, standard deviation (n - 1) and per-fold values."""
    names = [key for key in rows[0] if key.startswith("val_") and all(is_number(r.get(key)) for r in rows)]
    metrics = {}
    for name in names:
        values = [float(r[name]) for r in rows]
        metrics[name] = {
            "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)),
            "per_fold": values,
        }
    return {
        "folds": k,
        "seed": seed,
        "images": images,
        "best_epoch": [r.get("epoch") for r in rows],
        "metrics": metrics,
        "runs": [f"fold-{i}" for i in range(1, k + 1)],
    }


def summary_table(summary: dict[str, Any]) -> str:
    """The cv.json table as text: one row per metric, mean +- std, then each fold's value."""
    k = summary["folds"]
    header = ["metric", "mean", "std", *(f"fold {i}" for i in range(1, k + 1))]
    body = [
        [name, f"{m['mean']:.4f}", f"{m['std']:.4f}", *(f"{v:.4f}" for v in m["per_fold"])]
        for name, m in summary["metrics"].items()
    ]
    widths = [max(len(row[c]) for row in [header, *body]) for c in range(len(header))]
    lines = [
        "  ".join(cell.rjust(w) if c else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths)))
        for row in [header, *body]
    ]
    return f"k-fold: {k} folds, best epoch of each\n" + "\n".join(lines)


def oof_csv(
    pool: sources.Samples, folds: np.ndarray, probabilities: np.ndarray, scored: np.ndarray, *, classes: list[str]
) -> str:
    """oof.csv: ``image,label,fold`` and one probability per class for every image (a multi-label
    image's labels space-separated; an image no fold could read has empty probabilities)."""
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image", "label", "fold", *classes])
    for i in range(len(pool)):
        labels = pool.label_sets[i] if pool.label_sets is not None else [pool.labels[i]]
        name = pool.describe(i)
        cells = [f"{p:.6f}" for p in probabilities[i]] if scored[i] else [""] * len(classes)
        writer.writerow([name, " ".join(classes[j] for j in labels), int(folds[i]) + 1, *cells])
    return text.getvalue()


def in_distributed_run() -> bool:
    """Whether this process was started by torchrun (or ``--nproc``) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
