#!/usr/bin/env python
"""Prediction from an ONNX export against the checkpoint path, in one invocation.

    python scripts/bench_onnx.py [--checkpoint runs/latest/best.pt] [--images DIR] [--repeat 5] [--warm 1]

Measures, for ``cnnzoo predict --model best.onnx`` against ``cnnzoo predict -m best.pt``:

  cold start   wall time of the whole command for one image (median of --repeat, alternating)
  peak RSS     the command's peak resident memory for that one image
  throughput   images/s of ``predict`` over a folder, in this process, best of 3 (alternating)

and prints each ratio onnx / checkpoint. The export is written to a temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# runs the CLI and reports the process's own peak RSS (KiB) on its last stderr line: VmHWM from
# /proc (getrusage's ru_maxrss would carry over the forking parent's peak, torch included)
CHILD = """import sys
sys.argv = ['cnnzoo', *sys.argv[1:]]
from cnnzoo.cli import main
try:
    main()
except SystemExit:
    pass
peak = next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:'))
print('RSS', peak, file=sys.stderr)
"""


def command(model: Path, image: str) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of ``cnnzoo predict --model MODEL IMAGE`` (Linux)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "predict", "--model", str(model), image], capture_output=True, text=True, cwd=ROOT
    )
    wall = time.perf_counter() - start
    last = done.stderr.strip().splitlines()[-1]
    if done.returncode != 0 or not last.startswith("RSS "):
        sys.exit(f"predict --model {model} failed:\n{done.stderr[-2000:]}")
    return wall, int(last.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="default: runs/latest's best.pt")
    parser.add_argument("--images", help="folder of images (default: the checkpoint's validation images)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warm", type=int, default=1, help="untimed runs of each command first (file cache)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    from benchlib import checkpoint_and_images

    from cnnzoo.deploy.export import export
    from cnnzoo.inference import load

    checkpoint, folder, images = checkpoint_and_images(args.checkpoint, args.images)
    with tempfile.TemporaryDirectory() as tmp:
        exported = export(checkpoint, "onnx", out=Path(tmp) / "model.onnx")
        reference = load(checkpoint, device="cpu")
        print(
            f"bench_onnx: {checkpoint} ({len(reference.classes)} classes, input "
            f"{reference.channels}x{reference.image_size[0]}x{reference.image_size[1]}), {len(images)} images "
            f"from {folder}; export parity {exported.max_difference:.1e}"
        )

        for model in [checkpoint, exported.path] * args.warm:  # warm the file cache
            command(model, images[0])
        runs = {"checkpoint": [], "onnx": []}
        for _ in range(args.repeat):
            runs["checkpoint"].append(command(checkpoint, images[0]))
            runs["onnx"].append(command(exported.path, images[0]))
        cold = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
        rss = {k: max(r for _, r in v) for k, v in runs.items()}
        print(
            f"cold start, one image: checkpoint {cold['checkpoint']:.2f}s, onnx {cold['onnx']:.2f}s, "
            f"ratio {cold['onnx'] / cold['checkpoint']:.2f} (medians of {args.repeat})"
        )
        print(
            f"peak RSS, one image:   checkpoint {rss['checkpoint']:.0f} MB, onnx {rss['onnx']:.0f} MB, "
            f"ratio {rss['onnx'] / rss['checkpoint']:.2f}"
        )

        onnx_model = load(exported.path)
        rates = {"checkpoint": 0.0, "onnx": 0.0}
        for model in (reference, onnx_model):
            model.predict(images[: args.batch_size], batch_size=args.batch_size)  # warm-up
        for _ in range(3):
            for model, key in ((reference, "checkpoint"), (onnx_model, "onnx")):
                start = time.perf_counter()
                done = model.predict(images, batch_size=args.batch_size)
                rates[key] = max(rates[key], len(done) / (time.perf_counter() - start))
        print(
            f"throughput, batch {args.batch_size}: checkpoint {rates['checkpoint']:.0f} img/s, "
            f"onnx {rates['onnx']:.0f} img/s, ratio {rates['onnx'] / rates['checkpoint']:.2f} (best of 3)"
        )


if __name__ == "__main__":
    main()
