#!/usr/bin/env python
"""``data.resize`` compared (issue #30): the same run with squash, letterbox and crop, nothing else
changed (same seed, epochs and data), each scored on validation and on a held-out split.

    # the built-in set of long, thin objects (generated into a temporary folder):
    python scripts/compare_resize.py --thin-objects
    # any config and data, e.g. the clothing transfer config:
    python scripts/compare_resize.py --config configs/clothing_transfer.yaml \\
        --set data.root=/path/to/clothing-small --set model.layers.0.backbone.weights=/path/to/lite0.pth

Held-out images: ``--holdout F`` (default 0.1) of each class of ``train/`` is moved into a test
split that no row trains or selects best.pt on (``scripts/ablation_recipe.py``'s manifest), and
``cnnzoo evaluate`` scores each row's best.pt on it.

The thin objects: each picture is one bar drawn across a strip 3 to 6 times as wide as it is tall,
with a cap at either end (a disc, an arrowhead or a square block). The class is the pair of caps
(six classes: disc-disc, disc-arrow, ... block-block); which cap is on the left is random, so a
mirrored picture keeps its class and ``hflip`` is a fair augmentation. The bar between the caps
looks the same in every class (its colour, thickness and stripes are drawn independently of the
class), so a centre crop to a square, which keeps the middle third of a 3:1 strip and the middle
sixth of a 6:1 one, sees none of what tells the classes apart: the caps end at most 30% of the
width in from each end. Squash and letterbox keep both caps (squashed thin, or small).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from itertools import combinations_with_replacement
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation_recipe import holdout_manifest, run_row  # noqa: E402  (the scripts folder, just added)

CAPS = ("disc", "arrow", "block")
CLASSES = [f"{a}-{b}" for a, b in combinations_with_replacement(CAPS, 2)]
HEIGHT = 48  # pixels; the width is 3 to 6 times this


def draw_cap(d: ImageDraw.ImageDraw, kind: str, box: tuple[float, float, float, float], outward: int, colour) -> None:
    """A cap in ``box`` (x0, y0, x1, y1); an arrowhead points ``outward`` (-1 left, +1 right)."""
    x0, y0, x1, y1 = box
    if kind == "disc":
        d.ellipse(box, fill=colour)
    elif kind == "block":
        d.rectangle(box, fill=colour)
    else:
        tip, base = (x0, x1) if outward < 0 else (x1, x0)
        d.polygon([(base, y0), (base, y1), (tip, (y0 + y1) / 2)], fill=colour)


def draw_thin_object(caps: tuple[str, str], rng: np.random.Generator) -> Image.Image:
    """One long, thin picture of class ``caps`` (see the module docstring)."""
    width = round(HEIGHT * rng.uniform(3, 6))
    background = rng.integers(170, 256, 3)
    noise = rng.integers(-25, 26, (HEIGHT, width, 3))
    img = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    colour = tuple(int(v) for v in rng.integers(0, 110, 3))
    middle = HEIGHT / 2 + rng.uniform(-0.1, 0.1) * HEIGHT
    thick, cap = rng.uniform(0.2, 0.3) * HEIGHT, rng.uniform(0.6, 0.8) * HEIGHT
    left, right = rng.uniform(0.03, 0.08) * width, width - rng.uniform(0.03, 0.08) * width
    d.rectangle((left + cap / 2, middle - thick / 2, right - cap / 2, middle + thick / 2), fill=colour)
    stripe = tuple(int(v) for v in rng.integers(0, 256, 3))
    for _ in range(int(rng.integers(0, 4))):  # stripes on the bar, whatever the class
        x = rng.uniform(left + cap, right - cap)
        d.rectangle((x, middle - thick / 2, x + 3, middle + thick / 2), fill=stripe)
    first, second = caps if rng.random() < 0.5 else caps[::-1]
    draw_cap(d, first, (left, middle - cap / 2, left + cap, middle + cap / 2), -1, colour)
    draw_cap(d, second, (right - cap, middle - cap / 2, right, middle + cap / 2), +1, colour)
    return img


def write_thin_objects(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """``root/<split>/<class>/*.png``, ``per_class[split]`` pictures of each class."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            caps = tuple(name.split("-"))
            for i in range(count):
                draw_thin_object(caps, rng).save(folder / f"{name}_{i:04d}.png")
    return root


def thin_objects_config(root: Path, epochs: int) -> dict:
    """A small from-scratch CNN for the thin objects at 64x64."""
    layers: list = []
    for width in (16, 32, 64):  # conv -> batchnorm -> relu -> pool, three times
        layers += [{"conv": {"out_channels": width, "kernel_size": 3, "padding": 1}}, "batchnorm", "relu", "pool"]
    layers += ["gap", {"dense": {"out_features": "num_classes"}}]
    return {
        "name": "thin_objects",
        "seed": 0,
        "data": {"root": str(root), "image_size": 64, "augment": {"hflip": True}},
        "model": {"layers": layers},
        "train": {"epochs": epochs, "batch_size": 32, "optimizer": "adam", "lr": 0.003, "scheduler": "cosine"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a config to compare on (or --thin-objects)")
    parser.add_argument("--thin-objects", action="store_true", help="generate the long, thin objects and use them")
    parser.add_argument("--per-class", type=int, default=150, help="thin objects: training pictures per class")
    parser.add_argument("--epochs", type=int, default=15, help="thin objects: epochs")
    parser.add_argument("--modes", nargs="*", default=["squash", "letterbox", "crop"])
    parser.add_argument("--set", action="append", default=[], help="override for every row, repeatable")
    parser.add_argument("--holdout", type=float, default=0.1, help="fraction of train/ held out as the test split")
    args = parser.parse_args()
    if bool(args.config) == args.thin_objects:
        parser.error("give --config FILE or --thin-objects")

    from cnnzoo.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        config = args.config
        if args.thin_objects:
            counts = {"train": args.per_class, "validation": max(2, args.per_class // 4)}
            root = write_thin_objects(Path(tmp) / "thin-objects", counts)
            config = str(Path(tmp) / "thin_objects.yaml")
            Path(config).write_text(yaml.safe_dump(thin_objects_config(root, args.epochs)))
            print(
                f"thin objects: {len(CLASSES)} classes, {counts['train']} train and {counts['validation']} "
                f"validation pictures each, {HEIGHT} px tall, 3-6x as wide"
            )
        root = Path(load_config(config, args.set).data.root)
        test_data = holdout_manifest(root, args.holdout, Path(tmp))
        overrides = [*args.set, f"data.root={test_data}"]
        print(f"compare: {args.config or 'thin objects'} {' '.join(args.set)}; held-out: {args.holdout:.0%} of train")
        print(f"{'data.resize':<12}{'epochs':>7}{'seconds':>9}{'best val':>10}{'last val':>10}{'held-out':>10}")
        for mode in args.modes:
            out = Path(tmp) / mode
            row = run_row(config, [*overrides, f"data.resize={mode}"], budget=0, out=out, test_data=test_data)
            print(
                f"{mode:<12}{row['epochs']:>7}{row['seconds']:>9.0f}{row['val_acc']:>10.4f}"
                f"{row['last_val_acc']:>10.4f}{row['eval_acc']:>10.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
