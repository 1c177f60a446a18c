"""Image preprocessing in PIL and NumPy only: the one definition of "what the model sees".

Training (cache building and the uncached loader), evaluation and prediction all call
:func:`load_image`, so a model sees the same pixels everywhere, and the ONNX model
(:mod:`cnnzoo.inference.onnx`) runs it without importing torch. Normalisation is
``(x / 255 - mean) / std`` per channel, also expressed here in NumPy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps

from ..errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageSource = str | Path | Image.Image | np.ndarray


def is_image_file(path: str | Path) -> bool:
    name = Path(path).name
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I")  # 16- and 32-bit grey
_ROWS_PER_BLOCK_PIXELS = 2**20


def _wide_grey_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit grey -> 8-bit L (scaled by 255/65535, unless a 32-bit image holds 8-bit values).
    Works a band of rows at a time: a float64 copy of a whole 64-megapixel image would cost
    0.5 GB (three of them 1.5 GB)."""
    arr = np.asarray(img)
    peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
    out = np.empty(arr.shape, dtype=np.uint8)
    rows = max(1, _ROWS_PER_BLOCK_PIXELS // max(1, arr.shape[1]))
    for top in range(0, arr.shape[0], rows):
        band = arr[top : top + rows].astype(np.float64)
        out[top : top + rows] = np.clip(band * (255.0 / peak), 0, 255).astype(np.uint8)
    return Image.fromarray(out, "L")


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode (palette, alpha, CMYK, 16-bit grey ...) to L or RGB."""
    if img.mode in _WIDE_GREY:
        img = _wide_grey_to_l(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        # transparent pixels often hold arbitrary colours; show them as white paper
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)  # convert() to the same mode copies


def open_image(source: str | Path | BinaryIO, size: Sequence[int], channels: int) -> Image.Image:
    """Open an image file lazily (its header only) and set up a JPEG to decode at a reduced DCT
    scale when it is much larger than ``size`` = (H, W) (``Image.draft``: several times faster,
    the same result quality; ``img.size`` is then the reduced size)."""
    img = Image.open(source)
    if img.format == "JPEG":
        img.draft("L" if channels == 1 else "RGB", (int(size[1]) * 2, int(size[0]) * 2))
    return img


def decode_bytes(img: Image.Image) -> int:
    """Memory :func:`load_image` needs at its peak for an opened, not yet decoded image, from its
    header: PIL holds 1 byte a pixel for 1, L and P, 2 for 16-bit grey and 4 for every other
    mode; WebP decodes through RGBA; the conversions to L or RGB add their copies. The factors
    are peaks measured on 8000x8000 PNG, TIFF and WebP files, rounded up."""
    width, height = img.size
    if (
        img.format == "WEBP"
        or img.mode in ("RGBA", "LA", "PA", "RGBa", "La")
        or (img.mode == "P" and "transparency" in img.info)
    ):
        per_pixel = 17  # stored, the RGBA copy, the white background, the composite, the result
    elif img.mode == "I":
        per_pixel = 13  # stored, the array, the L band result and its RGB copy
    elif img.mode in _WIDE_GREY:
        per_pixel = 9
    elif img.mode in ("1", "L", "P", "RGB"):
        per_pixel = 6  # stored, and the RGB (or L) result
    else:
        per_pixel = 10  # CMYK, F, YCbCr ...: stored and the converted copy
    return width * height * per_pixel


def load_image(source: ImageSource, size: Sequence[int], channels: int) -> np.ndarray:
    """Decode, orient (EXIF), convert and resize to ``size`` = (H, W); returns uint8 HxWxC.

    A file is opened with :func:`open_image` (JPEGs decode at a reduced scale); an
    already opened image is used as it is and never changed. The bilinear resize is
    antialiased.
    """
    height, width = int(size[0]), int(size[1])
    if isinstance(source, np.ndarray):
        img = Image.fromarray(source)
    elif isinstance(source, Image.Image):
        img = source
    else:
        img = open_image(source, size, channels)
    img.load()  # a PNG may carry its EXIF after the pixels
    if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # exif_transpose copies even when upright
        img = ImageOps.exif_transpose(img)
    img = _to_mode(img, channels)
    if img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    arr = np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy needs one
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def load_full_resolution(
    source: ImageSource | BinaryIO, channels: int, *, crop_to: Sequence[int], min_area: float
) -> np.ndarray:
    """Decode, orient (EXIF) and convert at the resolution a random-resized-crop needs, uint8 HxWxC:
    the crop is taken from the full image (the ImageNet recipe) and resized to ``crop_to`` = (H, W).
    A large JPEG decodes at a reduced DCT scale (``Image.draft``) only while its smallest crop
    (``min_area`` of the image, aspect 3/4) still has at least ``crop_to``'s pixels, so no crop is
    ever enlarged that the full image would have shrunk; other images decode at full size."""
    if isinstance(source, np.ndarray):
        return load_image(source, source.shape[:2], channels)
    img = source if isinstance(source, Image.Image) else Image.open(source)
    if img.format == "JPEG" and not isinstance(source, Image.Image):
        smallest_side = (0.75 * min_area * img.size[0] * img.size[1]) ** 0.5
        factor = max(crop_to) / max(smallest_side, 1.0)
        if factor < 0.5:  # draft reduces by 2, 4 or 8 and keeps at least the size asked for
            img.draft(
                "L" if channels == 1 else "RGB", (math.ceil(img.size[0] * factor), math.ceil(img.size[1] * factor))
            )
    width, height = img.size
    if img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):  # orientations that swap the sides
        width, height = height, width
    return load_image(img, (height, width), channels)


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
        raise ConfigError(
            f"data.normalize: mean and std need {channels} values (one per channel) "
            f"or one value, got {len(mean)} and {len(std)}"
        )
    return [float(m) for m in mean], [float(s) for s in std]
