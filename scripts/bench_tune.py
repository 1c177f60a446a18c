#!/usr/bin/env python
"""``cnnzoo tune`` against the grid ``cnnzoo sweep`` on the same budget: the same trials of the same
epochs over the same ranges, one invocation, one process after the other.

    python scripts/bench_tune.py [--config quickstart] [--data DATA] [--epochs 4] [--set k=v ...]

1. ``cnnzoo sweep``: the grid ``train.lr`` x ``train.weight_decay`` (``--lrs``, ``--decays``; by
   default 4 x 2 = 8 runs), every run to the end;
2. ``cnnzoo tune``: as many trials as the grid has runs, over the ranges the grid spans
   (``train.lr`` log-uniform between the grid's ends, ``train.weight_decay`` uniform), TPE with
   Optuna's median pruner, seeded;
3. the same study continued (``cnnzoo tune`` again joins it) until its trials have trained as
   many epochs as the grid did: the pruner's savings spent on more trials.

Each is timed as a whole process. Prints, for both: the best validation figure, the wall time,
the epochs actually trained (pruned trials stop early), and the ratios tune / sweep. With few
trials TPE is mostly random search (its first 5 trials are random): the figure says what the
pruner saves at equal trials, and whether a continuous range finds a value between grid points.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def cnnzoo(args: argparse.Namespace, *command: str) -> float:
    """Seconds one ``cnnzoo`` process takes; stops the script if it fails."""
    sets = [x for kv in args.set for x in ("--set", kv)]
    data = ["--data", args.data] if args.data else []
    full = [
        sys.executable,
        "-m",
        "cnnzoo",
        *command,
        "-c",
        args.config,
        *data,
        "--epochs",
        str(args.epochs),
        *sets,
        "-q",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run(full, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:1])} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds


def epochs_trained(run: Path) -> int:
    with open(run / "metrics.csv", newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def sweep_figures(runs: Path) -> tuple[float, int, dict]:
    table = next(runs.glob("*-sweep/sweep-*.csv"))
    rows = list(csv.DictReader(open(table, newline="")))
    best = max(rows, key=lambda r: float(r["best_val_acc"]))
    epochs = sum(epochs_trained(Path(r["run"])) for r in rows)
    return float(best["best_val_acc"]), epochs, {k: best[k] for k in ("train.lr", "train.weight_decay")}


def tune_figures(runs: Path) -> tuple[float, int, dict, dict]:
    rows = list(csv.DictReader(open(next(runs.glob("*-tune/trials.csv")), newline="")))
    finished = [r for r in rows if r["value"] not in ("", None)]
    best = max(finished, key=lambda r: float(r["value"]))
    epochs = sum(int(r["epochs"] or 0) for r in rows)
    states = {s: sum(r["state"] == s for r in rows) for s in sorted({r["state"] for r in rows})}
    return float(best["value"]), epochs, {k: best[k] for k in ("train.lr", "train.weight_decay") if k in best}, states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="quickstart")
    parser.add_argument("--data", default=None)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lrs", default="0.0003,0.001,0.003,0.01")
    parser.add_argument("--decays", default="0.0,0.05")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    lrs = [float(v) for v in args.lrs.split(",")]
    decays = [float(v) for v in args.decays.split(",")]
    trials = len(lrs) * len(decays)
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as scratch:
        scratch = Path(scratch)
        space = scratch / "space.yaml"
        ranges = {"train.lr": {"log": [min(lrs), max(lrs)]}}
        if len(set(decays)) > 1:  # one value is no range: tune keeps it fixed, as the grid does
            ranges["train.weight_decay"] = {"float": [min(decays), max(decays)]}
        else:
            args.set.append(f"train.weight_decay={decays[0]}")
        space.write_text(yaml.safe_dump({"tune": ranges}))
        grid = ["--grid", f"train.lr={args.lrs}", "--grid", f"train.weight_decay={args.decays}"]
        sweep_s = cnnzoo(args, "sweep", *grid, "--runs", str(scratch / "sweep"))
        tune_s = cnnzoo(
            args, "tune", "--space", str(space), "--trials", str(trials), "--seed", "0", "--runs", str(scratch / "tune")
        )
        sweep_best, sweep_epochs, sweep_values = sweep_figures(scratch / "sweep")
        tune_best, tune_epochs, tune_values, states = tune_figures(scratch / "tune")
        more_s, more = 0.0, (tune_best, tune_epochs, tune_values, states)
        for seed in (1, 2, 3):  # at most three more workers join the study
            if more[1] >= sweep_epochs:
                break
            extra = -(-(sweep_epochs - more[1]) // args.epochs)
            more_s += cnnzoo(
                args, "tune", "--space", str(space), "--trials", str(extra), "--seed", str(seed),
                "--runs", str(scratch / "tune"),
            )  # fmt: skip
            more = tune_figures(scratch / "tune")
    print(f"budget: {trials} runs of {args.epochs} epochs, config {args.config}, data {args.data or 'its own'}")
    print(f"sweep (grid {len(lrs)} x {len(decays)}): best {sweep_best:.4f} at {sweep_values}")
    print(f"  {sweep_s:.0f} s, {sweep_epochs} epochs trained")
    print(f"tune (TPE + median pruning, {trials} trials, {states}): best {tune_best:.4f} at {tune_values}")
    print(f"  {tune_s:.0f} s, {tune_epochs} epochs trained")
    print(
        f"tune / sweep: time {tune_s / sweep_s:.2f}x, epochs {tune_epochs / sweep_epochs:.2f}x, "
        f"best figure {100 * (tune_best - sweep_best):+.2f} points"
    )
    trials_run = sum(more[3].values())
    print(f"tune continued to the grid's epochs ({trials_run} trials, {more[3]}): best {more[0]:.4f} at {more[2]}")
    print(f"  {tune_s + more_s:.0f} s, {more[1]} epochs trained")
    print(
        f"tune at equal epochs / sweep: time {(tune_s + more_s) / sweep_s:.2f}x, epochs {more[1] / sweep_epochs:.2f}x, "
        f"best figure {100 * (more[0] - sweep_best):+.2f} points"
    )


if __name__ == "__main__":
    main()
