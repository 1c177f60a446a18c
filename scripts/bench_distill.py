#!/usr/bin/env python
"""Distillation against its baseline, in one invocation: the student alone, the student taught, the teacher.

    python scripts/bench_distill.py --data /path/to/clothing-dataset-small \\
        --teacher runs/clothing_transfer/1/best.pt --epochs 80

``--data`` holds train/ and validation/ (validation/ picks best.pt and is the held-out set scored
here: neither network trained on it). Three rows, one table:

  student      ``--student`` (clothing_recipe: the 64 px small ResNet) trained for ``--epochs``
  distilled    ``--distilled`` (clothing_distilled: the same network and recipe, with
               ``train.distill.teacher`` = ``--teacher``) for the same epochs
  teacher      ``--teacher`` scored on the same images

Columns: accuracy on validation/, parameters, images/s at batch 32 on this machine's threads (the
network alone, preprocessed images), the training command's wall time, and the teacher's share
of it (metrics.csv's ``teacher_seconds``: the cached mode's one pass over the training images,
or every batch's teacher in the live mode). A last line measures what ``train.distill.mode: live``
would add per epoch: the teacher on a batch at its own size, against the student's step.

``--costs-only`` trains nothing (minutes, not an hour, on a loaded machine): one training step of
the student (forward, backward, AdamW) on a batch of 32 at its size against the teacher's forward
pass on 32 images at its own size, both timed in the same invocation, and what that makes of the
live mode's step and of the cached mode's one pass (two views of each training image) per epoch.
``--seconds S`` times each network for S seconds instead (3 s, and 10 s with ``--costs-only``): a quick check.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a folder with train/ and validation/")
    parser.add_argument("--teacher", required=True, help="the teacher (a checkpoint or an export)")
    parser.add_argument("--epochs", type=int, default=80, help="epochs of both students (default: the recipe's 80)")
    parser.add_argument("--student", default="clothing_recipe", help="the student's config (default clothing_recipe)")
    parser.add_argument("--distilled", default="clothing_distilled", help="the taught student's config")
    parser.add_argument("--mode", default="auto", choices=["auto", "cached", "live"], help="train.distill.mode")
    parser.add_argument("--out", default="runs-bench-distill", help="where the runs go")
    parser.add_argument("--costs-only", action="store_true", help="time one step of each network, train nothing")
    parser.add_argument(
        "--seconds", type=float, default=None, help="timing window of each speed (default: 3 s, 10 s with --costs-only)"
    )
    args = parser.parse_args()
    if args.costs_only:
        images = sum(1 for f in (Path(args.data) / "train").rglob("*") if f.is_file())
        timing = {} if args.seconds is None else {"seconds": args.seconds}
        print(step_costs(args.distilled, Path(args.teacher), images=images, **timing))
        print(teacher_views(Path(args.teacher), Path(args.data) / "validation", args.distilled))
        return

    import cnnzoo
    from cnnzoo.console import console

    seconds = 3.0 if args.seconds is None else args.seconds
    root = Path(args.data)
    held_out = root / "validation"
    rows = []
    for name, config, extra in (
        ("student", args.student, []),
        (
            "distilled",
            args.distilled,
            [f"train.distill.teacher={Path(args.teacher).resolve()}", f"train.distill.mode={args.mode}"],
        ),
    ):
        overrides = [f"data.root={root.resolve()}", f"train.epochs={args.epochs}", *extra]
        start = time.perf_counter()
        with console.scoped(True):
            run = cnnzoo.train(config, overrides, out=args.out)
        wall = time.perf_counter() - start
        rows.append({"name": name, "model": run / "best.pt", "wall": wall, "teacher": teacher_seconds(run), "run": run})
    rows.append({"name": "teacher", "model": Path(args.teacher), "wall": None, "teacher": None, "run": None})
    for row in rows:
        with console.scoped(True):
            out = Path(args.out) / f"eval-{row['name']}"
            report = cnnzoo.evaluate(row["model"], data=held_out, html_report=False, progress=False, out=out)
        row.update(accuracy=report["accuracy"], images=report["num_images"], **speed(row["model"], seconds=seconds))
    print_table(rows, held_out)
    print(live_cost(Path(args.teacher), rows[0], seconds=seconds))
    print(teacher_views(Path(args.teacher), held_out, args.distilled))


def teacher_seconds(run: Path) -> float | None:
    """The teacher's seconds over the run (metrics.csv), None for a run without one."""
    with open(run / "metrics.csv", newline="") as f:
        values = [r.get("teacher_seconds") for r in csv.DictReader(f)]
    return sum(float(v) for v in values if v) if any(values) else None


def speed(model_path: Path, batch: int = 32, seconds: float = 3.0) -> dict:
    """Parameters and images/s of the network alone on a batch of preprocessed images."""
    import numpy as np

    import cnnzoo

    model = cnnzoo.load(model_path)
    module = getattr(model, "module", None)
    params = sum(p.numel() for p in module.parameters()) if module is not None else None
    pixels = np.random.default_rng(0).integers(0, 256, (batch, *model.image_size, model.channels), dtype=np.uint8)
    model.logits(pixels)  # warm up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or not done:
        model.logits(pixels)
        done += batch
    elapsed = time.perf_counter() - start
    return {
        "params": params,
        "images_per_s": done / elapsed,
        "batch_s": batch * elapsed / done,
        "classes": len(model.classes),
        "size": model.image_size[0],
    }


def print_table(rows: list[dict], held_out: Path) -> None:
    print(f"\nheld-out images: {rows[0]['images']} ({held_out}); images/s: batch 32, network alone")
    print(f"| {'model':10} | accuracy | parameters | images/s | training wall | teacher's share |")
    print(f"|{'-' * 12}|---------:|-----------:|---------:|--------------:|----------------:|")
    for r in rows:
        params = f"{r['params']:,}" if r["params"] is not None else "?"
        wall = f"{r['wall'] / 60:.1f} min" if r["wall"] is not None else "(separate)"
        share = f"{100 * r['teacher'] / r['wall']:.1f}% ({r['teacher']:.0f} s)" if r["teacher"] is not None else "-"
        line = f"| {r['name']:10} | {100 * r['accuracy']:7.2f}% | {params:>10} | {r['images_per_s']:8.0f} |"
        print(f"{line} {wall:>13} | {share:>15} |")


def live_cost(teacher: Path, student: dict, seconds: float = 3.0) -> str:
    """What the live mode would add: the teacher on one batch at its size, per epoch, against the
    student's own training seconds per epoch (metrics.csv)."""
    with open(student["run"] / "metrics.csv", newline="") as f:
        epochs = list(csv.DictReader(f))
    per_epoch = sum(float(r["seconds"]) for r in epochs) / len(epochs)
    images = float(epochs[-1]["images_per_s"]) * float(epochs[-1]["seconds"])
    teacher_s = speed(teacher, seconds=seconds)["batch_s"] / 32 * images
    return (
        f"live mode (train.distill.mode: live) would add about {teacher_s:.0f} s per epoch of {images:.0f} images "
        f"(the teacher at its own size) to the student's {per_epoch:.0f} s: "
        f"{100 * teacher_s / (teacher_s + per_epoch):.0f}% of the step"
    )


def teacher_views(teacher: Path, held_out: Path, config: str) -> str:
    """The teacher's held-out accuracy on what each mode shows it: the file at its own size
    (cached), and the student-size image resized up to its size (live, before augmentation)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    import cnnzoo
    from cnnzoo.config import load_config
    from cnnzoo.data import preprocess

    model = cnnzoo.load(teacher)
    size = load_config(config).data.image_size
    small_size = (size, size) if isinstance(size, int) else tuple(size)
    files = sorted(p for p in held_out.rglob("*") if p.is_file() and p.parent.name in model.classes)
    truth = np.array([model.classes.index(p.parent.name) for p in files])
    own, small = [], []
    for begin in range(0, len(files), 32):
        chunk = files[begin : begin + 32]
        own.append(model.logits(np.stack([model.preprocess(p) for p in chunk])).argmax(1))
        pixels = np.stack([preprocess.load_image(p, small_size, model.channels, preprocess.SQUASH) for p in chunk])
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
        up = F.interpolate(x, size=model.image_size, mode="bilinear", antialias=True).round().clamp(0, 255)
        small.append(model.logits(up.to(torch.uint8).permute(0, 2, 3, 1).numpy()).argmax(1))
    at_own, at_small = ((np.concatenate(p) == truth).mean() for p in (own, small))
    return (
        f"teacher on {len(files)} held-out images: {100 * at_own:.2f}% read at its own size (what the cached "
        f"mode asks it), {100 * at_small:.2f}% on the {small_size[0]} px image resized up (what the live mode shows it)"
    )


def step_costs(config: str, teacher: Path, *, images: int, batch: int = 32, seconds: float = 10.0) -> str:
    """One student training step against the teacher's forward pass, on batches of ``batch``."""
    import torch

    from cnnzoo.config import load_config
    from cnnzoo.model.layers import build_from_infos, trace_layers

    cfg = load_config(config)
    size = cfg.data.image_size if isinstance(cfg.data.image_size, int) else cfg.data.image_size[0]
    teacher_speed = speed(teacher, batch, seconds)
    net = build_from_infos(trace_layers(cfg.model.layers, (3, size, size), teacher_speed["classes"]))
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, teacher_speed["classes"], (batch,))
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or steps < 3:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
        steps += 1
    student_s = (time.perf_counter() - start) / steps
    teacher_s = teacher_speed["batch_s"]
    epoch = images / batch * student_s
    return (
        f"student step ({size} px, batch {batch}): {1000 * student_s:.0f} ms; teacher forward "
        f"({teacher_speed['size']} px, batch {batch}): {1000 * teacher_s:.0f} ms\n"
        f"live mode: the teacher is {100 * teacher_s / (teacher_s + student_s):.0f}% of each step "
        f"(an epoch of {images} images: {epoch:.0f} s -> {epoch + images / batch * teacher_s:.0f} s)\n"
        f"cached mode: one pass of {2 * images} teacher views, {2 * images / batch * teacher_s:.0f} s, "
        f"= {2 * teacher_s / student_s:.1f} student epochs, once; then nothing per step"
    )


if __name__ == "__main__":
    main()
