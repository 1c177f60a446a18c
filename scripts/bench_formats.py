#!/usr/bin/env python
"""``cnnzoo benchmark`` of several checkpoints in one invocation: the table of docs/benchmark.md.

    python scripts/bench_formats.py CHECKPOINT [CHECKPOINT ...] [--formats all] [--threads N] [--out DIR]

For each checkpoint, exports it to every installed format (into ``DIR/<n>-<run name>/``) and
prints the benchmark's table as Markdown: size, accuracy, drop against the checkpoint (the
baseline, the first row of the same invocation), load time, latency p50/p95 at batch 1 and
images/s at batch 32, on the same threads. Measure on a quiet machine: each format is timed in
turn, so a load that comes and goes moves one row against another.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--formats", default="all")
    parser.add_argument("--threads", type=int, default=None, help="default: every core")
    parser.add_argument("--images", type=int, default=None, help="default: the whole validation split")
    parser.add_argument("--seconds", type=float, default=1.0, help="about how long each timing runs")
    parser.add_argument("--out", type=Path, default=Path("bench-formats"))
    args = parser.parse_args()

    import cnnzoo

    for n, checkpoint in enumerate(args.checkpoints, 1):
        result = cnnzoo.benchmark(
            checkpoint,
            args.formats,
            out=args.out / f"{n}-{checkpoint.parent.parent.name or checkpoint.stem}",
            threads=args.threads,
            images=args.images,
            seconds=args.seconds,
        )
        print(result.markdown())


if __name__ == "__main__":
    main()
