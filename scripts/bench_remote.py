#!/usr/bin/env python
"""Shards streamed from an S3-compatible server against the same shards on local disk, in one
invocation (issue 33, "figures").

    python scripts/bench_remote.py --data ../shared/datasets/clothing-small [--image-size 96]
        [--batch-size 32] [--workers 2] [--shard-size 256] [--train-epochs 1]

It writes the data as shards (``cnnzoo data shards``) into a temporary folder, starts moto's S3
server on 127.0.0.1 (``tests/support/s3_server.py``: a real server process, IAM checks on) and
uploads them, then measures, for the local folder and for ``s3://bench/set``:

  stream   one epoch of the training split through the stream training uses (ShardStream in
           ``--workers`` loader workers, decoded to the image size, no augmentation): images/s
  train    ``cnnzoo train`` of a small CNN for ``--train-epochs`` epochs (``--nproc N``: N processes
           through torchrun): images/s of its last epoch and its validation accuracy (metrics.csv;
           the two should be equal: the same samples in the same order)

and prints each pair with the ratio s3/local. moto keeps objects in its own memory and answers
over the loopback: the figure is what the fsspec/s3fs path costs, not a network.
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the S3 server helper the tests use


def stream_rate(root: str, *, size: int, batch: int, workers: int) -> tuple[float, int]:
    """Images/s of one epoch of the training split streamed from ``root``, and the images seen."""
    from cnnzoo.config import load_config
    from cnnzoo.data import shards
    from cnnzoo.data.sources import load_data

    spec = load_data(load_config({"data": {"root": root, "image_size": size}}))
    settings = shards.StreamSettings(size=spec.image_size, channels=3, batch_size=batch)
    stream = shards.ShardStream(spec.train, spec.classes, settings, train=True)
    loader = shards.StreamLoader(stream, workers=workers, pin_memory=False)
    start, seen = time.perf_counter(), 0
    for images, _ in loader:
        seen += len(images)
    return seen / (time.perf_counter() - start), seen


def train_rate(root: str, folder: Path, env: dict, *, size: int, batch: int, workers: int, epochs: int, nproc: int):
    """(images/s, val_acc) of the last epoch of ``cnnzoo train`` on ``root`` (a small CNN, streamed)."""
    import yaml

    config = {
        "name": "bench",
        "seed": 0,
        "data": {"root": root, "image_size": size, "workers": workers},
        "model": {
            "layers": [
                {"conv": {"out_channels": 16, "kernel_size": 3, "padding": 1}},
                "relu",
                "pool",
                {"conv": {"out_channels": 32, "kernel_size": 3, "padding": 1}},
                "relu",
                "gap",
                {"dense": {"out_features": "num_classes"}},
            ]
        },  # fmt: skip
        "train": {"epochs": epochs, "batch_size": batch, "lr": 0.003, "device": "cpu"},
    }
    folder.mkdir(parents=True)
    (folder / "c.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "cnnzoo", "train", "-c", "c.yaml", "--runs", "runs", "--quiet"]
    command += ["--nproc", str(nproc)] if nproc > 1 else []
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    with open(folder / "runs" / "bench" / "1" / "metrics.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    return float(last["images_per_s"]), float(last["val_acc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="An image folder or manifest to write as shards.")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--train-epochs", type=int, default=1)
    parser.add_argument("--nproc", type=int, default=1, help="Processes of the training phase (torchrun).")
    args = parser.parse_args()

    from cnnzoo.config import load_config
    from cnnzoo.data import shard_export

    from support.s3_server import start_s3

    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        local = Path(tmp) / "shards"
        cfg = load_config({"data": {"root": args.data, "image_size": args.image_size}})
        shard_export.write_source(cfg, local, shard_size=args.shard_size)
        s3 = start_s3()
        try:
            client = s3.client()
            client.create_bucket(Bucket="bench")
            for path in sorted(local.rglob("*")):
                if path.is_file():
                    client.upload_file(str(path), "bench", f"set/{path.relative_to(local).as_posix()}")
            os.environ.update(s3.env)  # the standard variables: s3fs reads them, in this process and its children
            env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
            roots = {"local": str(local), "s3": "s3://bench/set"}
            size, batch, workers = args.image_size, args.batch_size, args.workers
            print(f"shards: {local} and s3://bench/set (moto_server at {s3.endpoint}); {workers} loader workers")
            rates: dict[str, dict[str, float]] = {"stream": {}, "train": {}}
            for name, root in roots.items():
                rate, seen = stream_rate(root, size=size, batch=batch, workers=workers)
                rates["stream"][name] = rate
                print(f"  stream {name:<5}  {rate:8.0f} images/s  ({seen} images, {size}x{size})")
            for name, root in roots.items():
                folder = Path(tmp) / f"train-{name}"
                rate, accuracy = train_rate(
                    root,
                    folder,
                    env,
                    size=size,
                    batch=batch,
                    workers=workers,
                    epochs=args.train_epochs,
                    nproc=args.nproc,
                )
                rates["train"][name] = rate
                print(
                    f"  train  {name:<5}  {rate:8.0f} images/s  (last of {args.train_epochs} epochs, "
                    f"{args.nproc} process{'es' * (args.nproc > 1)}; val_acc {accuracy:.4f})"
                )
        finally:
            s3.stop()
    for phase, pair in rates.items():
        print(f"ratio {phase} s3/local: {pair['s3'] / pair['local']:.2f}")


if __name__ == "__main__":
    main()
