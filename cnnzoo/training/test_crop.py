"""After training: the test-time centre crop that matches what random-resized-crop showed the network.

A network trained on random-resized crops (``data.augment.random_resized_crop: [0.6, 1.0]``) sees
each object larger than a plain resize of the whole image shows it: the crop keeps 60-100% of the
area and is scaled up to the model's size. At test time the whole image is then a view the
network never trained on, the train/test resolution discrepancy of FixRes (Touvron et al., 2019).
A centred crop of a share of each side, scaled to the same input size, shows objects at the
training scale again; it costs nothing at inference and every format applies it
(``meta.test_crop``, read by :class:`~cnnzoo.inference.classifier.Classifier` through
:class:`~cnnzoo.data.preprocess.Fit`).

:func:`choose_test_crop` is the step :func:`cnnzoo.training.run.train` takes once ``fit`` returns
(rank 0 only), before the temperature is fitted (which then sees the chosen view): it scores
best.pt on the validation split with each of :data:`CANDIDATES` through ``evaluate``'s own
checkpoint path, keeps the one with the best accuracy (:func:`choose`), and writes it into best.pt
(only: last.pt stays training's record). ``evaluate best.pt`` then scores the chosen view; the
``1.0`` entry of ``meta.test_crop_choice`` is the whole image's, training's ``val_acc``.

Imports evaluation (the validation pass's scores), console, the calibration step's
validation pass and meta writer; NumPy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..console import console
from ..errors import UserError
from ..evaluation import scores
from ..evaluation.splits import Scored
from ..inference.classifier import probabilities
from .calibrate import store_meta, validation_pass

CANDIDATES = (1.0, 0.95, 0.9, 0.875, 0.85, 0.8)  # the share of each side kept; 1.0: the whole image


def choose(accuracies: dict[float, float]) -> float:
    """The crop with the best validation accuracy; of equals, the largest (the whole image first):
    a crop is kept only when it answers more validation images right."""
    return max(accuracies, key=lambda crop: (accuracies[crop], crop))


def accuracy(scored: Scored) -> float:
    """The share of validation images answered right (a multi-label model: of its yes/no decisions
    at its thresholds)."""
    if scored.thresholds is None:
        return float((scores.predictions(scored.logits) == scored.labels).mean())
    yes = probabilities(scored.logits, multi_label=True) >= np.asarray(scored.thresholds)
    return float((yes == (scored.labels > 0.5)).mean())


def choose_test_crop(
    run_dir: str | Path, setting: str, *, trained_on_crops: bool, device: str | None = None
) -> dict[str, Any] | None:
    """``train.test_crop``'s step after training: try :data:`CANDIDATES` on the validation split
    with best.pt and store the chosen one as ``meta.test_crop`` (with ``meta.test_crop_choice``: each
    candidate's accuracy); returns what was stored, or None when there is nothing to do (``none``,
    no random-resized-crop in training, no best.pt, no validation images)."""
    best = Path(run_dir) / "best.pt"
    if setting == "none" or not trained_on_crops or not best.is_file():
        return None
    tried: dict[float, float] = {}
    for crop in CANDIDATES:
        try:
            scored = validation_pass(best, device=device, test_crop=crop)
        except UserError as exc:  # a diverged run's NaN weights: the run stands, best.pt reads whole images
            console.warn(f"test-time crop: not chosen: {exc}")
            return None
        if len(scored.labels) == 0:
            console.log("test-time crop: skipped: the validation split has no images to choose it on")
            return None
        tried[crop] = accuracy(scored)
    chosen = choose(tried)
    entries = {
        "test_crop": chosen,
        "test_crop_choice": {"accuracy": {str(c): a for c, a in tried.items()}, "images": len(scored.labels)},
    }
    return _stored(Path(run_dir), entries, tried)


def _stored(run_dir: Path, entries: dict[str, Any], tried: dict[float, float]) -> dict[str, Any] | None:
    """``entries`` written into best.pt's meta, and the line that says what was chosen. last.pt keeps
    the whole image: it is training's record (``evaluate last.pt`` gives the last ``val_acc``) and
    what ``--resume`` continues from."""
    best = run_dir / "best.pt"
    try:  # the file is replaced whole or left as it was (a full disk included)
        store_meta(best, entries)
    except OSError as exc:
        console.warn(f"test-time crop: not stored in {best} ({exc.strerror or exc}); best.pt reads whole images")
        return None
    chosen = entries["test_crop"]
    others = ", ".join(f"{c:g}: {100 * a:.1f}%" for c, a in tried.items())
    console.log(
        f"test-time crop: {chosen:g} of each side, {100 * tried[chosen]:.1f}% on "
        f"{entries['test_crop_choice']['images']} validation images ({others}; stored in best.pt)"
    )
    return entries
