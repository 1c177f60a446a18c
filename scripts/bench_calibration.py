#!/usr/bin/env python
"""Expected calibration error before and after the temperature, on held-out images: the model and a linear probe.

    cnnzoo train --config configs/clothing_transfer.yaml --data train.csv --runs RUNS
    python scripts/bench_calibration.py --run RUNS/clothing_transfer/1 --heldout validation.csv

``--run`` is a run folder trained with the default ``train.calibrate: temperature``: its best.pt
carries the temperature fitted on the validation split training carved out of ``--data``.
``--heldout`` holds labelled images that took part in neither the training nor the fit (for
clothing-small: train on a manifest of train/, hold out validation/). Two rows:

  model   ``cnnzoo.evaluate(best.pt, data=HELDOUT)``: its ``ece_uncalibrated`` and ``ece``
  probe   the baseline: a logistic regression (scikit-learn) on the frozen features of the run's
          model (every layer but the last, as the config builds it: the pretrained backbone
          pooled, for a transfer config), fitted on the run's training split, its temperature
          fitted on the run's validation split (:func:`cnnzoo.training.calibrate.fit_temperature`),
          scored on ``--heldout``

Prints each row's accuracy and ECE (15 bins) without and with its temperature.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder trained with train.calibrate: temperature")
    parser.add_argument("--heldout", required=True, help="labelled images (folder or manifest) neither saw")
    args = parser.parse_args()

    import cnnzoo
    from cnnzoo.console import console

    best = Path(args.run) / "best.pt"
    with console.scoped(True):
        report = cnnzoo.evaluate(
            best, data=args.heldout, html_report=False, progress=False, out=Path(args.run) / "bench-calibration"
        )
    print(f"held-out images: {report['num_images']} from {args.heldout}")
    print(f"{'':8}{'accuracy':>10}{'ECE before':>12}{'ECE after':>11}  temperature")
    row("model", report["accuracy"], report["ece_uncalibrated"], report["ece"], report["temperature"])
    accuracy, before, after, t = probe(best, args.heldout)
    row("probe", accuracy, before, after, t)


def row(name: str, accuracy: float, before: float, after: float, temperature) -> None:
    t = f"{temperature:.3f}" if isinstance(temperature, float) else str(temperature)
    print(f"{name:8}{100 * accuracy:9.2f}%{100 * before:11.2f}%{100 * after:10.2f}%  {t}")


def probe(best: Path, heldout: str) -> tuple[float, float, float, float]:
    """The linear probe's held-out accuracy, ECE without and with its temperature, and the temperature."""
    from sklearn.linear_model import LogisticRegression

    from cnnzoo.checkpoint import load_checkpoint
    from cnnzoo.config import load_config
    from cnnzoo.console import console
    from cnnzoo.data import sources
    from cnnzoo.evaluation.analysis import calibration_error
    from cnnzoo.inference.classifier import probabilities
    from cnnzoo.training.calibrate import fit_temperature
    from cnnzoo.training.inputs import load_data
    from cnnzoo.training.setup import build_for_data

    cfg = load_config(load_checkpoint(best)["config"])  # the run's: the same data, split and seed
    with console.scoped(True):
        spec = load_data(cfg)
        _, model = build_for_data(cfg, spec, pretrained=True)
        held, _ = sources.split_to_score(cfg, heldout, None, spec.classes)
    frozen = model[:-1].eval()  # every layer below the head
    (x_train, y_train), (x_val, y_val), (x_held, y_held) = (
        features(frozen, split, spec) for split in (spec.train, spec.val, held)
    )
    head = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    val_logits, held_logits = head.decision_function(x_val), head.decision_function(x_held)
    if val_logits.ndim == 1:  # two classes: scikit-learn gives one logit, the binary head's
        val_logits, held_logits = val_logits[:, None], held_logits[:, None]
    t = fit_temperature(val_logits, y_val)
    raw, calibrated = probabilities(held_logits), probabilities(held_logits, temperature=t)
    accuracy = float((raw.argmax(axis=1) == y_held).mean())
    return accuracy, calibration_error(raw, y_held), calibration_error(calibrated, y_held), t


def features(frozen, samples, spec):
    """The frozen layers' output [N, D] of a split's images (read as training reads them), and labels."""
    import numpy as np
    import torch

    from cnnzoo.data.cache import decode_all
    from cnnzoo.runtime.device import cpu_count, norm_tensors, to_model_input

    decoded = decode_all(
        samples, spec.image_size, spec.channels, kind="ram", cache_dir=None, workers=cpu_count(), fit=spec.fit
    )
    keep = np.setdiff1d(np.arange(len(samples)), np.asarray(decoded.failed, dtype=np.int64))
    mean, std = norm_tensors(spec.mean, spec.std, torch.device("cpu"))
    out = []
    with torch.inference_mode():
        for start in range(0, len(keep), 64):
            batch = decoded.pixels[torch.from_numpy(keep[start : start + 64])]
            x = to_model_input(batch, mean, std, device=torch.device("cpu"), channels_last=True)
            out.append(frozen(x).flatten(1).float().numpy())
    return np.concatenate(out), np.asarray([samples.labels[i] for i in keep], dtype=np.int64)


if __name__ == "__main__":
    main()
