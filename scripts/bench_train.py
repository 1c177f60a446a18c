#!/usr/bin/env python
"""Training throughput of cnnzoo against a course-style loop and the compute-only limit.

    python scripts/bench_train.py --config configs/clothing.yaml --set data.root=DATA [--epochs 3] [--set k=v ...]

One invocation measures, each phase in its own child process (so peak memory is its own):

  cache      decoding every training image once into cnnzoo's uint8 cache (images/s)
  cnnzoo     cnnzoo's training loop, steady state: mean images/s of epochs 2..N
             (epoch 1 warms up; the cache is built before epoch 1)
  reference  the loop the course teaches: torchvision ImageFolder + PIL transforms
             (Resize, the config's augmentations, ToTensor, Normalize) + DataLoader,
             same model, optimizer and batch size
  limit      the same model and optimizer stepping on random tensors already in memory

and prints images/s, the ratios cnnzoo/limit and cnnzoo/reference, and peak RSS.
With ``--baseline-set k=v`` (repeatable) the cnnzoo phase runs a second time with those overrides
on top (e.g. ``data.augment.where=image``, the per-image path) and both are compared.
Validation time is excluded everywhere: all figures are training steps only.

Every phase runs on the config's device (``--set train.device=cuda``) in the same
precision: with ``train.amp: auto`` a first child process makes the choice cnnzoo
makes (a float32 vs autocast probe) and every phase is then pinned to it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class Setup:
    """The config's data, model and optimizer, on the config's device, in its precision."""

    def __init__(self, args):
        import torch

        from cnnzoo.config import load_config
        from cnnzoo.console import console
        from cnnzoo.runtime.device import amp_dtype, pick_device, prefers_channels_last
        from cnnzoo.training.inputs import load_data
        from cnnzoo.training.recipe import OptimizerSettings, make_optimizer
        from cnnzoo.training.setup import build_for_data

        self.cfg = load_config(args.config, args.set)
        with console.scoped(True):  # the data's own lines are training's, not this benchmark's
            self.spec = load_data(self.cfg)
            self.infos, model = build_for_data(self.cfg, self.spec)
        torch.manual_seed(self.cfg.seed)
        t = self.cfg.train
        self.device = pick_device(t.device)
        self.dtype = amp_dtype(t.amp, self.device)
        self.channels_last = prefers_channels_last(self.device) if t.channels_last == "auto" else bool(t.channels_last)
        self.model = model.to(
            self.device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
        )
        self.optimizer = make_optimizer(self.model, OptimizerSettings.of(t))

    def autocast(self):
        import contextlib

        import torch

        return contextlib.nullcontext() if self.dtype is None else torch.autocast(self.device.type, dtype=self.dtype)

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()


def phase_precision(args) -> dict:
    """What ``train.amp: auto`` resolves to here, measured as cnnzoo measures it."""
    from cnnzoo.runtime.device import choose_amp, measure_amp

    s = Setup(args)
    if s.cfg.train.amp != "auto" or s.dtype is None:
        return {"amp": s.cfg.train.amp if s.dtype is not None else "none", "images_per_s": 0.0}
    rates = measure_amp(
        s.model,
        (s.cfg.train.batch_size, s.spec.channels, *s.spec.image_size),
        num_outputs=s.infos[-1].output_shape[0],
        device=s.device,
        candidate=s.dtype,
        channels_last=s.channels_last,
    )
    chosen = choose_amp(rates, s.dtype)
    return {
        "amp": {None: "none", "torch.bfloat16": "bf16", "torch.float16": "fp16"}[str(chosen) if chosen else None],
        "rates": rates,
        "images_per_s": 0.0,
    }


def phase_cache(args) -> dict:
    from cnnzoo.data.cache import decode_all
    from cnnzoo.runtime.device import cpu_count

    s = Setup(args)
    spec = s.spec
    decoded = decode_all(spec.train, spec.image_size, spec.channels, kind="ram", cache_dir=None, workers=cpu_count())
    n = len(spec.train)
    return {
        "images_per_s": n / decoded.seconds,
        "seconds": decoded.seconds,
        "cache_bytes": decoded.pixels.numel(),
        "uint8_bytes": n * spec.channels * spec.image_size[0] * spec.image_size[1],
    }


def phase_cnnzoo(args) -> dict:
    import csv

    from cnnzoo.training.run import train

    with tempfile.TemporaryDirectory() as tmp:
        run = train(args.config, list(args.set) + [f"train.epochs={args.epochs}"], out=tmp, quiet=True)
        with open(run / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
    steady = rows[1:] if len(rows) > 1 else rows
    return {
        "images_per_s": sum(float(r["images_per_s"]) for r in steady) / len(steady),
        "first_epoch_images_per_s": float(rows[0]["images_per_s"]),
        "data_wait": sum(float(r["data_wait"]) for r in steady) / len(steady),
    }


def _step(s: Setup, x, y):
    import torch.nn.functional as F

    with s.autocast():
        loss = F.cross_entropy(s.model(x), y)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    s.optimizer.step()


def phase_reference(args) -> dict:
    import torch
    from torchvision import datasets, transforms

    s = Setup(args)
    cfg, spec = s.cfg, s.spec
    aug = cfg.data.augment
    steps = [transforms.Resize(spec.image_size)]
    if aug.random_resized_crop:
        steps = [transforms.RandomResizedCrop(spec.image_size, scale=tuple(aug.random_resized_crop))]
    if aug.hflip:
        steps.append(transforms.RandomHorizontalFlip(0.5 if aug.hflip is True else aug.hflip))
    if aug.rotation:
        steps.append(transforms.RandomRotation(aug.rotation))
    steps += [transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)]
    train_dir = Path(spec.root) / "train" if (Path(spec.root) / "train").is_dir() else Path(spec.root)
    dataset = datasets.ImageFolder(str(train_dir), transform=transforms.Compose(steps))
    cuda = s.device.type == "cuda"
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, pin_memory=cuda)
    s.model.train()
    rates = []
    for _ in range(args.epochs):
        seen, start = 0, time.perf_counter()
        for x, y in loader:
            x = x.to(s.device, non_blocking=True)
            if s.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            _step(s, x, y.to(s.device, non_blocking=True))
            seen += len(y)
        s.sync()
        rates.append(seen / (time.perf_counter() - start))
    steady = rates[1:] if len(rates) > 1 else rates
    return {"images_per_s": sum(steady) / len(steady)}


def phase_limit(args) -> dict:
    import torch

    s = Setup(args)
    spec, batch = s.spec, s.cfg.train.batch_size
    x = torch.randn(batch, spec.channels, *spec.image_size, device=s.device)
    y = torch.randint(0, len(spec.classes), (batch,), device=s.device)
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    s.model.train()
    steps = max(1, len(spec.train) // batch)
    for _ in range(5):
        _step(s, x, y)
    rates = []
    for _ in range(max(1, args.epochs - 1)):
        s.sync()
        start = time.perf_counter()
        for _ in range(steps):
            _step(s, x, y)
        s.sync()
        rates.append(steps * batch / (time.perf_counter() - start))
    return {"images_per_s": sum(rates) / len(rates)}


PHASES = {"cache": phase_cache, "cnnzoo": phase_cnnzoo, "reference": phase_reference, "limit": phase_limit}
INTERNAL = {"precision": phase_precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per loop (the first is warm-up)")
    parser.add_argument("--set", action="append", default=[], help="config override, repeatable")
    parser.add_argument("--phase", choices=list(PHASES) + list(INTERNAL), help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", choices=list(PHASES), help="run only these phases")
    parser.add_argument(
        "--baseline-set", action="append", default=[], help="override for a second cnnzoo run to compare, repeatable"
    )
    args = parser.parse_args()

    if args.phase:  # child process: one phase, one JSON line
        result = {**PHASES, **INTERNAL}[args.phase](args)
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return

    import torch

    print(
        f"bench_train: {args.config} {' '.join(args.set)}, {args.epochs} epochs per loop, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores"
    )

    def child(phase: str, extra: tuple[str, ...] = ()) -> dict:
        cmd = [sys.executable, __file__, "--config", args.config, "--epochs", str(args.epochs), "--phase", phase]
        for s in [*args.set, *extra]:
            cmd += ["--set", s]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"phase {phase} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    precision = child("precision")
    args.set.append(f"train.amp={precision['amp']}")  # every phase in the same precision
    print(
        f"precision: train.amp={precision['amp']}"
        + (f" (auto: probe {precision['rates']})" if "rates" in precision else "")
    )
    results = {}
    phases = [(phase, ()) for phase in args.only or list(PHASES)]
    if args.baseline_set:
        phases.append(("baseline", tuple(args.baseline_set)))
    for phase, extra in phases:
        start = time.perf_counter()
        results[phase] = child("cnnzoo" if extra else phase, extra)
        r = results[phase]
        print(
            f"  {phase:<10} {r['images_per_s']:8.1f} img/s   peak RSS {r['peak_rss_mb']:7.0f} MB   "
            f"({time.perf_counter() - start:.0f}s)",
            flush=True,
        )
    if "cache" in results:
        c = results["cache"]
        print(
            f"cache: {c['images_per_s']:.0f} img/s to build; {c['cache_bytes'] / 2**20:.1f} MB "
            f"= {c['cache_bytes'] / c['uint8_bytes']:.2f}x the uint8 size of the images"
        )
    if "cnnzoo" in results:
        z = results["cnnzoo"]
        print(
            f"cnnzoo: first epoch {z['first_epoch_images_per_s']:.1f} img/s, steady data wait "
            f"{100 * z['data_wait']:.1f}% of step time"
        )
        for other in ("limit", "reference", "baseline"):
            if other in results:
                print(f"ratio cnnzoo/{other}: {z['images_per_s'] / results[other]['images_per_s']:.3f}")
    if "baseline" in results:
        b = results["baseline"]
        print(f"baseline ({' '.join(args.baseline_set)}): steady data wait {100 * b['data_wait']:.1f}% of step time")
        if "limit" in results:
            print(f"ratio baseline/limit: {b['images_per_s'] / results['limit']['images_per_s']:.3f}")


if __name__ == "__main__":
    main()
