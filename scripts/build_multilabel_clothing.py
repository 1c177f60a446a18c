"""Build a multi-label set from real photos: canvases of one to three clothing photos side by side,
tagged with their classes (ML Zoomcamp's clothing-dataset-small, or any folder with train/ and
validation/ class folders).

    python scripts/build_multilabel_clothing.py [--source ../shared/datasets/clothing-small]
        [--out data/clothing-multilabel] [--train 2000] [--validation 400] [--cell 128]

Each canvas is three square cells wide (cell x 3*cell pixels); one to three of them hold a photo
(centre-cropped to a square) of distinct classes, the others stay grey. A split's canvases use
only that split's photos, so no validation photo is seen in training. OUT gets images/ and
labels.csv (image,tags,split; tags space-separated); configs/clothing_multilabel.yaml trains on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
GREY = (128, 128, 128)


def photos_by_class(split_dir: Path) -> dict[str, list[Path]]:
    found = {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in SUFFIXES)
        for d in sorted(split_dir.iterdir())
        if d.is_dir()
    }
    return {name: files for name, files in found.items() if files}


def canvas(photos: list[Path], slots: list[int], cell: int) -> Image.Image:
    """The photos, each centre-cropped to a square ``cell`` wide, in cells ``slots`` of three."""
    out = Image.new("RGB", (3 * cell, cell), GREY)
    for path, slot in zip(photos, slots):
        with Image.open(path) as img:
            out.paste(ImageOps.fit(img.convert("RGB"), (cell, cell)), (slot * cell, 0))
    return out


def write_split(pool: dict[str, list[Path]], split: str, count: int, *, out: Path, cell: int, seed: int) -> list[str]:
    """``count`` canvases of ``split``; their manifest rows."""
    rng = np.random.default_rng(seed)
    classes = sorted(pool)
    rows = []
    for i in range(count):
        chosen = [classes[k] for k in rng.choice(len(classes), size=int(rng.integers(1, 4)), replace=False)]
        photos = [pool[c][int(rng.integers(len(pool[c])))] for c in chosen]
        slots = sorted(rng.choice(3, size=len(chosen), replace=False).tolist())
        name = f"images/{split}_{i:05d}.jpg"
        canvas(photos, slots, cell).save(out / name, quality=90)
        rows.append(f"{name},{' '.join(sorted(chosen))},{split}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/datasets/clothing-small"))
    parser.add_argument("--out", type=Path, default=Path("data/clothing-multilabel"))
    parser.add_argument("--train", type=int, default=2000, help="training canvases")
    parser.add_argument("--validation", type=int, default=400, help="validation canvases")
    parser.add_argument("--cell", type=int, default=128, help="side of one photo's square, in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.source / "train").is_dir() or not (args.source / "validation").is_dir():
        parser.error(f"--source {args.source}: needs train/ and validation/ class folders")
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    rows = ["image,tags,split"]
    for k, (split, count) in enumerate((("train", args.train), ("validation", args.validation))):
        pool = photos_by_class(args.source / split)
        rows += write_split(pool, split, count, out=args.out, cell=args.cell, seed=args.seed * 10 + k)
    (args.out / "labels.csv").write_text("\n".join(rows) + "\n")
    print(f"wrote {args.train + args.validation} canvases and {args.out / 'labels.csv'}")


if __name__ == "__main__":
    main()
