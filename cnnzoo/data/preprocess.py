"""Image preprocessing in PIL and NumPy only: the one definition of "what the model sees".

Training (cache building and the uncached loader), evaluation and prediction all call
:func:`load_image`, so a model sees the same pixels everywhere, and the ONNX model
(:mod:`cnnzoo.inference.onnx`) runs it without importing torch. Normalisation is
``(x / 255 - mean) / std`` per channel, also expressed here in NumPy.

How an image of another aspect ratio becomes the model's (H, W) is a :class:`Fit`
(``data.resize``): ``squash`` resizes to (H, W) ignoring the aspect ratio (what cnnzoo always
did), ``letterbox`` resizes the whole image to fit inside (H, W) and pads the rest with the
normalisation mean (pixels that normalise to 0, what a convolution's zero padding shows it),
``crop`` resizes it to cover (H, W) and cuts the overflow off both ends, centred. A fit may also
keep only the centred ``crop`` share of each side of the image first (a model's stored test-time
crop, ``meta.test_crop``: what a network trained on random-resized crops, which show objects
larger than a plain resize does, sees best at test time; FixRes, Touvron et al. 2019). Channels:
1 reads images as grey (PIL ``L``), 2 as grey with alpha (``LA``), 3 as RGB (transparency shown
on white), 4 as RGBA (alpha kept).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps

from ..errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageSource = str | Path | Image.Image | np.ndarray
RESIZE_MODES = ("squash", "letterbox", "crop")  # data.resize; the first is the default
LEGACY_RESIZE = "bilinear"  # what checkpoints and exports wrote before data.resize: squash, bilinear
CHANNEL_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # data.channels -> the PIL mode images are read in


TEST_CROPS = (0.5, 1.0)  # the range of a stored test-time crop (share of each side kept)


@dataclass(frozen=True)
class Fit:
    """How an image becomes the model's size (``data.resize``), a letterbox's padding value per
    channel (uint8; the normalisation mean, :meth:`of`), and the centred share of each side kept
    before (``crop``; 1.0: the whole image, as training's plain resize and every model before it)."""

    mode: str = "squash"
    fill: tuple[int, ...] = ()
    crop: float = 1.0

    @classmethod
    def of(cls, resize: str | None, mean: Sequence[float], crop: float | None = None) -> Fit:
        """The fit a model's metadata or a config names (``bilinear`` and absent: squash; ``crop``
        absent: 1.0)."""
        mode = "squash" if resize in (None, LEGACY_RESIZE) else str(resize)
        if mode not in RESIZE_MODES:
            raise ValueError(f"resize: got {resize!r}, expected {', '.join(RESIZE_MODES)}")
        crop = 1.0 if crop is None else float(crop)
        if not TEST_CROPS[0] <= crop <= TEST_CROPS[1]:
            raise ValueError(f"test_crop: got {crop!r}, expected {TEST_CROPS[0]} to {TEST_CROPS[1]}")
        if mode != "letterbox":
            return cls(mode, (), crop)  # no padding: one squash (or crop) fit, whatever the mean
        return cls(mode, tuple(int(round(min(max(m, 0.0), 1.0) * 255)) for m in mean), crop)

    def __repr__(self) -> str:  # without a crop, the repr cache keys were made with before it existed
        crop = f", crop={self.crop!r}" if self.crop != 1.0 else ""
        return f"Fit(mode={self.mode!r}, fill={self.fill!r}{crop})"


SQUASH = Fit()


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
    """Convert any PIL mode (palette, alpha, CMYK, 16-bit grey ...) to the mode of ``channels``
    (:data:`CHANNEL_MODES`); without an alpha channel, transparency is shown on white."""
    target = CHANNEL_MODES[channels]
    if img.mode in _WIDE_GREY:
        img = _wide_grey_to_l(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA") and target not in ("LA", "RGBA"):
        # transparent pixels often hold arbitrary colours; show them as white paper
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img if img.mode == target else img.convert(target)  # convert() to the same mode copies


def _draft_mode(channels: int) -> str:
    return "L" if channels <= 2 else "RGB"


def _fit_to(img: Image.Image, width: int, height: int, fit: Fit) -> Image.Image:
    """``img`` at (width, height) as ``fit`` says; one antialiased bilinear resample of the source
    box (the whole image, or its centred ``fit.crop`` of each side)."""
    if img.size == (width, height) and fit.crop == 1.0:
        return img
    full_w, full_h = img.size
    src_w, src_h = full_w * fit.crop, full_h * fit.crop  # the box kept, centred: all of it without a crop
    x0, y0 = (full_w - src_w) / 2, (full_h - src_h) / 2
    if fit.mode == "crop":  # the centred box of the model's aspect ratio, resized
        scale = max(width / src_w, height / src_h)
        box_w, box_h = width / scale, height / scale
        left, top = x0 + (src_w - box_w) / 2, y0 + (src_h - box_h) / 2
        return img.resize((width, height), Image.BILINEAR, box=(left, top, left + box_w, top + box_h))
    box = (x0, y0, x0 + src_w, y0 + src_h)
    if fit.mode == "letterbox":
        scale = min(width / src_w, height / src_h)
        inner = (max(1, min(width, round(src_w * scale))), max(1, min(height, round(src_h * scale))))
        canvas = Image.new(img.mode, (width, height), _fill_colour(fit, img.mode))
        canvas.paste(img.resize(inner, Image.BILINEAR, box=box), ((width - inner[0]) // 2, (height - inner[1]) // 2))
        return canvas
    return img.resize((width, height), Image.BILINEAR, box=box)


def _fill_colour(fit: Fit, mode: str) -> int | tuple[int, ...]:
    bands = len(mode)  # L, LA, RGB, RGBA: one letter a band
    fill = fit.fill if len(fit.fill) == bands else (128,) * bands
    return fill[0] if bands == 1 else tuple(fill)


def fit_aspect(image_hwc: np.ndarray, size: Sequence[int], fit: Fit) -> np.ndarray:
    """A full-resolution image brought to the aspect ratio of ``size`` = (H, W) without resizing
    (letterbox: padded with the fill; crop: the centred box; squash: unchanged), so that a
    random-resized-crop drawn from it sees what the cached, fitted image shows."""
    height, width = image_hwc.shape[:2]
    target = size[1] / size[0]  # width / height
    if fit.mode == "squash" or abs(width / height - target) < 1e-6:
        return image_hwc
    if fit.mode == "crop":
        keep_w, keep_h = min(width, round(height * target)), min(height, round(width / target))
        top, left = (height - keep_h) // 2, (width - keep_w) // 2
        return np.ascontiguousarray(image_hwc[top : top + max(1, keep_h), left : left + max(1, keep_w)])
    out_w, out_h = max(width, round(height * target)), max(height, round(width / target))
    channels = image_hwc.shape[2]
    fill = fit.fill if len(fit.fill) == channels else (128,) * channels
    out = np.empty((out_h, out_w, channels), np.uint8)
    out[:] = np.asarray(fill, np.uint8)
    top, left = (out_h - height) // 2, (out_w - width) // 2
    out[top : top + height, left : left + width] = image_hwc
    return out


def open_image(source: str | Path | BinaryIO, size: Sequence[int], channels: int) -> Image.Image:
    """Open an image file lazily (its header only) and set up a JPEG to decode at a reduced DCT
    scale when it is much larger than ``size`` = (H, W) (``Image.draft``: several times faster,
    the same result quality; ``img.size`` is then the reduced size)."""
    img = Image.open(source)
    if img.format == "JPEG":
        img.draft(_draft_mode(channels), (int(size[1]) * 2, int(size[0]) * 2))
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


def load_image(source: ImageSource, size: Sequence[int], channels: int, fit: Fit = SQUASH) -> np.ndarray:
    """Decode, orient (EXIF), convert and resize to ``size`` = (H, W) as ``fit`` says; returns
    uint8 HxWxC.

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
    img = _fit_to(_to_mode(img, channels), width, height, fit)
    arr = np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy needs one
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def load_full_resolution(
    source: ImageSource | BinaryIO, channels: int, *, crop_to: Sequence[int], min_area: float, fit: Fit = SQUASH
) -> np.ndarray:
    """Decode, orient (EXIF) and convert at the resolution a random-resized-crop needs, uint8 HxWxC:
    the crop is taken from the full image (the ImageNet recipe) and resized to ``crop_to`` = (H, W).
    A large JPEG decodes at a reduced DCT scale (``Image.draft``) only while its smallest crop
    (``min_area`` of the image, aspect 3/4) still has at least ``crop_to``'s pixels, so no crop is
    ever enlarged that the full image would have shrunk; other images decode at full size. The
    image is then brought to ``crop_to``'s aspect ratio as ``fit`` says (:func:`fit_aspect`)."""
    if isinstance(source, np.ndarray):
        return fit_aspect(load_image(source, source.shape[:2], channels), crop_to, fit)
    img = source if isinstance(source, Image.Image) else Image.open(source)
    if img.format == "JPEG" and not isinstance(source, Image.Image):
        smallest_side = (0.75 * min_area * img.size[0] * img.size[1]) ** 0.5
        factor = max(crop_to) / max(smallest_side, 1.0)
        if factor < 0.5:  # draft reduces by 2, 4 or 8 and keeps at least the size asked for
            img.draft(_draft_mode(channels), (math.ceil(img.size[0] * factor), math.ceil(img.size[1] * factor)))
    width, height = img.size
    if img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):  # orientations that swap the sides
        width, height = height, width
    return fit_aspect(load_image(img, (height, width), channels), crop_to, fit)


def normalize_array(images_hwc: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 [..., H, W, C] -> float32 [..., C, H, W] normalised, as the model expects."""
    x = images_hwc.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def resolve_normalization(normalize: object, channels: int) -> tuple[list[float], list[float]]:
    """``auto`` | ``imagenet`` | ``none`` | {mean, std} -> per-channel mean and std lists
    (``auto``: ImageNet's for RGB, 0.5 for grey; :func:`channel_stats` for the other counts)."""
    if normalize == "imagenet" or (normalize == "auto" and channels >= 3):
        return channel_stats(IMAGENET_MEAN, IMAGENET_STD, channels)
    if normalize == "auto":
        return [0.5] * channels, [0.5] * channels
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


def channel_stats(
    mean_rgb: Sequence[float], std_rgb: Sequence[float], channels: int
) -> tuple[list[float], list[float]]:
    """RGB normalisation for ``channels`` as :data:`CHANNEL_MODES` reads them: grey (1, 2) takes
    the RGB values' average, which a first convolution adapted by summing its RGB weights needs
    to answer a grey image as the RGB network answers it in colour-less RGB; an alpha channel
    (2, 4) gets 0.5 and 0.5."""
    mean, std = [float(v) for v in mean_rgb], [float(v) for v in std_rgb]
    if channels <= 2:
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    if channels in (2, 4):
        mean, std = [*mean, 0.5], [*std, 0.5]
    return mean, std
