#!/usr/bin/env python
"""How many flipped labels ``data issues`` finds, against a logistic-probe baseline, in one invocation.

    python scripts/bench_label_issues.py [--folder DIR] [--config clothing_transfer] [--share 0.05] [--folds 5]

Builds, in a temporary folder, a Kaggle-style ``images.csv`` (image,label) listing every image of
the folder's train/ and validation/ splits in place (absolute paths; nothing copied), with
``--share`` of the labels flipped to another class (seeded). Then, on the same features:

* ``data issues`` (:func:`cnnzoo.training.issues.data_issues`, what the command runs): its first N
  ``label`` rows, N = the number of flips;
* the baseline: out-of-fold self-confidence (the lowest probability of the given label first) from
  a logistic head (scikit-learn, C=1, standardised features) on the frozen backbone's features of
  each image alone (no flip), the same folds.

Prints precision and recall at N for both, and the seconds each took. The features are cached
(``$CNNZOO_HOME/cache``), so a second invocation costs the heads only.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPLITS = ("train", "validation")


def flipped_manifest(folder: Path, out: Path, *, share: float, seed: int) -> tuple[Path, set[str]]:
    """images.csv with ``share`` of the labels flipped (seeded); returns it and the flipped images."""
    rows = [
        (str(image), cls.name)
        for split in SPLITS
        for cls in sorted(p for p in (folder / split).iterdir() if p.is_dir())
        for image in sorted(cls.iterdir())
    ]
    classes = sorted({label for _, label in rows})
    rng = random.Random(seed)
    flipped = sorted(rng.sample(range(len(rows)), round(share * len(rows))))
    labels = [label for _, label in rows]
    for i in flipped:
        labels[i] = rng.choice([c for c in classes if c != labels[i]])
    path = out / "images.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label"])
        writer.writerows((image, label) for (image, _), label in zip(rows, labels))
    return path, {rows[i][0] for i in flipped}


def at_n(ranked: list[str], flipped: set[str]) -> str:
    n = len(flipped)
    hits = sum(image in flipped for image in ranked[:n])
    shown = min(n, len(ranked))
    return f"precision@N {hits / max(shown, 1):.1%} ({hits}/{shown}), recall@N {hits / n:.1%} ({hits}/{n})"


def baseline(pooled, folds: int, seed: int) -> list[str]:
    """Out-of-fold self-confidence from a logistic head on each image's features (no flip)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from cnnzoo.data.folds import assign_folds

    x, y = pooled.features[:, 0], pooled.labels
    fold_of = assign_folds(y.tolist(), folds, seed)
    given = np.zeros(len(y))
    for fold in range(folds):
        fit, held = fold_of != fold, fold_of == fold
        mean, std = x[fit].mean(0), x[fit].std(0) + 1e-6
        head = LogisticRegression(C=1.0, max_iter=2000).fit((x[fit] - mean) / std, y[fit])
        probs = head.predict_proba((x[held] - mean) / std)
        given[held] = probs[np.arange(held.sum()), np.searchsorted(head.classes_, y[held])]
    return [pooled.names[i] for i in np.argsort(given, kind="stable")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "clothing-small"
    parser.add_argument("--folder", default=str(shared if shared.is_dir() else "/work/shared/datasets/clothing-small"))
    parser.add_argument("--config", default="clothing_transfer")
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="which labels are flipped")
    parser.add_argument("--set", action="append", default=[], help="config override, as cnnzoo's --set")
    args = parser.parse_args()

    from cnnzoo.config import load_config
    from cnnzoo.training.issue_features import data_and_model, pooled_images
    from cnnzoo.training.issues import data_issues

    with tempfile.TemporaryDirectory() as tmp:
        manifest, flipped = flipped_manifest(Path(args.folder), Path(tmp), share=args.share, seed=args.seed)
        print(f"{manifest}: {len(flipped)} of the labels flipped (seed {args.seed})", flush=True)
        start = time.perf_counter()
        report = data_issues(args.config, str(manifest), folds=args.folds, out=Path(tmp) / "issues", overrides=args.set)
        ours = time.perf_counter() - start
        ranked = [issue.image for issue in report.issues if issue.kind == "label"]
        cfg = load_config(args.config, [*args.set, f"data.root={manifest}"])
        start = time.perf_counter()
        pooled = pooled_images(*data_and_model(cfg), config_name=args.config)  # the features: cached above
        base = baseline(pooled, args.folds, cfg.seed)
        base_seconds = time.perf_counter() - start
    print(f"images {report.images}, flipped N = {len(flipped)}, {report.folds} folds, backbone {report.backbone}")
    print("issues: " + ", ".join(f"{n} {kind}" for kind, n in report.counts.items()))
    features = report.seconds["features"]
    print(f"data issues ({len(ranked)} label rows, {ours:.0f}s, features {features:.0f}s): {at_n(ranked, flipped)}")
    print(f"baseline (logistic head, self-confidence, no flips; {base_seconds:.0f}s): {at_n(base, flipped)}")


if __name__ == "__main__":
    main()
