"""Shared fixtures: small real image folders written to tmp_path, and a tiny trainable config.

Nothing here downloads anything: CNNZOO_HOME and TORCH_HOME point into tmp_path so tests
never touch the user's caches, and CNNZOO_OFFLINE / HF_HUB_OFFLINE forbid downloading
pretrained weights.

Data and weights beside the project (``../shared``) are optional: a fresh clone has none.
A test reaches them only through :func:`shared_path` (or the ``clothing_root`` fixture),
which skips when they are absent; such tests carry the ``needs_shared`` marker (added
here for the fixtures), and ``.ci/run`` runs ``pytest -m needs_shared`` again from a copy
of the project with no ``../shared`` beside it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"  # beside the project; absent in a fresh clone
CLOTHING = SHARED / "datasets" / "clothing-small"
SHARED_FIXTURES = {"clothing_root"}  # fixtures that read SHARED: their tests get the marker


def shared_path(relative: str) -> Path:
    """A file or folder under ../shared, or a clean skip when this checkout has none."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{relative} is not present beside the project (../shared)")
    return path


def reads_shared(text: str) -> bool:
    """Whether a config (or any text) names a path into ../shared."""
    return re.search(r"(^|[\s'\"/])shared/", text) is not None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SHARED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.needs_shared)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("cnnzoo-home")
    monkeypatch.setenv("CNNZOO_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("CNNZOO_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


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
    for class_index, (name, count) in enumerate(counts.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            draw(name, seed * 100_000 + class_index * 1000 + i, size).save(folder / name / f"{name}_{i:03d}.{ext}")
    return folder


@pytest.fixture
def image_root(tmp_path) -> Path:
    """ImageFolder tree: train/ (12 per class) and validation/ (4 per class), classes a and b."""
    root = tmp_path / "images"
    write_class_folders(root / "train", {"a": 12, "b": 12}, seed=1)
    write_class_folders(root / "validation", {"a": 4, "b": 4}, seed=2)
    return root


def tiny_config(root: Path, **train) -> dict:
    """A small CNN that trains in about a second on image_root."""
    return {
        "name": "tiny",
        "seed": 0,
        "data": {"root": str(root), "image_size": 16, "cache": "ram", "workers": 0},
        "model": {
            "layers": [
                {"conv": {"out_channels": 4, "kernel_size": 3, "padding": 1}},
                "relu",
                "pool",
                "flatten",
                {"dense": {"out_features": "num_classes"}},
            ]
        },
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, **train},
    }


@pytest.fixture
def clothing_root() -> Path:
    return shared_path("datasets/clothing-small/train").parent


def private_tmpfs_works(folder: Path) -> bool:
    """Whether a small tmpfs can be mounted at ``folder`` inside a private namespace (``unshare -rm``):
    a real full disk for tests, without root on the machine and without touching its mounts."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return False
    folder.mkdir(exist_ok=True)
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs '{folder}'"], capture_output=True, timeout=30
    )
    return done.returncode == 0
