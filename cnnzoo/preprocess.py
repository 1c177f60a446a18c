"""Image preprocessing in PIL and NumPy only: the one definition of "what the model sees".

Training (cache building and the uncached loader), evaluation and prediction all call
:func:`load_image`, so a model sees the same pixels everywhere, and a future
ONNX-runtime ``predict`` can run it without importing torch. Normalisation is
``(x / 255 - mean) / std`` per channel, also expressed here in NumPy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageSource = Union[str, Path, Image.Image, np.ndarray]


def is_image_file(path: str | Path) -> bool:
    name = Path(path).name
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode (palette, alpha, CMYK, 16-bit grey ...) to L or RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        # transparent pixels often hold arbitrary colours; show them as white paper
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("L" if channels == 1 else "RGB")


def load_image(source: ImageSource, size: Sequence[int], channels: int) -> np.ndarray:
    """Decode, orient (EXIF), convert and resize to ``size`` = (H, W); returns uint8 HxWxC.

    JPEGs are decoded at a reduced DCT scale when much larger than the target
    (``Image.draft``), which makes decoding several times faster for the same result
    quality; the bilinear resize that follows is antialiased.
    """
    height, width = int(size[0]), int(size[1])
    if isinstance(source, np.ndarray):
        img = Image.fromarray(source)
    elif isinstance(source, Image.Image):
        img = source
    else:
        img = Image.open(source)
        if img.format == "JPEG":
            img.draft("L" if channels == 1 else "RGB", (width * 2, height * 2))
    img = ImageOps.exif_transpose(img)
    img = _to_mode(img, channels)
    if img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    arr = np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy needs one
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def normalize_array(images_hwc: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 [..., H, W, C] -> float32 [..., C, H, W] normalised, as the model expects."""
    x = images_hwc.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def resolve_normalization(normalize: object, channels: int) -> tuple[list[float], list[float]]:
    """``auto`` | ``imagenet`` | ``none`` | {mean, std} -> per-channel mean and std lists."""
    if normalize in ("auto", "imagenet"):
        if channels == 3:
            return list(IMAGENET_MEAN), list(IMAGENET_STD)
        if normalize == "imagenet":
            return [sum(IMAGENET_MEAN) / 3], [sum(IMAGENET_STD) / 3]
        return [0.5], [0.5]
    if normalize == "none":
        return [0.0] * channels, [1.0] * channels
    mean, std = list(normalize["mean"]), list(normalize["std"])  # type: ignore[index]
    if len(mean) == 1:
        mean = mean * channels
    if len(std) == 1:
        std = std * channels
    if len(mean) != channels or len(std) != channels:
        from .errors import ConfigError

        raise ConfigError(f"data.normalize: mean and std need {channels} values (one per channel) "
                          f"or one value, got {len(mean)} and {len(std)}")
    return [float(m) for m in mean], [float(s) for s in std]
