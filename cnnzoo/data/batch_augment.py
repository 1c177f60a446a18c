"""Augmentation of a whole uint8 batch on the training device (``data.augment.where``).

The same keys with the same meaning as the per-image pipeline of :mod:`cnnzoo.data.augment`
(torchvision's ``RandomResizedCrop`` -> flips -> ``RandomAffine`` -> ``ColorJitter``), drawn per
image from a generator seeded by the batch's seed (:class:`cnnzoo.data.batch_order.EpochBatches`), so
the same seed and epoch give the same batches on any device. The geometry of every image (crop,
flips, rotation, translation, shear, zoom) is folded into one 2x3 matrix: one ``affine_grid`` +
``grid_sample`` for the batch (flips alone are done by indexing); colour jitter and random
erasing are tensor arithmetic on the batch; RandAugment, TrivialAugment and AugMix, which have no
batch version, run torchvision's per image, on the device, seeded from the batch's generator.
Only cached data (uint8 ``[B, C, H, W]`` of one size) comes here: files
decoded per epoch keep the per-image path.

Floor 5 (data): imports torch, torchvision and :mod:`cnnzoo.config`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import AugmentConfig
from ..runtime.versions import check as check_torch_pair
from .augment import policy_steps

check_torch_pair()  # a mismatched torch/torchvision pair gets one line before torchvision is imported
from torchvision.transforms import v2  # noqa: E402  (after the pair check)
from torchvision.transforms.v2 import functional as TF  # noqa: E402

# torchvision's own RGB<->HSV on batched float tensors (what its adjust_hue uses); its public
# adjust_hue takes one factor for the whole batch, and each image here has its own
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv  # noqa: E402

CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect ratios, as the per-image path uses
CROP_ATTEMPTS = 10  # RandomResizedCrop's tries before it falls back to the whole image


@dataclass(kw_only=True)
class Geometry:
    """Each image's geometric parameters, ``[B]`` tensors; lengths in pixels, angles in degrees.

    The crop is the source region (centre relative to the image centre, width and height);
    then flips; then the affine transform about the centre, as torchvision's ``RandomAffine``.
    """

    crop_x: torch.Tensor
    crop_y: torch.Tensor
    crop_w: torch.Tensor
    crop_h: torch.Tensor
    hflip: torch.Tensor
    vflip: torch.Tensor
    angle: torch.Tensor
    tx: torch.Tensor
    ty: torch.Tensor
    scale: torch.Tensor
    shear: torch.Tensor

    def crop_scale(self, size: tuple[int, int]) -> torch.Tensor:
        """The crop's share of the image area (RandomResizedCrop's ``scale``)."""
        return self.crop_w * self.crop_h / (size[0] * size[1])


def _uniform(g: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64) * (high - low) + low


def _draw_crop(g: torch.Generator, n: int, size: tuple[int, int], scale: list[float] | None):
    """RandomResizedCrop's draw for ``n`` images: area share uniform in ``scale``, log-uniform
    aspect ratio, up to ten tries for a crop that fits, else the whole image (square ratios
    always fit the fallback). Returns centre x, y and width, height in pixels."""
    height, width = size
    if not scale:
        zero = torch.zeros(n, dtype=torch.float64)
        return (
            zero,
            zero.clone(),
            torch.full((n,), float(width), dtype=torch.float64),
            torch.full((n,), float(height), dtype=torch.float64),
        )
    area = _uniform(g, n * CROP_ATTEMPTS, *scale).view(n, CROP_ATTEMPTS) * (height * width)
    log_ratio = _uniform(g, n * CROP_ATTEMPTS, *map(math.log, CROP_RATIO)).view(n, CROP_ATTEMPTS)
    # whole pixels, as RandomResizedCrop: a crop rounded down to the image's side still fits
    w = torch.sqrt(area * log_ratio.exp()).round()
    h = torch.sqrt(area / log_ratio.exp()).round()
    fits = (w <= width) & (h <= height) & (w > 0) & (h > 0)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)
    any_fit = fits.any(dim=1)
    w = torch.where(any_fit, w.gather(1, first).squeeze(1), torch.tensor(float(width), dtype=torch.float64))
    h = torch.where(any_fit, h.gather(1, first).squeeze(1), torch.tensor(float(height), dtype=torch.float64))
    # the crop's top-left pixel uniform over the places it fits, as a centre relative to the image's
    x = (_uniform(g, n, 0.0, 1.0) * (width - w + 1)).floor() + w / 2 - width / 2
    y = (_uniform(g, n, 0.0, 1.0) * (height - h + 1)).floor() + h / 2 - height / 2
    return x, y, w, h


def draw_geometry(aug: AugmentConfig, size: tuple[int, int], n: int, g: torch.Generator) -> Geometry:
    """Every image's crop, flips and affine parameters, with the distributions of the per-image path."""
    height, width = size
    crop_x, crop_y, crop_w, crop_h = _draw_crop(g, n, size, aug.random_resized_crop)
    hflip_p, vflip_p = aug.flip_probabilities
    hflip = _uniform(g, n, 0, 1) < hflip_p
    vflip = _uniform(g, n, 0, 1) < vflip_p
    translate = aug.translate if isinstance(aug.translate, list) else [aug.translate, aug.translate]
    return Geometry(
        crop_x=crop_x,
        crop_y=crop_y,
        crop_w=crop_w,
        crop_h=crop_h,
        hflip=hflip,
        vflip=vflip,
        angle=_uniform(g, n, -aug.rotation, aug.rotation),
        tx=_uniform(g, n, -translate[0] * width, translate[0] * width),
        ty=_uniform(g, n, -translate[1] * height, translate[1] * height),
        scale=_uniform(g, n, 1 - aug.zoom, 1 + aug.zoom),
        shear=_uniform(g, n, -aug.shear, aug.shear),
    )


def sampling_matrices(geo: Geometry, size: tuple[int, int], *, crop: bool = True) -> torch.Tensor:
    """``[B, 2, 3]`` float64 matrices for ``affine_grid`` (normalised coordinates): for each output
    pixel, where to read the source image. Composed from output to source: the inverse of
    torchvision's affine matrix (``_get_inverse_affine_matrix`` about the centre, x-shear only),
    the flips, then the crop's placement in the image (``crop=False``: where to read the crop)."""
    height, width = size
    n = len(geo.angle)
    rot, sx = torch.deg2rad(geo.angle), torch.deg2rad(geo.shear)
    # torchvision's rotate-scale-shear matrix with shear_y = 0, and its inverse (det = scale^2)
    a, c = torch.cos(rot), torch.sin(rot)
    b = -torch.cos(rot) * torch.tan(sx) - torch.sin(rot)
    d = -torch.sin(rot) * torch.tan(sx) + torch.cos(rot)
    inverse = torch.zeros(n, 3, 3, dtype=torch.float64)
    inverse[:, 0, 0], inverse[:, 0, 1] = d / geo.scale, -b / geo.scale
    inverse[:, 1, 0], inverse[:, 1, 1] = -c / geo.scale, a / geo.scale
    inverse[:, 0, 2] = -(inverse[:, 0, 0] * geo.tx + inverse[:, 0, 1] * geo.ty)
    inverse[:, 1, 2] = -(inverse[:, 1, 0] * geo.tx + inverse[:, 1, 1] * geo.ty)
    inverse[:, 2, 2] = 1
    flip = torch.diag_embed(
        torch.stack([1 - 2 * geo.hflip.double(), 1 - 2 * geo.vflip.double(), torch.ones(n, dtype=torch.float64)], 1)
    )
    placed = torch.zeros(n, 3, 3, dtype=torch.float64)
    placed[:, 0, 0], placed[:, 0, 2] = geo.crop_w / width, geo.crop_x
    placed[:, 1, 1], placed[:, 1, 2] = geo.crop_h / height, geo.crop_y
    placed[:, 2, 2] = 1
    to_pixels = torch.diag(torch.tensor([width / 2, height / 2, 1.0], dtype=torch.float64))
    to_normalised = torch.diag(torch.tensor([2 / width, 2 / height, 1.0], dtype=torch.float64))
    if not crop:
        return (to_normalised @ flip @ inverse @ to_pixels)[:, :2]
    return (to_normalised @ placed @ flip @ inverse @ to_pixels)[:, :2]


ERASE_SCALE, ERASE_RATIO = (0.02, 0.33), (0.3, 3.3)  # RandomErasing's defaults


def draw_erasing(p: float, size: tuple[int, int], n: int, g: torch.Generator) -> torch.Tensor:
    """RandomErasing's draw for ``n`` images: with chance ``p``, a box of 2-33% of the area and a
    log-uniform aspect ratio in [0.3, 3.3] that fits (ten tries, else none). ``[n, 4]`` top, left,
    height, width in pixels; height 0 where nothing is erased."""
    height, width = size
    erase = _uniform(g, n, 0, 1) < p
    area = _uniform(g, n * CROP_ATTEMPTS, *ERASE_SCALE).view(n, CROP_ATTEMPTS) * (height * width)
    log_ratio = _uniform(g, n * CROP_ATTEMPTS, *map(math.log, ERASE_RATIO)).view(n, CROP_ATTEMPTS)
    h = torch.sqrt(area * log_ratio.exp()).round()
    w = torch.sqrt(area / log_ratio.exp()).round()
    fits = (h < height) & (w < width)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)
    keep = erase & fits.any(dim=1)
    h = torch.where(keep, h.gather(1, first).squeeze(1), torch.zeros(()))
    w = torch.where(keep, w.gather(1, first).squeeze(1), torch.zeros(()))
    top = (_uniform(g, n, 0, 1) * (height - h + 1)).floor()
    left = (_uniform(g, n, 0, 1) * (width - w + 1)).floor()
    return torch.stack([top, left, h, w], dim=1)


def apply_erasing(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Black out each image's box (``[B, 4]`` from :func:`draw_erasing`) on the images' device."""
    top, left, h, w = (boxes[:, k].to(x.device).view(-1, 1, 1) for k in range(4))
    rows = torch.arange(x.shape[-2], device=x.device).view(1, -1, 1)
    cols = torch.arange(x.shape[-1], device=x.device).view(1, 1, -1)
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    return x.masked_fill(inside.unsqueeze(1), 0)


@dataclass(kw_only=True)
class Jitter:
    """Each image's colour factors (``[B]``) and the batch's order of the four adjustments."""

    brightness: torch.Tensor | None
    contrast: torch.Tensor | None
    saturation: torch.Tensor | None
    hue: torch.Tensor | None
    order: list[int]


def draw_jitter(aug: AugmentConfig, n: int, g: torch.Generator) -> Jitter:
    """ColorJitter's draws: factors uniform in [max(0, 1 - x), 1 + x], hue in [-hue, hue]; the
    order of the four adjustments is drawn once per batch (ColorJitter draws one per image)."""
    cj = aug.color_jitter

    def factor(x: float) -> torch.Tensor | None:
        return _uniform(g, n, max(0.0, 1 - x), 1 + x).float() if x else None

    return Jitter(
        brightness=factor(cj.brightness),
        contrast=factor(cj.contrast),
        saturation=factor(cj.saturation),
        hue=_uniform(g, n, -cj.hue, cj.hue).float() if cj.hue else None,
        order=torch.randperm(4, generator=g).tolist(),
    )


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def apply_jitter(x: torch.Tensor, jitter: Jitter) -> torch.Tensor:
    """Colour jitter on float images in [0, 1], ``[B, C, H, W]``, as torchvision's adjust_*
    functions do it (grey images: brightness and contrast only)."""
    rgb = x.shape[1] == 3
    for op in jitter.order:
        if op == 0 and jitter.brightness is not None:
            x = _blend(x, torch.zeros_like(x), jitter.brightness.to(x.device))
        elif op == 1 and jitter.contrast is not None:
            grey = TF.rgb_to_grayscale(x) if rgb else x
            x = _blend(x, grey.mean(dim=(-3, -2, -1), keepdim=True), jitter.contrast.to(x.device))
        elif op == 2 and jitter.saturation is not None and rgb:
            x = _blend(x, TF.rgb_to_grayscale(x), jitter.saturation.to(x.device))
        elif op == 3 and jitter.hue is not None and rgb:
            hsv = _rgb_to_hsv(x)
            hue = (hsv[:, 0] + jitter.hue.to(x.device).view(-1, 1, 1)) % 1.0
            x = _hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], dim=1))
    return x


class BatchAugment:
    """``data.augment`` for a uint8 batch on its device: ``augment(images, seed)`` -> uint8."""

    def __init__(self, aug: AugmentConfig, size: tuple[int, int]):
        self.aug, self.size = aug, (int(size[0]), int(size[1]))
        translate = aug.translate if isinstance(aug.translate, list) else [aug.translate]
        moves = bool(aug.rotation or aug.shear or aug.zoom or any(translate))
        self.warps = bool(aug.random_resized_crop) or moves
        # the per-image path fills what a rotation (shift ...) of the crop uncovers with black,
        # not with the image around the crop: a mask of the crop, moved the same way, does too
        self.masks_crop = bool(aug.random_resized_crop) and moves
        self.flips = any(aug.flip_probabilities)
        self.jitters = bool(aug.color_jitter)
        # RandAugment, TrivialAugment, AugMix: no batch version exists, torchvision's run per image
        steps = policy_steps(aug)
        self.policy = v2.Compose(steps) if steps else None

    @classmethod
    def build(cls, aug: AugmentConfig, size: tuple[int, int]) -> BatchAugment | None:
        """None when nothing is on."""
        made = cls(aug, size)
        on = made.warps or made.flips or made.jitters or made.policy is not None or aug.random_erasing
        return made if on else None

    def __call__(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(seed))
        n = len(images)
        geo = draw_geometry(self.aug, self.size, n, g)
        jitter = draw_jitter(self.aug, n, g) if self.jitters else None
        images = self.apply(images, geo, jitter)
        if self.policy is not None:
            with torch.random.fork_rng(devices=[]):  # torchvision draws from the global generator
                torch.manual_seed(int(torch.randint(2**62, (), generator=g)))
                images = torch.stack([self.policy(image) for image in images])
        if self.aug.random_erasing:
            images = apply_erasing(images, draw_erasing(self.aug.random_erasing, self.size, n, g))
        return images

    def apply(self, images: torch.Tensor, geo: Geometry, jitter: Jitter | None) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` -> uint8, with the given parameters (on the images' device)."""
        if not self.warps and not self.flips and jitter is None:
            return images
        if not self.warps and jitter is None:  # flips alone: indexing, no resampling
            return self._flip(images, geo)
        x = images.float()
        if self.warps:
            x = self._sample(x, sampling_matrices(geo, self.size))
            if self.masks_crop:
                x = x * self._sample(torch.ones_like(x[:, :1]), sampling_matrices(geo, self.size, crop=False))
        elif self.flips:
            x = self._flip(x, geo)
        if jitter is not None:
            x = apply_jitter(x.div_(255.0), jitter).mul_(255.0)
        return x.round_().clamp_(0, 255).to(torch.uint8)

    @staticmethod
    def _sample(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    @staticmethod
    def _flip(x: torch.Tensor, geo: Geometry) -> torch.Tensor:
        out = x.clone()  # the batch may be a view of the cache
        for flags, dim in ((geo.hflip, -1), (geo.vflip, -2)):
            picked = flags.nonzero().squeeze(1).to(x.device)
            if len(picked):
                out[picked] = out[picked].flip(dim)
        return out
