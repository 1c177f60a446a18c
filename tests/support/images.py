"""Images and data sets written for the tests: learnable pictures in class folders, whole
ImageFolder trees, and torchvision's raw MNIST files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def draw(kind: str, seed: int, size: int = 24) -> Image.Image:
    """A learnable picture: a bright disc (``a``) or a bright bar (``b``) or a cross (``c``) on noise."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    d = ImageDraw.Draw(img)
    c = size // 2 + int(rng.integers(-2, 3))
    r = size // 4
    colour = tuple(int(v) for v in rng.integers(180, 256, size=3))
    if kind.endswith("a"):
        d.ellipse([c - r, c - r, c + r, c + r], fill=colour)
    elif kind.endswith("b"):
        d.rectangle([2, c - 2, size - 3, c + 2], fill=colour)
    else:
        d.rectangle([c - 1, 2, c + 1, size - 3], fill=colour)
        d.rectangle([2, c - 1, size - 3, c + 1], fill=colour)
    return img


def write_class_folders(folder: Path, counts: dict[str, int], size: int = 24, seed: int = 0, ext: str = "png") -> Path:
    """``counts[name]`` pictures of class ``name`` in ``folder/name/``; returns ``folder``."""
    for class_index, (name, count) in enumerate(counts.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            draw(name, seed * 100_000 + class_index * 1000 + i, size).save(folder / name / f"{name}_{i:03d}.{ext}")
    return folder


def make_image_tree(
    root: Path,
    *,
    train: dict[str, int] | None = None,
    validation: dict[str, int] | None = None,
    test: dict[str, int] | None = None,
    size: int = 24,
    ext: str = "png",
    seed: int = 1,
) -> Path:
    """An ImageFolder tree: ``root/train`` (by default 12 images of classes a and b), ``root/validation``
    (by default 4 each) and, when asked, ``root/test``; the splits' pictures come from seeds
    ``seed``, ``seed + 1`` and ``seed + 2``. Returns ``root``."""
    splits = {"train": train or {"a": 12, "b": 12}, "validation": validation or {"a": 4, "b": 4}, "test": test}
    for offset, (split, counts) in enumerate(splits.items()):
        if counts:
            write_class_folders(root / split, counts, size=size, seed=seed + offset, ext=ext)
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX ("SN3 Pascal Vincent") format MNIST ships in.

    Magic: two zero bytes, the type code (0x08 = unsigned byte), the number of
    dimensions; then each dimension as a big-endian int32; then the raw bytes.
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist_raw(
    root: Path, folder: str = "MNIST", n_train: int = 40, n_test: int = 10, seed: int = 0
) -> dict[str, np.ndarray]:
    """torchvision's on-disk layout ``<root>/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.

    Images are 28x28 uint8; labels cycle through 0..9 so that every class appears.
    """
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out[f"{prefix}_images"], out[f"{prefix}_labels"] = images, labels
    return out


def write_kaggle_layout(
    folder: Path, counts: dict[str, int], *, size: int = 24, seed: int = 0, name: str = "images.csv"
) -> Path:
    """The Kaggle clothing layout: ``folder/images/<id>.jpg`` and ``folder/<name>`` with columns
    ``image,sender_id,label,kids`` (the id without its extension, as the real file has it);
    ``counts[label]`` pictures of each label, drawn as class ``a``, ``b``, ``c``... in turn.
    Returns the CSV's path."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = ["image,sender_id,label,kids"]
    for class_index, (label, count) in enumerate(counts.items()):
        for i in range(count):
            image_id = f"{seed:02d}{class_index:02d}{i:04d}-c0ffee"
            draw("abc"[class_index % 3], seed * 100_000 + class_index * 1000 + i, size).save(
                folder / "images" / f"{image_id}.jpg", quality=95
            )
            lines.append(f"{image_id},{1000 + i},{label},{'True' if i % 5 == 0 else 'False'}")
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
