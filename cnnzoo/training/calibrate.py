"""After training: a temperature fitted on the validation split, so the probabilities mean what they say.

Temperature scaling (Guo et al., 2017) divides the logits by one number T, fitted to minimise the
negative log-likelihood of the validation labels: T > 1 softens an over-confident model, T < 1
sharpens a timid one. The ranking of the classes, and so every prediction and accuracy, stays as
it was. A multi-label model gets one T per class, each fitted on that class's sigmoid likelihood
(a class with no positive or no negative validation image keeps T = 1: its likelihood only falls
as T shrinks, towards probabilities of exactly 0 or 1). Its thresholds stay as training chose
them; the torch-free :class:`~cnnzoo.inference.classifier.Classifier` moves them to where the
calibrated sigmoids cross them, so the labels a model lists do not change.

The fit is a golden-section search on log T (the likelihood is convex in 1/T, so it has one
minimum), in NumPy. :func:`calibrate_run` is the step :func:`cnnzoo.training.run.train` takes once
``fit`` returns (rank 0 only): it scores best.pt on the validation split through ``evaluate``'s
own checkpoint path (:func:`validation_pass`, which other after-training fits can reuse), fits T,
and writes ``meta.calibration`` into best.pt (and last.pt when that holds the same weights),
atomically. Every format then reads it from the meta or metadata it carries.

Imports evaluation (the validation pass, the calibration error), checkpoint, console; NumPy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint as ckpt_io
from ..console import console
from ..errors import UserError
from ..evaluation.analysis import calibration_error
from ..evaluation.checkpoints import score_checkpoint
from ..evaluation.splits import Scored
from ..inference.classifier import probabilities

BOUNDS = (0.05, 20.0)  # the temperatures searched: past these a model is broken, not miscalibrated
STEPS = 60  # golden-section steps: the bracket shrinks 0.618x each, to ~1e-12 of its width
_GOLDEN = (math.sqrt(5) - 1) / 2


def _nll(logits: np.ndarray, labels: np.ndarray, inverse: np.ndarray, *, multi_label: bool) -> np.ndarray:
    """Mean negative log-likelihood of ``labels`` under ``logits * inverse`` (inverse = 1/T): for a
    multi-label model one value per class, [K] (``inverse`` [K]); else one value, [1]."""
    z = logits * inverse
    if multi_label or z.shape[1] == 1:  # sigmoid: binary cross-entropy with logits, per column
        y = labels if multi_label else labels.reshape(-1, 1)
        per_column = (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))).mean(axis=0)
        return per_column if multi_label else per_column[:1]
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return np.asarray([(log_norm - z[np.arange(len(z)), labels]).mean()])


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, multi_label: bool = False) -> float | list[float]:
    """The temperature that minimises the validation NLL: one number, or for a multi-label model
    (multi-hot ``labels`` [N, K]) one per class. ``logits`` [N, outputs] are the raw network's."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64 if multi_label else np.int64)
    width = z.shape[1] if multi_label else 1
    low, high = np.full(width, math.log(BOUNDS[0])), np.full(width, math.log(BOUNDS[1]))

    def loss(log_t: np.ndarray) -> np.ndarray:
        return _nll(z, y, np.exp(-log_t), multi_label=multi_label)

    for _ in range(STEPS):  # keep the side of the lower value; every class steps at once
        a, b = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
        left = loss(a) < loss(b)
        low, high = np.where(left, low, a), np.where(left, b, high)
    t = np.exp((low + high) / 2)
    if not multi_label:
        return float(t[0])
    seen_both = (y.max(axis=0) > 0.5) & (y.min(axis=0) < 0.5)  # a class without both: its NLL falls as T -> 0
    return [float(v) if both else 1.0 for v, both in zip(t, seen_both)]


def validation_pass(checkpoint: str | Path, *, device: str | None = None, test_crop: float | None = None) -> Scored:
    """A checkpoint's raw logits on the validation split training held out (rebuilt from its
    config as ``evaluate`` rebuilds it, read and run as ``evaluate`` runs a checkpoint, with its
    stored test-time crop or ``test_crop``), with the labels: what the after-training fits are fitted on."""
    with console.scoped(True):  # the data's and the loader's lines are training's, said already
        return score_checkpoint(
            Path(checkpoint),
            None,
            split="validation",
            batch_size=None,
            device=device,
            progress=False,
            test_crop=test_crop,
        )


def calibration_record(scored: Scored, temperature: float | list[float]) -> dict[str, Any]:
    """``meta.calibration``: the method, T, and the validation's calibration error with and without it."""
    multi = scored.thresholds is not None
    raw = probabilities(scored.logits, multi_label=multi)
    calibrated = probabilities(scored.logits, multi_label=multi, temperature=np.asarray(temperature))
    return {
        "method": "temperature",
        "temperature": temperature,
        "ece": calibration_error(calibrated, scored.labels),
        "ece_uncalibrated": calibration_error(raw, scored.labels),
        "images": len(scored.labels),
    }


def store_meta(path: Path, entries: dict[str, Any], *, epoch: Any = None) -> bool:
    """Write ``entries`` into ``path``'s ``meta`` (atomically); given ``epoch``, only when ``path``
    holds that epoch's weights as they are (a last.pt with train.ema keeps the raw ones). The
    after-training fits' one way to write what they fitted."""
    ckpt = ckpt_io.load_checkpoint(path)
    ckpt.pop("path", None)  # added by the loader, not part of the file
    if epoch is not None and (ckpt.get("epoch") != epoch or "ema" in ckpt):
        return False
    ckpt["meta"] = {**ckpt["meta"], **entries}
    ckpt_io.save_atomic(ckpt, path)
    return True


def calibrate_run(run_dir: str | Path, method: str, *, device: str | None = None) -> dict[str, Any] | None:
    """``train.calibrate``'s step after training: fit T on the validation split with best.pt, store it
    in best.pt (and last.pt when it holds the same weights) and say so; returns ``meta.calibration``,
    or None when there is nothing to do (``none``, no best.pt, no validation images)."""
    best = Path(run_dir) / "best.pt"
    if method == "none" or not best.is_file():
        return None
    try:
        scored = validation_pass(best, device=device)
    except UserError as exc:  # a diverged run's NaN weights: the run stands, its best.pt is not calibrated
        console.warn(f"calibration: not fitted: {exc}")
        return None
    if len(scored.labels) == 0:
        console.log("calibration: skipped: the validation split has no images to fit a temperature on")
        return None
    record = calibration_record(scored, fit_temperature(scored.logits, scored.labels, multi_label=_multi(scored)))
    epoch, last = ckpt_io.load_checkpoint(best).get("epoch"), Path(run_dir) / "last.pt"
    try:  # each file is replaced whole or left as it was (a full disk included)
        store_meta(best, {"calibration": record})
        also = " and last.pt" if last.is_file() and store_meta(last, {"calibration": record}, epoch=epoch) else ""
    except OSError as exc:
        console.warn(f"calibration: not stored in {best.parent} ({exc.strerror or exc}); best.pt keeps the raw softmax")
        return None
    t = record["temperature"]
    said = f"temperature {t:.3f}" if isinstance(t, float) else f"temperatures {min(t):.3f}-{max(t):.3f} (one per class)"
    console.log(
        f"calibration: {said} fitted on {record['images']} validation images; expected calibration error "
        f"{100 * record['ece_uncalibrated']:.2f}% -> {100 * record['ece']:.2f}% (stored in best.pt{also})"
    )
    return record


def _multi(scored: Scored) -> bool:
    return scored.thresholds is not None
