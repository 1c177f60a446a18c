#!/usr/bin/env python
"""Decode + resize speed: cnnzoo's PIL path (JPEG draft mode) against torchvision.io.

    python scripts/bench_decode.py [--folder DIR] [--size 64] [--count 300]

Both paths run in this process on the same files, one thread each, alternating rounds;
prints images/s and the ratio. This is why cnnzoo decodes with PIL: ``Image.draft`` lets
libjpeg decode at 1/2, 1/4 or 1/8 scale when the target is small, and the same code runs
without torch (predict and serve of an ONNX export).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--folder",
        default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "clothing-small" / "train"),
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.v2 import functional as F

    from cnnzoo.data.preprocess import load_image

    torch.set_num_threads(1)
    files = sorted(str(p) for p in Path(args.folder).rglob("*.jpg"))[: args.count]
    if not files:
        sys.exit(f"no JPEGs under {args.folder}")
    size = (args.size, args.size)
    pil_rates, tv_rates = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for f in files:
            load_image(f, size, 3)
        pil_rates.append(len(files) / (time.perf_counter() - start))
        start = time.perf_counter()
        for f in files:
            F.resize(decode_image(read_file(f), mode=ImageReadMode.RGB), list(size), antialias=True)
        tv_rates.append(len(files) / (time.perf_counter() - start))
    pil, tv = max(pil_rates), max(tv_rates)
    print(f"{len(files)} JPEGs from {args.folder} -> {args.size}x{args.size}, 1 thread, best of {args.rounds}")
    print(
        f"cnnzoo (PIL + draft): {pil:.0f} img/s   torchvision.io decode + resize: {tv:.0f} img/s   ratio {pil / tv:.2f}"
    )


if __name__ == "__main__":
    main()
