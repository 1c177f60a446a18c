#!/usr/bin/env python
"""What a large manifest costs: seconds and peak memory (RSS) of reading it, against the csv module.

    python scripts/bench_manifest.py [--rows 1600000] [--images 40] [--check]

Writes a CSV manifest of ``--rows`` rows (image, label, split) whose images are ``--images`` tiny
PNGs named over and over, then runs each stage in a fresh interpreter and prints its seconds and
peak RSS, in one invocation:
* ``csv.reader``: the rows read into lists by the standard library (the baseline);
* ``read_manifest``: cnnzoo's reader (columns, labels, splits, every image path resolved);
* ``load_data``: the manifest as ``data check`` resolves it (classes, splits, label indices);
* ``data check`` (with ``--check``): the whole report, every image read once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = ("csv.reader", "read_manifest", "load_data", "data check")


def write_manifest(folder: Path, rows: int, images: int) -> Path:
    """``rows`` rows naming ``images`` PNGs in ``folder/images`` (two classes, a split column)."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        Image.new("RGB", (8, 8), (i * 5 % 256, 80, 160)).save(folder / "images" / f"img_{i:05d}.png")
    path = folder / "labels.csv"
    with open(path, "w") as f:
        f.write("image,label,split\n")
        for i in range(rows):
            split = "validation" if i % 5 == 0 else "train"
            f.write(f"images/img_{i % images:05d}.png,{('circle', 'square')[i % 2]},{split}\n")
    return path


def run_stage(stage: str, path: Path) -> None:
    """One stage, in this (fresh) interpreter; prints its seconds and peak RSS as JSON."""
    import resource

    start = time.perf_counter()
    if stage == "csv.reader":
        import csv

        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        size = len(rows)
    elif stage == "read_manifest":
        from cnnzoo.data.manifest import read_manifest

        size = len(read_manifest(path))
    else:
        from cnnzoo.config import load_config

        cfg = load_config({"data": {"root": str(path), "image_size": 16, "workers": 0}})
        if stage == "load_data":
            from cnnzoo.data.sources import load_data

            spec = load_data(cfg, missing_ok=True)
            size = len(spec.train) + len(spec.val)
        else:
            from cnnzoo.data.check import check_data

            size = len(check_data(cfg)["classes"])
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"stage": stage, "seconds": seconds, "peak_rss_mb": peak_mb, "size": size}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_600_000)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--check", action="store_true", help="Also run the whole data check (reads every image).")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # the child's part
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        run_stage(args.stage, Path(args.manifest))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = write_manifest(Path(tmp), args.rows, args.images)
        print(f"{args.rows} rows, {path.stat().st_size / 1e6:.1f} MB, naming {args.images} images")
        print(f"{'stage':<14} {'seconds':>8} {'peak RSS MB':>12}")
        for stage in STAGES if args.check else STAGES[:-1]:
            child = [sys.executable, __file__, "--stage", stage, "--manifest", str(path)]
            done = subprocess.run(child, capture_output=True, text=True)
            if done.returncode:
                print(f"{stage:<14} failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{stage:<14} {result['seconds']:>8.1f} {result['peak_rss_mb']:>12.0f}")


if __name__ == "__main__":
    main()
