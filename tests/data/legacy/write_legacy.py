"""Write the legacy artefacts in this folder with the cnnzoo of the working tree.

Run from the project root:  python tests/data/legacy/write_legacy.py
It trains a tiny network for two epochs on generated images and keeps what a user's run
folder holds (best.pt, last.pt, config.yaml, metrics.csv), the ONNX export of best.pt, the
validation images and what the model predicted for them (expected.json). tests/test_legacy.py
checks that later code still loads, predicts, evaluates, resumes and exports these files.

Only the public API is used (cnnzoo.train, cnnzoo.load, cnnzoo.export), so the script runs
on the commit that wrote the files and on later ones alike. Do not rewrite the files with a
later commit: their point is to have been written by an old one (README.md says which).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # the working tree's cnnzoo

import cnnzoo  # noqa: E402

KEPT = ("best.pt", "last.pt", "config.yaml", "metrics.csv")


def picture(kind: str, seed: int, size: int = 24) -> Image.Image:
    """A disc (class a) or a bar (class b) on noise."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(img)
    c, r = size // 2 + int(rng.integers(-2, 3)), size // 4
    colour = tuple(int(v) for v in rng.integers(180, 256, size=3))
    if kind == "a":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=colour)
    else:
        draw.rectangle([2, c - 2, size - 3, c + 2], fill=colour)
    return img


def write_tree(root: Path, counts: int, seed: int) -> None:
    for k, kind in enumerate("ab"):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(counts):
            picture(kind, seed * 1000 + k * 100 + i).save(root / kind / f"{kind}_{i}.png")


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "data"
        write_tree(data / "train", 12, 1)
        write_tree(data / "validation", 4, 2)
        config = {
            "name": "legacy",
            "seed": 0,
            "data": {"root": str(data), "image_size": 16, "cache": "ram", "workers": 0},
            "model": {
                "layers": [
                    {"conv": {"out_channels": 4, "kernel_size": 3, "padding": 1}},
                    "batchnorm",
                    "relu",
                    "pool",
                    "flatten",
                    {"dense": {"out_features": "num_classes"}},
                ]
            },
            "train": {"epochs": 2, "batch_size": 8, "lr": 0.01},
        }
        run = Path(cnnzoo.train(config, out=Path(scratch) / "runs", quiet=True))
        target = HERE / "run"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        for name in KEPT:
            shutil.copy2(run / name, target / name)
        cnnzoo.export(target / "best.pt", "onnx")
        images = HERE / "images"
        shutil.rmtree(images, ignore_errors=True)
        shutil.copytree(data / "validation", images)
    paths = sorted(str(p.relative_to(HERE)) for p in images.rglob("*.png"))
    model = cnnzoo.load(target / "best.pt")
    records = model.predict([str(HERE / p) for p in paths], top_k=2)
    expected = {
        "written_by": cnnzoo.__version__,
        "probabilities": {
            p: [t["probability"] for t in sorted(r["top_k"], key=lambda t: t["label"])] for p, r in zip(paths, records)
        },
    }
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
