"""``evaluate --unknown DIR_OR_CSV``: how well the model's unknown score tells its classes from others.

Known images are the split ``evaluate`` scores; unknown ones are the photos ``--unknown`` names
(a folder, searched recursively, or a manifest's image column: their labels, if any, are not
read). The report gains ``unknown_auroc`` (the chance an unknown image scores stranger than a
known one), ``unknown_fpr95`` (the share of unknown images accepted when the threshold keeps 95%
of the known ones) and, at the model's stored threshold (or ``--unknown-threshold``),
``unknown_rejected`` and ``unknown_known_kept``. The scores are the model's own
(:meth:`cnnzoo.inference.classifier.Classifier.scored`), so a checkpoint and its exports are
measured the same way.

Torch-free: imports the inference readers and NumPy.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..console import console
from ..data.manifest import is_manifest
from ..errors import DataError, UserError
from ..inference import Classifier, inputs, unknown


def unknown_images(source: str | Path) -> list[str]:
    """The image files ``--unknown`` names: a folder's (recursively) or a manifest's; none is an error."""
    if is_manifest(source) and os.path.isfile(source):
        _, paths, _ = inputs.manifest_images(source)
        found = [p for p in paths if p]
    elif os.path.isdir(source):
        found, _ = inputs.expand_inputs([str(source)])
    else:
        raise UserError(f"--unknown {source}: not a folder of images or a manifest (.csv, .tsv, .jsonl, .parquet)")
    if not found:
        raise DataError(
            f"--unknown {source}: holds no images; give a folder (or CSV) of photos of none of the model's classes"
        )
    return found


def check_model(model: Classifier) -> None:
    """``--unknown`` needs a model that carries an unknown score."""
    if model.unknown is None:
        raise UserError(f"--unknown: {model.path} {unknown.NO_SCORE}")


def _scores(model: Classifier, batches: Iterable[np.ndarray]) -> np.ndarray:
    found = [model.scored(pixels)[2] for pixels in batches]
    return np.concatenate(found) if found else np.zeros(0)


def unknown_report(
    model: Classifier,
    known_batches: Iterable[np.ndarray],
    unknown_paths: list[str],
    *,
    batch_size: int,
    threshold: float | None = None,
) -> dict[str, Any]:
    """The ``unknown_*`` fields of the report: known images' scores from ``known_batches`` (uint8
    pixels), unknown ones' from ``unknown_paths`` (unreadable files skipped with a warning)."""
    known = _scores(model, known_batches)
    errors: list = []
    strange = _scores(
        model, (pixels for _, pixels in model.batches(unknown_paths, batch_size=batch_size, errors=errors))
    )
    for name, reason in errors:
        console.warn(f"--unknown: skipped {name}: cannot read image ({reason})")
    if not len(strange):
        raise DataError(f"--unknown: none of its {len(unknown_paths)} images could be read")
    cut = model.unknown_threshold_for(threshold=threshold)
    return {
        "unknown_score": model.unknown["score"],
        "unknown_threshold": cut,
        "unknown_images": len(strange),
        "unknown_auroc": unknown.auroc(known, strange),
        "unknown_fpr95": unknown.fpr_at_keep(known, strange, 0.95),
        "unknown_rejected": float(np.mean(strange > cut)),
        "unknown_known_kept": float(np.mean(known <= cut)),
    }


def format_unknown(report: dict[str, Any]) -> str:
    """The report's unknown line, for the terminal."""
    return (
        f"unknown ({report['unknown_images']} images, {report['unknown_score']} score): "
        f"AUROC {report['unknown_auroc']:.3f}   FPR95 {100 * report['unknown_fpr95']:.1f}%   "
        f"at threshold {report['unknown_threshold']:.4g}: {100 * report['unknown_rejected']:.1f}% rejected, "
        f"{100 * report['unknown_known_kept']:.1f}% of known kept"
    )
