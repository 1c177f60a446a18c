#!/usr/bin/env python
"""The cost of ``train.checkpoint_every``: training time with a mid-epoch ``last.pt`` every N steps,
as a ratio against the same run without (issue #33).

    python scripts/bench_checkpoint_every.py --config clothing --data DATA [--epochs 1] [--every 10 50] [--set k=v]

One invocation trains the config ``--epochs`` epochs once per setting, each in its own ``cnnzoo
train`` child process, in the order off, each N, off again (the machine's load drifts: the two
runs without checkpoints bracket the others, and the ratio is against their mean). The time is the
training steps' own (metrics.csv's ``seconds``: validation, the cache and start-up excluded), so
the difference is what the checkpoints cost. It prints, per setting: training seconds, the ratio
against off, the checkpoints written, the cost of one, and the size of ``last.pt``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


def train_seconds(args, every: int | None, runs: Path) -> tuple[float, int, int]:
    """(training seconds, steps per epoch, last.pt bytes) of one child run."""
    command = [sys.executable, "-m", "cnnzoo", "train", "-c", args.config, "--runs", str(runs), "-q"]
    if args.data:
        command += ["--data", args.data]
    settings = [*args.set, f"train.epochs={args.epochs}", f"train.checkpoint_every={every or 'null'}"]
    for setting in settings:
        command += ["--set", setting]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode:
        sys.exit(f"cnnzoo train failed:\n{done.stderr[-3000:]}")
    run = Path(done.stdout.strip().splitlines()[-1])
    run = run if run.is_absolute() else Path.cwd() / run
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    seconds = sum(float(r["seconds"]) for r in rows)
    images = float(rows[0]["images_per_s"]) * float(rows[0]["seconds"])
    batch = yaml.safe_load((run / "config.yaml").read_text())["train"]["batch_size"]
    return seconds, math.ceil(round(images) / batch), (run / "last.pt").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", default=None, help="the data folder (cnnzoo train --data)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--every", type=int, nargs="+", default=[10, 50], help="the steps between checkpoints")
    parser.add_argument("--set", action="append", default=[], help="more overrides, key=value")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as folder:
        order: list[int | None] = [None, *args.every, None]
        results = []
        for i, every in enumerate(order):
            results.append((every, *train_seconds(args, every, Path(folder) / str(i))))
            print(f"  measured: every {every or 'off'}: {results[-1][1]:.1f} s", file=sys.stderr, flush=True)
    off = (results[0][1] + results[-1][1]) / 2
    print(f"checkpoint every N steps: {args.config}, {args.epochs} epoch(s), {results[0][2]} steps per epoch")
    print(f"{'N':>6}  {'train s':>8}  {'ratio':>6}  {'written':>7}  {'ms each':>8}  {'last.pt':>9}")
    for every, seconds, steps, size in results:
        written = args.epochs * ((steps - 1) // every) if every else 0
        # below the two runs without, the difference is the machine's noise, not a cost
        each = (
            f"{1000 * (seconds - off) / written:8.0f}"
            if written and seconds > off
            else f"{'noise' if written else '':>8}"
        )
        print(f"{every or 'off':>6}  {seconds:8.1f}  {seconds / off:6.3f}  {written:7d}  {each}  {size / 1e6:7.1f} MB")
    print(f"ratio: against the mean of the two runs without ({off:.1f} s)")


if __name__ == "__main__":
    main()
