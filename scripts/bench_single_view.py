#!/usr/bin/env python
"""One view against five on held-out images: where ``evaluate --tta``'s gain comes from, and what
each test-time centre crop gives a single view.

    cnnzoo train --config clothing_recipe --data train.csv --runs RUNS
    python scripts/bench_single_view.py --run RUNS/clothing_recipe/1 --heldout validation.csv

``--run`` is a run folder (its best.pt) or a checkpoint; ``--heldout`` labelled images (a folder or
a manifest) that took part in neither training nor the choice of the test-time crop (for
clothing-small: train on a manifest of train/, hold out validation/). Every image is read once per
crop (the centred share of each side, :data:`cnnzoo.training.test_crop.CANDIDATES` and the one the
checkpoint stores) and scored in the five views of :mod:`cnnzoo.inference.tta`, so one invocation
prints, on the same images:

  - each of the five views of the whole image alone (crop 1.0: what predict read before issue 32),
    the pairs that tell flip from crops apart, and all five averaged (``--tta`` as it was);
  - for each crop: one view, one view with its mirror image averaged, and five views;
  - the shipped model (its ``meta.test_crop``): one view against ``--tta``, and the gap before.

A checkpoint trained before the test-time crop existed has none stored: the script then makes the
choice training makes now (on the run's validation split, by the same rule), in memory; the file is
never written.

Accuracy only (single-label models); the views' probabilities are averaged as ``--tta`` averages them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCH = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder (its best.pt) or a checkpoint")
    parser.add_argument("--heldout", required=True, help="labelled images (folder or manifest) held out of training")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from cnnzoo import checkpoint as ckpt_io
    from cnnzoo.training.test_crop import CANDIDATES

    path = Path(args.run) / "best.pt" if Path(args.run).is_dir() else Path(args.run)
    ckpt = ckpt_io.load_checkpoint(path)
    choice = ckpt["meta"].get("test_crop_choice")
    if choice:
        stored, how = float(ckpt["meta"]["test_crop"]), "stored"
    else:  # trained before issue 32: the choice training would make, made now and kept in memory only
        (stored, choice), how = chosen_now(path, args.device), "chosen now (not stored)"
    crops = sorted({*CANDIDATES, stored}, reverse=True)
    labels, views = score_views(ckpt, args.heldout, crops, args.device)
    print(f"held-out: {len(labels)} images from {args.heldout}; {path} (epoch {ckpt.get('epoch')})")
    tried = ", ".join(f"{c}: {100 * a:.2f}%" for c, a in choice["accuracy"].items())
    print(f"test_crop {stored:g} {how}, by the rule on {choice['images']} validation images ({tried})")
    report(labels, views, crops, stored)


def chosen_now(path: Path, device: str) -> tuple[float, dict]:
    """The crop :func:`cnnzoo.training.test_crop.choose` picks on the run's validation split, as the
    step after training would (the checkpoint is read, never written)."""
    from cnnzoo.training.calibrate import validation_pass
    from cnnzoo.training.test_crop import CANDIDATES, accuracy, choose

    tried = {}
    for crop in CANDIDATES:
        scored = validation_pass(path, device=device, test_crop=crop)
        tried[crop] = accuracy(scored)
    return choose(tried), {"accuracy": {str(c): a for c, a in tried.items()}, "images": len(scored.labels)}


def score_views(ckpt: dict, heldout: str, crops: list[float], device: str):
    """(labels [N], {crop: probabilities [5 views, N, K]}) of every readable held-out image."""
    import numpy as np
    import torch

    from cnnzoo.config import load_config
    from cnnzoo.console import console
    from cnnzoo.data import preprocess
    from cnnzoo.evaluation.splits import samples_for, trained_rule
    from cnnzoo.inference import tta
    from cnnzoo.inference.classifier import probabilities
    from cnnzoo.inference.torch_models import Model
    from cnnzoo.runtime.device import to_model_input

    model = Model(ckpt, device)
    cfg = load_config(ckpt["config"])
    with console.scoped(True):
        samples, _ = samples_for(cfg, model.classes, data=heldout, split=None, rule=trained_rule(ckpt["meta"], cfg))
    readable = [i for i in range(len(samples)) if model.try_preprocess(samples.item(i))[0] is not None]
    labels = np.asarray([samples.labels[i] for i in readable])
    views = {}
    for crop in crops:
        fit = preprocess.Fit.of(model.fit.mode, model.mean, crop)
        parts = []
        for start in range(0, len(readable), BATCH):
            pixels = np.stack(
                [samples.read(i, model.image_size, model.channels, fit) for i in readable[start : start + BATCH]]
            )
            x = to_model_input(torch.from_numpy(pixels).permute(0, 3, 1, 2), *model.norm, device=model.device)
            with torch.inference_mode():
                logits = [model.module(v).float().cpu().numpy() for v in tta.views(x)]
            parts.append(np.stack([probabilities(z) for z in logits]))
        views[crop] = np.concatenate(parts, axis=1)
    return labels, views


def accuracy(probs, labels) -> float:
    return 100 * float((probs.argmax(axis=-1) == labels).mean())


def report(labels, views, crops: list[float], stored: float) -> None:
    from cnnzoo.inference.tta import VIEWS

    whole = views[1.0]
    print("\nthe whole image (crop 1.0), each view alone and averaged:")
    for k, name in enumerate(VIEWS):
        print(f"  {name:<28}{accuracy(whole[k], labels):7.2f}%")
    for name, which in (("as it is + mirrored", [0, 1]), ("the three crops", [2, 3, 4]), ("five views (--tta)", None)):
        print(f"  {name:<28}{accuracy(whole[which].mean(0) if which else whole.mean(0), labels):7.2f}%")
    print("\na centred crop of each side, then the model's size:")
    print(f"  {'crop':<8}{'one view':>10}{'+ mirrored':>12}{'five views':>12}")
    for crop in crops:
        p = views[crop]
        mark = "  (stored)" if crop == stored else ""
        row = (accuracy(p[0], labels), accuracy(p[:2].mean(0), labels), accuracy(p.mean(0), labels))
        print(f"  {crop:<8g}{row[0]:9.2f}%{row[1]:11.2f}%{row[2]:11.2f}%{mark}")
    single, five = accuracy(views[stored][0], labels), accuracy(views[stored].mean(0), labels)
    before_single, before_five = accuracy(whole[0], labels), accuracy(whole.mean(0), labels)
    print(
        f"\nshipped (test_crop {stored:g}): one view {single:.2f}%, --tta {five:.2f}% "
        f"(gap {five - single:.2f} points); the whole image: {before_single:.2f}% against --tta "
        f"{before_five:.2f}% (gap {before_five - before_single:.2f}); one view now against --tta "
        f"then: {before_five - single:.2f} points"
    )


if __name__ == "__main__":
    main()
