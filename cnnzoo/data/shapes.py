"""The built-in ``shapes`` data set: drawn geometric shapes, generated offline.

It exists so that ``cnnzoo train --config configs/quickstart.yaml`` works on a fresh
machine with no network. The generator is deterministic (every image comes from its
own seed) and writes real JPEG files in the ImageFolder layout, so the quickstart goes
through exactly the same data path as a user's own folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..console import console
from ..errors import DataError
from ..files import cache_home, write_text

CLASSES = ("circle", "cross", "square", "star", "triangle")
VERSION = 1  # bump when the drawing changes, so caches of the old images are not reused
IMAGE_SIZE = 64
PER_CLASS = {"train": 300, "validation": 60}


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        corners = [(angle + math.pi / 4 + k * math.pi / 2) for k in range(4)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners]
    if kind == "triangle":
        return [
            (cx + r * math.cos(angle + k * 2 * math.pi / 3), cy + r * math.sin(angle + k * 2 * math.pi / 3))
            for k in range(3)
        ]
    if kind == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            a = angle + k * math.pi / 5
            points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
        return points
    if kind == "cross":
        w = r * 0.35
        arm = [
            (-r, -w),
            (-w, -w),
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
        ]
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in arm]
    raise ValueError(kind)


def _layout(kind: str, seed: int, size: int):
    """The random draw behind one image: colours, geometry, and the generator (for the noise)."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, size=3)
    foreground = rng.integers(0, 256, size=3)
    while np.abs(foreground.astype(int) - background.astype(int)).sum() < 200:
        foreground = rng.integers(0, 256, size=3)
    big = size * _SCALE
    r = rng.uniform(0.18, 0.40) * big
    cx = rng.uniform(r, big - r)
    cy = rng.uniform(r, big - r)
    angle = rng.uniform(0, 2 * math.pi)
    return rng, background, foreground, (cx, cy, r, angle)


_SCALE = 4  # draw large and shrink: antialiased edges


def _draw(canvas: Image.Image, kind: str, geometry: tuple, fill) -> None:
    cx, cy, r, angle = geometry
    draw = ImageDraw.Draw(canvas)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=fill)


def draw_shape(kind: str, seed: int, size: int = IMAGE_SIZE) -> Image.Image:
    """One image of ``kind``: random colours, size, position, rotation and pixel noise."""
    rng, background, foreground, geometry = _layout(kind, seed, size)
    canvas = Image.new("RGB", (size * _SCALE, size * _SCALE), tuple(int(v) for v in background))
    _draw(canvas, kind, geometry, tuple(int(v) for v in foreground))
    img = canvas.resize((size, size), Image.LANCZOS)
    noise = rng.normal(0, rng.uniform(2, 14), size=(size, size, 3))
    pixels = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def shape_mask(kind: str, seed: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Where :func:`draw_shape` drew the shape: a [size, size] boolean mask (for checking explanations)."""
    _, _, _, geometry = _layout(kind, seed, size)
    canvas = Image.new("L", (size * _SCALE, size * _SCALE), 0)
    _draw(canvas, kind, geometry, 255)
    return np.asarray(canvas.resize((size, size), Image.BILINEAR)) >= 128


MARKER = ".cnnzoo-shapes"  # inside a generated set: "cnnzoo shapes v<VERSION>"; how cnnzoo knows it made the folder
_LEGACY_MARKER = ".complete"  # what earlier versions wrote, with the same text: recognised, no longer written
_MARKER_TEXT = re.compile(r"cnnzoo shapes v(\d{1,6})\n?")


def shapes_version(root: Path) -> int | None:
    """The version of the cnnzoo shapes set in ``root``, read from its marker file; None when
    ``root`` holds none (absent, a file, or a folder cnnzoo did not generate)."""
    for name in (MARKER, _LEGACY_MARKER):
        try:
            with open(Path(root) / name, "rb") as f:
                found = _MARKER_TEXT.fullmatch(f.read(64).decode("ascii", "replace"))
        except OSError:  # absent, or root is not a folder
            continue
        if found:
            return int(found.group(1))
    return None


def holds_other_data(root: Path) -> bool:
    """Whether ``root`` exists and holds something other than a cnnzoo shapes set: the user's data,
    which the generator never writes over (an empty folder, or none, is free for it)."""
    root = Path(root)
    if not os.path.lexists(root):
        return False
    if not root.is_dir():
        return True  # a file, or a link to nothing
    try:
        return shapes_version(root) is None and any(root.iterdir())
    except OSError:  # unreadable: whatever it holds is not cnnzoo's to write over
        return True


def _not_ours(root: Path) -> DataError:
    return DataError(
        f"{root}: not empty and not a cnnzoo shapes data set (no {MARKER} inside); cnnzoo generates the "
        f"shapes set only into an empty folder or one it generated: give another folder, or empty this one"
    )


@contextlib.contextmanager
def _generation_lock(root: Path) -> Iterator[None]:
    """One generator at a time per folder (another process waits, then finds the set made). The lock
    file lives in cnnzoo's own cache folder, never beside the user's data; where that folder cannot
    be written, the renames below still never replace a folder that another process filled."""
    # lazy: only generating takes the lock, and filelock (a dependency of torch) is not needed before
    from filelock import FileLock

    key = hashlib.sha1(str(Path(os.path.abspath(root))).encode()).hexdigest()[:16]
    locks = cache_home() / "locks"
    try:
        locks.mkdir(parents=True, exist_ok=True)
        lock = FileLock(locks / f"shapes-{key}.lock")
        lock.acquire()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


def ensure_shapes(root: Path) -> Path:
    """Generate the data set under ``root`` once; later calls return at once.

    ``root`` must be absent, an empty folder, or a shapes set cnnzoo generated (its :data:`MARKER`);
    anything else is refused with :class:`~cnnzoo.errors.DataError`, untouched. An older version's
    set is replaced; nothing else is ever removed.
    """
    root = Path(root)
    if root.is_symlink() and root.is_dir():
        root = root.resolve()  # generate into the folder the link names; the link stays
    if shapes_version(root) == VERSION:
        return root
    with _generation_lock(root):
        if shapes_version(root) == VERSION:  # another process made it while this one waited
            return root
        if holds_other_data(root):
            raise _not_ours(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        total = sum(PER_CLASS.values()) * len(CLASSES)
        console.log(f"Generating the shapes data set ({total} JPEGs) in {root} ...")
        # write into a temporary sibling and rename: a crash never leaves half a data set
        tmp = Path(tempfile.mkdtemp(prefix=".shapes-", dir=root.parent))
        try:
            _generate(tmp)
            _put_in_place(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # this process's own temporary folder, when not renamed
    return root


def _generate(folder: Path) -> None:
    for split_index, (split, count) in enumerate(PER_CLASS.items()):
        for class_index, kind in enumerate(CLASSES):
            images = folder / split / kind
            images.mkdir(parents=True)
            for i in range(count):
                seed = (VERSION * 1_000_000) + split_index * 100_000 + class_index * 10_000 + i
                draw_shape(kind, seed).save(images / f"{kind}_{i:04d}.jpg", quality=92)
    (folder / MARKER).write_text(f"cnnzoo shapes v{VERSION}\n")


def _put_in_place(tmp: Path, root: Path) -> None:
    """Rename the finished set ``tmp`` to ``root``. A rename replaces an absent or empty folder and
    fails on a filled one, so a folder that filled meanwhile (the user's, or another process's
    set) is never replaced; only an older cnnzoo set is, moved aside first and removed after."""
    try:
        os.rename(tmp, root)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise DataError(f"{root}: cannot generate the shapes set there ({exc.strerror or exc})") from None
    found = shapes_version(root)
    if found == VERSION:
        return  # another process put the same set there first
    if found is None:
        raise _not_ours(root)
    aside = Path(tempfile.mkdtemp(prefix=".shapes-old-", dir=root.parent))
    os.rename(root, aside)  # over the empty folder mkdtemp made
    if shapes_version(aside) != found:  # not the set that was checked: put it back, untouched
        os.rename(aside, root)
        raise _not_ours(root)
    os.rename(tmp, root)
    shutil.rmtree(aside)  # the older cnnzoo set, and only it


def draw_shapes(kinds: list[str], seed: int, size: int = IMAGE_SIZE) -> Image.Image:
    """One image holding each of ``kinds`` (one to four) in its own quarter of the canvas, each in
    its own colour, on a random background with pixel noise: a multi-label picture whose tags are
    known."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, size=3)
    big = size * _SCALE
    canvas = Image.new("RGB", (big, big), tuple(int(v) for v in background))
    cell = big / 2
    for kind, quarter in zip(kinds, rng.permutation(4)):
        foreground = rng.integers(0, 256, size=3)
        while np.abs(foreground.astype(int) - background.astype(int)).sum() < 200:
            foreground = rng.integers(0, 256, size=3)
        r = rng.uniform(0.30, 0.45) * cell
        x0, y0 = (quarter % 2) * cell, (quarter // 2) * cell
        geometry = (
            rng.uniform(x0 + r, x0 + cell - r),
            rng.uniform(y0 + r, y0 + cell - r),
            r,
            rng.uniform(0, 2 * math.pi),
        )
        _draw(canvas, kind, geometry, tuple(int(v) for v in foreground))
    img = canvas.resize((size, size), Image.LANCZOS)
    noise = rng.normal(0, rng.uniform(2, 10), size=(size, size, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def write_multi_label_shapes(
    folder: Path, counts: dict[str, int], *, size: int = IMAGE_SIZE, classes: tuple[str, ...] = CLASSES, seed: int = 0
) -> Path:
    """A multi-label data set with known answers: ``counts[split]`` images, each with one to three
    distinct shapes of ``classes``, in ``folder/images/`` and a manifest ``folder/labels.csv``
    (``image,tags,split``; tags space-separated, as Kaggle's Planet set has them). Returns the manifest."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = ["image,tags,split"]
    for split_index, (split, count) in enumerate(counts.items()):
        for i in range(count):
            image_seed = seed * 1_000_000 + split_index * 100_000 + i
            rng = np.random.default_rng(image_seed + 7)
            kinds = [
                str(k) for k in rng.choice(classes, size=int(rng.integers(1, min(3, len(classes)) + 1)), replace=False)
            ]
            name = f"{split}_{i:05d}.png"
            draw_shapes(kinds, image_seed, size).save(folder / "images" / name)
            rows.append(f"images/{name},{' '.join(sorted(kinds))},{split}")
    manifest = folder / "labels.csv"
    write_text(manifest, "\n".join(rows) + "\n")
    return manifest
