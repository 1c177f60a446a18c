#!/usr/bin/env python
"""Prediction speed: CLI cold start against importing torch, batch throughput against compute.

    python scripts/bench_predict.py [--checkpoint runs/latest/best.pt] [--images DIR] [--repeat 5] [--warm 1]

In one invocation, alternating so that both see the same machine state:
  * cold start: wall time of ``cnnzoo predict ONE.jpg --checkpoint C`` (a new process,
    loading the checkpoint and printing the answer) against
    ``python -c "import torch, torchvision"``; medians of --repeat runs and their ratio;
  * batch throughput: ``Model.predict`` over every image in --images (decode, resize,
    normalise, forward) against the same model's forward alone on random tensors of the
    same batch size and memory format (inference mode), best of 3 alternating rounds,
    in images/s and as a ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="default: runs/latest's best.pt")
    parser.add_argument("--images", default=None, help="folder of images (default: the checkpoint's validation split)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warm", type=int, default=1, help="untimed runs of each command first (file cache)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    import torch
    from benchlib import checkpoint_and_images

    from cnnzoo.inference.torch_models import load_torch as load

    checkpoint, folder, images = checkpoint_and_images(args.checkpoint, args.images)
    model = load(checkpoint, device="cpu")
    print(
        f"bench_predict: {checkpoint}, {len(images)} images from {folder}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )

    cnnzoo_bin = Path(sys.executable).with_name("cnnzoo")
    predict_cmd = [
        str(cnnzoo_bin) if cnnzoo_bin.exists() else sys.executable,
        *([] if cnnzoo_bin.exists() else ["-m", "cnnzoo.cli"]),
        "predict",
        images[0],
        "--checkpoint",
        str(checkpoint),
    ]
    import_cmd = [sys.executable, "-c", "import torch, torchvision"]
    for _ in range(args.warm):  # warm the file cache for both
        wall(import_cmd), wall(predict_cmd)
    imports, predicts = [], []
    for _ in range(args.repeat):
        imports.append(wall(import_cmd))
        predicts.append(wall(predict_cmd))
    t_import, t_predict = statistics.median(imports), statistics.median(predicts)
    print(
        f"cold start: cnnzoo predict one image {t_predict:.2f}s, import torch+torchvision {t_import:.2f}s, "
        f"ratio {t_predict / t_import:.2f} (medians of {args.repeat})"
    )

    model.predict(images[: args.batch_size], batch_size=args.batch_size)  # warm-up
    x = torch.randn(args.batch_size, model.channels, *model.image_size)
    if model.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    batches = max(3, len(images) // args.batch_size)
    predict_rates, compute_rates = [], []
    for _ in range(3):  # alternate, keep the best of each
        start = time.perf_counter()
        records = model.predict(images, batch_size=args.batch_size)
        predict_rates.append(len(records) / (time.perf_counter() - start))
        with torch.inference_mode():
            start = time.perf_counter()
            for _ in range(batches):
                model.module(x)
            compute_rates.append(batches * args.batch_size / (time.perf_counter() - start))
    predict_rate, compute_rate = max(predict_rates), max(compute_rates)
    print(
        f"batch prediction: {predict_rate:.0f} img/s end to end, {compute_rate:.0f} img/s forward only, "
        f"ratio {predict_rate / compute_rate:.2f}"
    )


if __name__ == "__main__":
    main()
