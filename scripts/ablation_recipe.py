#!/usr/bin/env python
"""The training recipe's ablation (issue #20): each row adds one ingredient, every row gets the
same training seconds.

    python scripts/ablation_recipe.py --config configs/resnet_clothing.yaml --minutes 15 \
        --set data.root=../shared/datasets/clothing-small

Rows, each on top of the one before:

  baseline        the config as it is, augmentation per image (data.augment.where=image)
  batch aug       the same augmentation on the batch, on the device (where=batch)
  trivialaugment  + data.augment.trivialaugment
  mixup/cutmix    + train.mixup 0.2, train.cutmix 1.0 (plain batches in the last 10% of epochs)
  ema             + train.ema.decay 0.999
  tta             the ema row's best.pt scored with evaluate --tta (no training)

``--row 'NAME: k=v k=v'`` (repeatable) runs your own rows instead, ``--minutes 0`` trains each for
the config's epochs (no probe), e.g. the transfer config's fine-tuning with and without EMA:

    python scripts/ablation_recipe.py --config configs/clothing_transfer.yaml --minutes 0 --set data.root=DATA \
        --row 'baseline:' --row 'ema: train.ema.decay=0.995' --row tta

Same seconds: a one-epoch probe of each row measures its seconds per epoch (training and
validation), and the row then trains for the epochs that fit in ``--minutes`` (the schedule is
planned for that many epochs). Prints one line per row: epochs, seconds, best and last-epoch
validation accuracy, and ``cnnzoo evaluate``'s accuracy of best.pt on held-out images. ``--rows``
picks rows, ``--set`` adds overrides to every row (e.g. a smaller data set for a quick check).

Held-out images: picking best.pt by validation accuracy flatters that accuracy, so ``--holdout F``
(default 0.1) moves a seeded, stratified fraction F of each class of a class-folder data set's
``train/`` into a test split that no row trains or selects on. The rows read a manifest written
in the temporary folder (split column: train, validation, test); ``--holdout 0`` trains on the
data as it is and scores best.pt on validation.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS: dict[str, list[str]] = {
    "baseline": ["data.augment.where=image"],
    "batch aug": ["data.augment.where=batch"],
    "trivialaugment": ["data.augment.where=batch", "data.augment.trivialaugment=true"],
    "mixup/cutmix": [
        "data.augment.where=batch",
        "data.augment.trivialaugment=true",
        "train.mixup=0.2",
        "train.cutmix=1.0",
    ],
    "ema": [
        "data.augment.where=batch",
        "data.augment.trivialaugment=true",
        "train.mixup=0.2",
        "train.cutmix=1.0",
        "train.ema.decay=0.999",
    ],
}


def seconds_per_epoch(config: str, overrides: list[str], out: Path) -> float:
    """One epoch of a row, timed whole (cache building aside: the probe builds it, the row reuses it)."""
    from cnnzoo.training.run import train

    start = time.perf_counter()
    train(config, [*overrides, "train.epochs=1"], out=out, quiet=True)
    first = time.perf_counter() - start
    start = time.perf_counter()
    train(config, [*overrides, "train.epochs=1"], out=out, quiet=True)
    return min(first, time.perf_counter() - start)


def holdout_manifest(root: Path, fraction: float, out: Path, seed: int = 0) -> Path:
    """A CSV of ``root``'s class folders with a split column: validation/ as it is, and ``fraction``
    of each class of train/ (seeded, stratified, at least one image) as the test split."""
    rng = random.Random(seed)
    rows = []
    for split_folder, split in (("train", "train"), ("validation", "validation")):
        for class_dir in sorted(d for d in (root / split_folder).iterdir() if d.is_dir()):
            files = sorted(f for f in class_dir.iterdir() if f.is_file())
            held = set()
            if split == "train":
                held = set(rng.sample(files, max(1, round(fraction * len(files)))))
            rows += [(str(f.resolve()), class_dir.name, "test" if f in held else split) for f in files]
    path = out / "holdout.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label", "split"])
        writer.writerows(rows)
    return path


def run_row(config: str, overrides: list[str], *, budget: float, out: Path, test_data: Path | None) -> dict:
    """Train one row (for ``budget`` seconds, or the config's epochs when ``budget`` is 0) and score
    its best.pt."""
    from cnnzoo.config import load_config
    from cnnzoo.training.run import train

    if budget:
        epochs = max(1, math.floor(budget / seconds_per_epoch(config, overrides, out / "probe")))
    else:
        epochs = load_config(config, overrides).train.epochs
    extra = [f"train.epochs={epochs}"]
    if any(o.startswith(("train.mixup", "train.cutmix")) for o in overrides):
        extra.append(f"train.mix_off_epochs={max(0, epochs // 10)}")
    start = time.perf_counter()
    run = train(config, [*overrides, *extra], out=out / "runs", quiet=True)
    seconds = time.perf_counter() - start
    with open(run / "metrics.csv") as f:
        val_acc = [float(r["val_acc"]) for r in csv.DictReader(f)]
    return {
        "epochs": epochs,
        "seconds": seconds,
        "val_acc": max(val_acc),
        "last_val_acc": val_acc[-1],
        "eval_acc": score(run / "best.pt", test_data, out=out / "eval"),
        "run": run,
    }


def score(checkpoint: Path, test_data: Path | None, *, out: Path, tta: bool = False) -> float:
    """``cnnzoo evaluate``'s accuracy of ``checkpoint`` on the held-out split (else validation)."""
    from cnnzoo.evaluation.evaluate import evaluate

    split = "test" if test_data else "validation"
    report = evaluate(checkpoint, test_data, split=split, progress=False, html_report=False, tta=tta, out=out)
    return report["accuracy"]


def parse_rows(args: argparse.Namespace) -> dict[str, list[str] | None]:
    """The rows to run, in order: name -> overrides, or None for a TTA row (scores the row before it)."""
    if not args.row:
        return {name: (None if name == "tta" else ROWS[name]) for name in args.rows}
    rows: dict[str, list[str] | None] = {}
    for text in args.row:
        name, _, overrides = text.partition(":")
        rows[name.strip()] = None if name.strip().startswith("tta") else overrides.split()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/resnet_clothing.yaml")
    parser.add_argument("--minutes", type=float, default=15.0, help="training time per row (0: config's epochs)")
    parser.add_argument("--rows", nargs="*", choices=[*ROWS, "tta"], default=[*ROWS, "tta"])
    parser.add_argument(
        "--row",
        action="append",
        default=[],
        help="'NAME: k=v ...' instead of the built-in rows; 'tta...' scores the row before",
    )
    parser.add_argument("--set", action="append", default=[], help="override for every row, repeatable")
    parser.add_argument("--holdout", type=float, default=0.1, help="fraction of train/ held out as the test split")
    args = parser.parse_args()

    from cnnzoo.config import load_config

    budget = f"{args.minutes:g} minutes of training per row" if args.minutes else "the config's epochs"
    print(f"ablation: {args.config} {' '.join(args.set)}, {budget}")
    scored = f"held-out ({args.holdout:.0%} of train)" if args.holdout else "validation"
    print(f"evaluate: best.pt's accuracy on {scored}")
    print(f"{'row':<16}{'epochs':>7}{'seconds':>9}{'best val':>10}{'last val':>10}{'evaluate':>10}", flush=True)
    previous = None
    with tempfile.TemporaryDirectory() as tmp:
        test_data = None
        if args.holdout:
            root = Path(load_config(args.config, args.set).data.root)
            test_data = holdout_manifest(root, args.holdout, Path(tmp))
            args.set = [*args.set, f"data.root={test_data}"]
        for name, overrides in parse_rows(args).items():
            out = Path(tmp) / name.replace("/", "-").replace(" ", "-")
            if overrides is None:
                start = time.perf_counter()
                accuracy = score(previous["run"] / "best.pt", test_data, out=out, tta=True)
                seconds = time.perf_counter() - start
                print(f"{name:<16}{'-':>7}{seconds:>9.0f}{'-':>10}{'-':>10}{accuracy:>10.4f}", flush=True)
                continue
            overrides = [*args.set, *overrides]
            previous = run_row(args.config, overrides, budget=60 * args.minutes, out=out, test_data=test_data)
            print(
                f"{name:<16}{previous['epochs']:>7}{previous['seconds']:>9.0f}{previous['val_acc']:>10.4f}"
                f"{previous['last_val_acc']:>10.4f}{previous['eval_acc']:>10.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
