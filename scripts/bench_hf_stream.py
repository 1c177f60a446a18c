#!/usr/bin/env python
"""A Hugging Face dataset streamed against decoded into the cache: the first epoch's time, in one
invocation (issue 33, "Streamed HF datasets").

    python scripts/bench_hf_stream.py --data ../shared/datasets/clothing-small [--images 300]
        [--image-size 96] [--batch-size 32] [--workers 1]

The first ``--images`` training images of the class folders (and a quarter as many validation
images) are written with ``save_to_disk``; each phase then runs in its own child process with its
own empty cache folder, from reading the dataset to the end of one pass over the training batches:

  cached     data.stream: false, data.cache: ram: every image decoded into the cache, then the epoch
  streamed   data.stream: true: decoded batch by batch in the loader workers as the epoch reads them

and prints both times and the ratio streamed/cached (the streamed epoch takes full batches only).
Without ``--data``, random 64x64 pictures are used.
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


def write_dataset(data: Path | None, images: int, out: Path) -> None:
    import datasets
    import numpy as np
    from PIL import Image

    def split(folder: Path | None, n: int, seed: int) -> dict:
        if folder is None:
            rng = np.random.default_rng(seed)  # random pictures when no data is given
            pictures = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]
            return {"image": pictures, "label": [i % 2 for i in range(n)]}
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        files = sorted((c, f) for c, name in enumerate(classes) for f in (folder / name).iterdir())
        picked = files[:: max(1, len(files) // n)][:n]
        return {"image": [Image.open(f) for _, f in picked], "label": [c for c, _ in picked]}

    names = sorted(p.name for p in (data / "train").iterdir() if p.is_dir()) if data else ["a", "b"]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    parts = {
        "train": split(data / "train" if data else None, images, 0),
        "validation": split(data / "validation" if data else None, max(8, images // 4), 10_000),
    }
    dataset = datasets.DatasetDict({k: datasets.Dataset.from_dict(v, features=features) for k, v in parts.items()})
    datasets.disable_progress_bars()
    dataset.save_to_disk(str(out))


def phase(root: str, stream: bool, size: int, batch: int, workers: int) -> dict:
    import datasets  # noqa: F401  imported before the clock starts, as torch is: both phases need them
    import torch  # noqa: F401

    from cnnzoo.config import load_config
    from cnnzoo.console import console
    from cnnzoo.data.sources import build_loaders, load_data

    console.quiet = True
    data = {"root": root, "image_size": size, "workers": workers, "stream": stream, "cache": "ram"}
    cfg = load_config({"seed": 0, "data": data, "train": {"batch_size": batch}})
    start = time.perf_counter()
    spec = load_data(cfg)
    loaders = build_loaders(cfg, spec, augment=None, cuda=False)
    seen = sum(len(labels) for _images, labels, *_ in loaders.train)
    return {"seconds": time.perf_counter() - start, "images": seen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--phase", choices=["cached", "streamed"], default=None)
    parser.add_argument("--root", default=None)
    args = parser.parse_args()
    if args.phase:
        got = phase(args.root, args.phase == "streamed", args.image_size, args.batch_size, args.workers)
        print(json.dumps(got))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "hf"
        write_dataset(args.data.resolve() if args.data else None, args.images, root)
        results = {}
        for name in ("cached", "streamed"):
            command = [sys.executable, __file__, "--phase", name, "--root", str(root)]
            command += ["--image-size", str(args.image_size), "--batch-size", str(args.batch_size)]
            command += ["--workers", str(args.workers)]
            env = {**__import__("os").environ, "CNNZOO_HOME": str(Path(tmp) / f"home-{name}")}
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
            seconds, images = results[name]["seconds"], results[name]["images"]
            print(f"{name:9} first epoch {seconds:.2f} s ({images} images, {images / seconds:.1f} images/s)")
        ratio = results["streamed"]["seconds"] / results["cached"]["seconds"]
        print(f"ratio streamed/cached: {ratio:.2f}")


if __name__ == "__main__":
    main()
