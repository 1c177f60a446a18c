#!/usr/bin/env python
"""What ``train --folds K`` costs against K separate runs, and how far apart its folds' scores are.

    python scripts/bench_folds.py --config configs/clothing_transfer.yaml --data DATA \
        [--per-class 60] [--folds 5] [--set k=v ...]

``DATA`` is a folder with class folders, or train/ and validation/ splits of them (clothing-small):
both are pooled and the first ``--per-class`` images of each class (sorted by name) are linked
into a temporary folder of class folders, so the single run and the k-fold run read the same images.

1. one cold single run: ``cnnzoo train`` on those images (validation: ``data.val_fraction``) with
   empty caches (``data.cache_dir`` a fresh folder), timed as a whole process;
2. the k-fold run: ``cnnzoo train --folds K --no-final`` with empty caches, timed the same way.

Prints both times and the ratio ``k-fold / (K x one cold run)``: what the shared pool of decoded
images and the one frozen-feature cache save (K separate runs would each start cold; one cold run
times K stands for them). Then the fold spread from the k-fold run's cv.json: each fold's
``val_acc``, their mean and standard deviation, against the baseline the one-split view implies,
the binomial standard error sqrt(p (1 - p) / n) of one fold's accuracy (n its held-out images).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm"}


def subset(data: Path, per_class: int, into: Path) -> dict[str, int]:
    """Link the first ``per_class`` images of each class (train/ and validation/ pooled, or the
    class folders of ``data``) into ``into/<class>/``; the images per class."""
    splits = [data / s for s in ("train", "validation") if (data / s).is_dir()] or [data]
    counts = {}
    classes = sorted({c.name for s in splits for c in s.iterdir() if c.is_dir()})
    for name in classes:
        files = sorted(
            f for s in splits if (s / name).is_dir() for f in (s / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES
        )[:per_class]
        (into / name).mkdir(parents=True)
        for f in files:
            os.symlink(f.resolve(), into / name / f"{f.parent.parent.name}-{f.name}")
        counts[name] = len(files)
    return counts


def timed_train(args: argparse.Namespace, data: Path, runs: Path, cache: Path, *extra: str) -> float:
    """Seconds one ``cnnzoo train`` process takes on ``data`` with its caches in the empty ``cache``."""
    sets = [x for kv in (*args.set, f"data.cache_dir={cache}") for x in ("--set", kv)]
    command = [sys.executable, "-m", "cnnzoo", "train", "-c", args.config, "--data", str(data), "--runs", str(runs)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    subprocess.run([*command, *sets, "--quiet", *extra], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def spread(cv: dict) -> None:
    """The folds' val_acc, their spread, and the binomial standard error of one fold's accuracy."""
    acc = cv["metrics"]["val_acc"]
    n = cv["images"] / cv["folds"]
    p = acc["mean"]
    binomial = math.sqrt(p * (1 - p) / n)
    print(f"val_acc per fold: {', '.join(f'{v:.4f}' for v in acc['per_fold'])}")
    print(f"val_acc mean {p:.4f}, standard deviation over folds {acc['std']:.4f} ({acc['std'] * 100:.2f} points)")
    print(
        f"baseline: one split's binomial standard error sqrt(p(1-p)/n), n = {n:.0f}: "
        f"{binomial:.4f} ({binomial * 100:.2f} points)"
    )
    print(f"ratio observed std / binomial standard error: {acc['std'] / binomial:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--per-class", type=int, default=60, help="images per class (train + validation pooled)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-folds-") as tmp:
        base = Path(tmp)
        counts = subset(args.data, args.per_class, base / "images")
        print(f"images: {sum(counts.values())} ({len(counts)} classes, up to {args.per_class} each) from {args.data}")
        single = timed_train(args, base / "images", base / "runs", base / "cache-single")
        print(f"one cold single run: {single:.1f}s")
        kfold = timed_train(
            args, base / "images", base / "runs", base / "cache-folds", "--folds", str(args.folds), "--no-final"
        )
        print(f"--folds {args.folds} --no-final (cold): {kfold:.1f}s")
        print(f"ratio k-fold / ({args.folds} x one cold run): {kfold / (args.folds * single):.2f}")
        cv_files = sorted((base / "runs").glob("*/*/cv.json"))
        spread(json.loads(cv_files[-1].read_text()))


if __name__ == "__main__":
    main()
