#!/usr/bin/env python
"""Training throughput with 1 process against N processes (DDP), in one invocation.

    python scripts/bench_ddp.py --config configs/quickstart.yaml [--nproc 2] [--epochs 4] [--rounds 2]

Each round runs ``cnnzoo train --nproc 1`` and ``cnnzoo train --nproc N`` (alternating,
so that a slow spell of the machine hits both), and reads the steady-state images/s of
epochs 2.. from metrics.csv (an epoch's images/s counts every process's images). It
prints the best of the rounds, the speed-up N/1 and the scaling efficiency
speed-up / N. Each process keeps ``train.batch_size`` images a step, as torchrun users
expect, so N processes step with N times the batch.

On a CPU the N processes share the same cores (each gets cores / N threads), so the
efficiency says what DDP's communication costs there; on a machine with N GPUs it is
the usual scaling figure.
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

ROOT = Path(__file__).resolve().parents[1]


def run(config: str, nproc: int, epochs: int, sets: list[str], workdir: Path) -> tuple[float, float]:
    """(steady images/s, wall seconds) of one training run."""
    runs = workdir / f"runs-{nproc}-{time.monotonic_ns()}"
    cmd = [
        sys.executable,
        "-m",
        "cnnzoo",
        "train",
        "--config",
        config,
        "--nproc",
        str(nproc),
        "--quiet",
        "--runs",
        str(runs),
        "--epochs",
        str(epochs),
        *(f"--set={s}" for s in sets),
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"nproc {nproc} failed:\n{done.stderr[-3000:]}")
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    steady = rows[1:] if len(rows) > 1 else rows
    return sum(float(r["images_per_s"]) for r in steady) / len(steady), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating 1-process / N-process pairs")
    parser.add_argument("--set", action="append", default=[], help="config override, repeatable")
    args = parser.parse_args()

    import torch

    print(
        f"bench_ddp: {args.config}, 1 vs {args.nproc} processes, {args.epochs} epochs a run, "
        f"torch {torch.__version__}, {os.cpu_count()} cores, "
        f"{torch.cuda.device_count()} GPUs ({torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'})"
    )
    best = {1: (0.0, 0.0), args.nproc: (0.0, 0.0)}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for nproc in (1, args.nproc):
                rate, wall = run(args.config, nproc, args.epochs, args.set, Path(tmp))
                print(
                    f"  round {round_ + 1}: {nproc} process{'es' if nproc > 1 else ''}  {rate:8.1f} img/s  "
                    f"(run {wall:.1f}s)",
                    flush=True,
                )
                if rate > best[nproc][0]:
                    best[nproc] = (rate, wall)
    one, many = best[1][0], best[args.nproc][0]
    print(f"best: 1 process {one:.1f} img/s, {args.nproc} processes {many:.1f} img/s")
    print(f"speed-up {args.nproc}/1: {many / one:.3f}; scaling efficiency: {many / one / args.nproc:.3f}")


if __name__ == "__main__":
    main()
