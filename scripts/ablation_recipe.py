#!/usr/bin/env python
"""The training recipe's ablation (issue #20): each row adds one ingredient, every row gets the
same training seconds.

    python scripts/ablation_recipe.py --config configs/resnet_clothing.yaml --minutes 15

Rows, each on top of the one before:

  baseline        the config as it is, augmentation per image (data.augment.where=image)
  batch aug       the same augmentation on the batch, on the device (where=batch)
  trivialaugment  + data.augment.trivialaugment
  mixup/cutmix    + train.mixup 0.2, train.cutmix 1.0 (plain batches in the last 10% of epochs)
  ema             + train.ema.decay 0.999
  tta             the ema row's best.pt scored with evaluate --tta (no training)

Same seconds: a one-epoch probe of each row measures its seconds per epoch (training and
validation), and the row then trains for the epochs that fit in ``--minutes`` (the schedule is
planned for that many epochs). Prints one line per row: epochs, seconds, best validation
accuracy, and the same accuracy from ``cnnzoo evaluate`` on best.pt. ``--rows`` picks rows,
``--set`` adds overrides to every row (e.g. a smaller data set for a quick check).
"""

from __future__ import annotations

import argparse
import csv
import math
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
EVALUATED = {"tta": "ema"}  # rows that score another row's best.pt instead of training


def seconds_per_epoch(config: str, overrides: list[str], out: Path) -> float:
    """One epoch of a row, timed whole (cache building aside: the probe builds it, the row reuses it)."""
    from cnnzoo.training.run import train

    start = time.perf_counter()
    train(config, [*overrides, "train.epochs=1"], out=out, quiet=True)
    first = time.perf_counter() - start
    start = time.perf_counter()
    train(config, [*overrides, "train.epochs=1"], out=out, quiet=True)
    return min(first, time.perf_counter() - start)


def run_row(config: str, overrides: list[str], *, budget: float, out: Path) -> dict:
    from cnnzoo.evaluation.evaluate import evaluate
    from cnnzoo.training.run import train

    per_epoch = seconds_per_epoch(config, overrides, out / "probe")
    epochs = max(1, math.floor(budget / per_epoch))
    extra = [f"train.epochs={epochs}"]
    if any(o.startswith("train.mixup") for o in overrides):
        extra.append(f"train.mix_off_epochs={max(0, epochs // 10)}")
    start = time.perf_counter()
    run = train(config, [*overrides, *extra], out=out / "runs", quiet=True)
    seconds = time.perf_counter() - start
    with open(run / "metrics.csv") as f:
        best = max(float(r["val_acc"]) for r in csv.DictReader(f))
    report = evaluate(run / "best.pt", split="validation", progress=False, out=out / "eval")
    return {"epochs": epochs, "seconds": seconds, "val_acc": best, "eval_acc": report["accuracy"], "run": run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/resnet_clothing.yaml")
    parser.add_argument("--minutes", type=float, default=15.0, help="training time of every row")
    parser.add_argument("--rows", nargs="*", choices=[*ROWS, *EVALUATED], default=[*ROWS, *EVALUATED])
    parser.add_argument("--set", action="append", default=[], help="override for every row, repeatable")
    args = parser.parse_args()

    from cnnzoo.evaluation.evaluate import evaluate

    print(f"ablation: {args.config} {' '.join(args.set)}, {args.minutes:g} minutes of training per row")
    print(f"{'row':<16}{'epochs':>7}{'seconds':>9}{'val_acc':>9}{'evaluate':>10}")
    done: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rows:
            if name in EVALUATED:
                source = done.get(EVALUATED[name])
                if source is None:
                    print(f"{name:<16} needs the {EVALUATED[name]} row")
                    continue
                start = time.perf_counter()
                report = evaluate(source["run"] / "best.pt", split="validation", progress=False, tta=True, out=tmp)
                seconds = time.perf_counter() - start
                print(f"{name:<16}{'-':>7}{seconds:>9.0f}{'-':>9}{report['accuracy']:>10.4f}", flush=True)
                continue
            out = Path(tmp) / name.replace("/", "-").replace(" ", "-")
            row = run_row(args.config, [*args.set, *ROWS[name]], budget=60 * args.minutes, out=out)
            done[name] = row
            print(
                f"{name:<16}{row['epochs']:>7}{row['seconds']:>9.0f}{row['val_acc']:>9.4f}{row['eval_acc']:>10.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
