#!/usr/bin/env python
"""Data sources, measured against each other in one invocation (issue 18, "Measured").

    python scripts/bench_data.py --data ../shared/datasets/clothing-small [--image-size 96]
        [--batch-size 32] [--workers 1] [--epochs 2] [--ddp] [--clothing-epochs N]

Each phase runs in its own child process (so its peak memory is its own):

  folder     the loader the course teaches: torchvision ImageFolder + PIL transforms
             (RandomResizedCrop from the full image, horizontal flip, to tensor) + DataLoader,
             no cache: images/s over the training images, epochs 2..N
  streamed   the class folders streamed by cnnzoo (data.cache: none), the same augmentation
  shards     the same images as WebDataset shards (cnnzoo data shards), streamed by cnnzoo
             (decoded in the same number of workers, the same augmentation): images/s
  rss-1x     peak RSS (the process and its loader workers) streaming the shards once...
  rss-10x    ...and streaming ten times as many images (the shards repeated)

and prints images/s with the ratio shards/folder, and the peak RSS ratio 10x/1x. Optional:

  --ddp              two gloo processes train on the shards (``cnnzoo train --nproc 2``): the
                     steps each took, and ``evaluate`` of the checkpoint against its val_acc
  --clothing-epochs  trains the same config on the class folders and on the same images listed
                     in a Kaggle-style images.csv (same seed): both validation accuracies
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest joined worker
    return (own + workers) / 1024  # Linux: KiB


def timed_epochs(loader, epochs: int, set_epoch=None) -> tuple[float, int]:
    """Images/s over epochs 2..N (epoch 1 starts the workers and warms the page cache)."""
    seen, seconds = 0, 0.0
    for epoch in range(1, epochs + 1):
        if set_epoch is not None:
            set_epoch(epoch)
        start, count = time.perf_counter(), 0
        for _images, labels in loader:
            count += len(labels)
        if epoch > 1 or epochs == 1:
            seen, seconds = seen + count, seconds + time.perf_counter() - start
    return seen / seconds, seen


def phase_folder(args) -> dict:
    import torch
    from torchvision import datasets, transforms

    size = args.image_size
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True),
            transforms.RandomHorizontalFlip(),
            transforms.PILToTensor(),
        ]
    )
    dataset = datasets.ImageFolder(str(Path(args.data) / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True
    )
    rate, seen = timed_epochs(loader, args.epochs)
    return {"images_per_s": rate, "images": seen, "peak_rss_mb": peak_rss_mb()}


def stream(args, root: str):
    from cnnzoo.config import load_config
    from cnnzoo.console import console
    from cnnzoo.data import augment, shards
    from cnnzoo.data.sources import load_data

    cfg = load_config({"data": {"root": root, "image_size": args.image_size}})
    with console.scoped(True):
        spec = load_data(cfg)
    aug = load_config({"data": {"augment": {"random_resized_crop": [0.5, 1.0], "hflip": True}}}).data.augment
    settings = shards.StreamSettings(
        size=spec.image_size,
        channels=3,
        batch_size=args.batch_size,
        augment=augment.build_augment(aug, spec.image_size),
        full_resolution=True,
        crop_min_area=0.5,
    )
    data = shards.ShardStream(spec.train, spec.classes, settings, train=True)
    return shards.StreamLoader(data, workers=args.workers, pin_memory=False), data


def phase_shards(args) -> dict:
    loader, data = stream(args, args.shards)
    rate, seen = timed_epochs(loader, args.epochs, data.set_epoch)
    return {"images_per_s": rate, "images": seen, "peak_rss_mb": peak_rss_mb()}


def phase_streamed(args) -> dict:
    """The class folders streamed by cnnzoo (``data.cache: none``): same crop, flip and workers."""
    from cnnzoo.config import load_config
    from cnnzoo.console import console
    from cnnzoo.data import augment, loaders
    from cnnzoo.data.sources import load_data

    aug = {"random_resized_crop": [0.5, 1.0], "hflip": True}
    cfg = load_config({"data": {"root": args.data, "image_size": args.image_size, "cache": "none", "augment": aug}})
    with console.scoped(True):
        spec = load_data(cfg)
    pipeline = augment.build_augment(cfg.data.augment, spec.image_size)
    data = loaders.ImageDataset(spec.train, spec.image_size, 3, augment=pipeline, crop_min_area=0.5)
    loader = loaders.make_loader(data, args.batch_size, shuffle=True, seed=0, workers=args.workers)
    rate, seen = timed_epochs(loader, args.epochs, loader.batch_sampler.set_epoch)
    return {"images_per_s": rate, "images": seen, "peak_rss_mb": peak_rss_mb()}


def phase_rss(args) -> dict:
    loader, data = stream(args, args.shards)
    rate, seen = timed_epochs(loader, 1, data.set_epoch)
    return {"images": seen, "images_per_s": rate, "peak_rss_mb": peak_rss_mb()}


def child(phase: str, args, **extra: str) -> dict:
    command = [sys.executable, __file__, "--phase", phase, *sys.argv[1:]]
    for key, value in extra.items():
        command += [f"--{key}", value]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"phase {phase} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def repeated(shard_dir: Path, out: Path, times: int) -> Path:
    """The shard set with its training shards listed ``times`` times (hard links, not copies: the
    index may only name files inside its folder, and a symbolic link out of it is refused)."""
    index = json.loads((shard_dir / "dataset.json").read_text())
    train = index["splits"]["train"]
    out.mkdir()
    for split in ("train", "validation"):
        (out / split).mkdir()
    names = []
    for k in range(times):
        for name in train["shards"]:
            target = out / "train" / f"r{k}-{Path(name).name}"
            os.link((shard_dir / name).resolve(), target)
            names.append(f"train/{target.name}")
    for name in index["splits"]["validation"]["shards"]:
        os.link((shard_dir / name).resolve(), out / name)
    train.update(shards=names, counts=train["counts"] * times, class_counts=[n * times for n in train["class_counts"]])
    (out / "dataset.json").write_text(json.dumps(index))
    return out


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnzoo", *args], cwd=cwd, capture_output=True, text=True)


def tiny_yaml(folder: Path, epochs: int, size: int) -> Path:
    import yaml

    cfg = {
        "name": "bench",
        "seed": 0,
        "data": {"image_size": size, "workers": 1, "augment": {"hflip": True}},
        "model": {
            "layers": [
                {"conv": {"out_channels": 16, "kernel_size": 3, "padding": 1}},
                "batchnorm",
                "relu",
                "pool",
                {"conv": {"out_channels": 32, "kernel_size": 3, "padding": 1}},
                "relu",
                "pool",
                "flatten",
                {"dense": {"out_features": "num_classes"}},
            ]
        },
        "train": {"epochs": epochs, "batch_size": 32, "lr": 0.003, "ddp_timeout": 300},
    }
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def last_val_acc(run: Path) -> float:
    import csv

    with open(run / "metrics.csv", newline="") as f:
        return float(list(csv.DictReader(f))[-1]["val_acc"])


def ddp_check(shard_dir: Path, work: Path, size: int) -> None:
    config = tiny_yaml(work, 2, size)
    done = run_cli("train", "-c", str(config), "--data", str(shard_dir), "--nproc", "2", "--runs", "runs", cwd=work)
    if done.returncode:
        sys.exit(f"ddp run failed:\n{done.stderr[-3000:]}")
    steps = [line for line in done.stdout.splitlines() if "steps of" in line]
    run = work / "runs" / "bench" / "1"
    report = run_cli("evaluate", str(run / "last.pt"), "--split", "validation", "--json", cwd=work)
    accuracy = json.loads(report.stdout)["accuracy"]
    print(f"ddp: {steps[0].split(': ', 1)[-1] if steps else '(no steps line)'}")
    print(f"ddp: evaluate accuracy {accuracy:.6f}, recorded val_acc {last_val_acc(run):.6f}")


def clothing_check(data: Path, work: Path, size: int, epochs: int) -> None:
    """The class folders and a Kaggle-style images.csv of the same files: the same seed, both val_acc."""
    kaggle = work / "kaggle"
    (kaggle / "images").mkdir(parents=True)
    lines = ["image,sender_id,label,kids,split"]
    for path in sorted(data.glob("*/*/*")):
        if path.is_file():
            image_id = f"{path.parent.parent.name}-{path.parent.name}-{path.stem}"
            os.symlink(path.resolve(), kaggle / "images" / f"{image_id}{path.suffix}")
            lines.append(f"{image_id},0,{path.parent.name},False,{path.parent.parent.name}")
    (kaggle / "images.csv").write_text("\n".join(lines) + "\n")
    config = tiny_yaml(work, epochs, size)
    results = {}
    for name, source in (("folders", str(data)), ("csv", str(kaggle / "images.csv"))):
        done = run_cli("train", "-c", str(config), "--data", source, "--name", name, "--runs", "runs", cwd=work)
        if done.returncode:
            sys.exit(f"{name} run failed:\n{done.stderr[-3000:]}")
        results[name] = last_val_acc(work / "runs" / name / "1")
    print(f"clothing: val_acc after {epochs} epochs: folders {results['folders']:.4f}, csv {results['csv']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/clothing-small"))
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--ddp", action="store_true")
    parser.add_argument("--clothing-epochs", type=int, default=0)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phases = {"folder": phase_folder, "shards": phase_shards, "streamed": phase_streamed, "rss": phase_rss}
        print(json.dumps(phases[args.phase](args)))
        return
    args.data = str(Path(args.data).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        wrote = run_cli("data", "shards", args.data, str(work / "shards"), "--shard-size", "200", cwd=work)
        if wrote.returncode:
            sys.exit(wrote.stderr)
        ten = repeated(work / "shards", work / "shards10", 10)
        print(f"load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores")
        folder = child("folder", args)
        shards = child("shards", args, shards=str(work / "shards"))
        ratio = shards["images_per_s"] / folder["images_per_s"]
        print(f"folder (ImageFolder): {folder['images_per_s']:8.1f} images/s")
        print(f"shards (streamed):    {shards['images_per_s']:8.1f} images/s   ratio {ratio:.2f}x")
        folders = child("streamed", args)
        ratio = folders["images_per_s"] / folder["images_per_s"]
        print(f"folders (cache none): {folders['images_per_s']:8.1f} images/s   ratio {ratio:.2f}x")
        one = child("rss", args, shards=str(work / "shards"))
        many = child("rss", args, shards=str(ten))
        rss_ratio = many["peak_rss_mb"] / one["peak_rss_mb"]
        print(
            f"peak RSS streaming {one['images']} images: {one['peak_rss_mb']:.0f} MB; "
            f"{many['images']} images: {many['peak_rss_mb']:.0f} MB   ratio {rss_ratio:.3f}"
        )
        if args.ddp:
            ddp_check(work / "shards", work, args.image_size)
        if args.clothing_epochs:
            clothing_check(Path(args.data), work, args.image_size, args.clothing_epochs)
        shutil.rmtree(work / "runs", ignore_errors=True)


if __name__ == "__main__":
    main()
