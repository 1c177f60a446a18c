"""Augmentation on the batch, on the device (issue #20): the same pictures and the same
distributions as the per-image torchvision path, reproducible from the batch seed."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from cnnzoo.config import AugmentConfig, load_config
from cnnzoo.data.augment import build_augment
from cnnzoo.data.batch_augment import BatchAugment, Geometry, Jitter, apply_erasing, draw_erasing, draw_geometry
from cnnzoo.data.cache import decode_all
from cnnzoo.data.loaders import ImageDataset
from cnnzoo.data.sources import load_data
from cnnzoo.errors import ConfigError
from cnnzoo.training.run import train

from support.runs import metric_rows, tiny_config

H, W = 40, 48


def augment_config(options: dict) -> AugmentConfig:
    return load_config({"data": {"augment": options}}).data.augment


def smooth_image() -> torch.Tensor:
    """Gradients and a white block: every wrong sign or scale of a transform shows."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    img = torch.stack([xx * 200 + 20, yy * 200 + 30, xx * yy * 255]).round().to(torch.uint8)
    img[:, 5:15, 6:12] = 255
    return img


def one(value: float) -> torch.Tensor:
    return torch.tensor([float(value)], dtype=torch.float64)


def geometry(*, crop=(0, 0, H, W), hflip=False, vflip=False, angle=0.0, translate=(0, 0), scale=1.0, shear=0.0):
    top, left, h, w = crop
    return Geometry(
        crop_x=one(left + w / 2 - W / 2),
        crop_y=one(top + h / 2 - H / 2),
        crop_w=one(w),
        crop_h=one(h),
        hflip=torch.tensor([hflip]),
        vflip=torch.tensor([vflip]),
        angle=one(angle),
        tx=one(translate[0]),
        ty=one(translate[1]),
        scale=one(scale),
        shear=one(shear),
    )


def per_image(img, *, crop=(0, 0, H, W), hflip=False, vflip=False, angle=0.0, translate=(0, 0), scale=1.0, shear=0.0):
    """What torchvision's per-image path (cnnzoo.data.augment's order) makes with these parameters."""
    x = TF.resized_crop(img, *crop, [H, W], antialias=True)
    if hflip:
        x = TF.horizontal_flip(x)
    if vflip:
        x = TF.vertical_flip(x)
    return TF.affine(
        x,
        angle=angle,
        translate=list(translate),
        scale=scale,
        shear=[shear, 0.0],
        interpolation=TF.InterpolationMode.BILINEAR,
    )


WARPS = {
    "rotation": dict(angle=30.0),
    "translate": dict(translate=(5, -3)),
    "zoom": dict(scale=1.3),
    "shear": dict(shear=20.0),
    "crop": dict(crop=(4, 8, 30, 32)),
    "hflip+rotation": dict(hflip=True, angle=-25.0),
    "vflip+translate": dict(vflip=True, translate=(-4, 6)),
    "crop+rotation": dict(crop=(4, 8, 30, 32), angle=30.0),
    "everything": dict(crop=(4, 8, 30, 32), hflip=True, angle=15.0, translate=(3, 2), scale=0.9, shear=10.0),
}


@pytest.mark.parametrize("name", list(WARPS))
def test_one_grid_sample_makes_the_per_image_picture(name):
    """Fixed parameters: the composed matrix reproduces crop -> flips -> affine to within rounding
    (mean difference under 1 of 255; the crop's own resize is antialiased, ours one bilinear read)."""
    img = smooth_image()
    params = WARPS[name]
    augment = BatchAugment(augment_config({"rotation": 1.0, "random_resized_crop": [0.5, 1.0]}), (H, W))
    ours = augment.apply(img[None], geometry(**params), None)[0].float()
    theirs = per_image(img, **params).float()
    assert (ours - theirs).abs().mean() < 1.0, (ours - theirs).abs().mean()


JITTERS = {
    "brightness": (0, lambda x, f: TF.adjust_brightness(x, f), 1.3),
    "contrast": (1, lambda x, f: TF.adjust_contrast(x, f), 0.6),
    "saturation": (2, lambda x, f: TF.adjust_saturation(x, f), 1.5),
    "hue": (3, lambda x, f: TF.adjust_hue(x, f), 0.2),
}


@pytest.mark.parametrize("name", list(JITTERS))
def test_colour_jitter_is_torchvisions_per_image(name):
    op, adjust, value = JITTERS[name]
    img = smooth_image()
    factors = {k: None for k in ("brightness", "contrast", "saturation", "hue")}
    factors[name] = torch.tensor([value])
    augment = BatchAugment(augment_config({"color_jitter": {name: 0.5}}), (H, W))
    ours = augment.apply(img[None], geometry(), Jitter(**factors, order=[op]))[0].float()
    theirs = adjust(img.float() / 255, value) * 255
    assert (ours - theirs).abs().max() <= 1.0


def quantiles(values: torch.Tensor) -> torch.Tensor:
    return torch.quantile(values.double(), torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64))


def test_draws_have_the_per_image_distributions():
    """Crop scales, crop aspect ratios, angles, shifts, zooms, shears and flip rates drawn for a batch
    match those torchvision's transforms draw image by image (quantiles within 3% of the range)."""
    n, size = 4000, (H, W)
    options = {"random_resized_crop": [0.3, 1.0], "rotation": 20, "translate": [0.1, 0.2], "zoom": 0.2, "shear": 10}
    aug = augment_config({**options, "hflip": 0.3})
    geo = draw_geometry(aug, size, n, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    crop = v2.RandomResizedCrop(list(size), scale=(0.3, 1.0))
    affine = v2.RandomAffine(degrees=20, translate=(0.1, 0.2), scale=(0.8, 1.2), shear=10)
    image = torch.zeros(3, H, W, dtype=torch.uint8)
    crops = [crop.make_params([image]) for _ in range(n)]
    affines = [affine.make_params([image]) for _ in range(n)]
    pairs = {
        "crop scale": (geo.crop_scale(size), torch.tensor([c["height"] * c["width"] / (H * W) for c in crops]), 0.7),
        "crop ratio": (geo.crop_w / geo.crop_h, torch.tensor([c["width"] / c["height"] for c in crops]), 0.6),
        "angle": (geo.angle, torch.tensor([a["angle"] for a in affines]), 40),
        "tx": (geo.tx, torch.tensor([a["translate"][0] for a in affines], dtype=torch.float64), 2 * 0.1 * W),
        "ty": (geo.ty, torch.tensor([a["translate"][1] for a in affines], dtype=torch.float64), 2 * 0.2 * H),
        "zoom": (geo.scale, torch.tensor([a["scale"] for a in affines]), 0.4),
        "shear": (geo.shear, torch.tensor([a["shear"][0] for a in affines]), 20),
    }
    for name, (ours, theirs, span) in pairs.items():
        gap = (quantiles(ours) - quantiles(theirs)).abs().max().item()
        assert gap < 0.03 * span + 0.5 * (name in ("tx", "ty")), (name, quantiles(ours), quantiles(theirs))
    assert abs(geo.hflip.double().mean().item() - 0.3) < 0.03
    assert not geo.vflip.any()


AUG = {"hflip": True, "rotation": 20, "translate": 0.1, "random_resized_crop": [0.6, 1.0], "color_jitter": {"hue": 0.1}}


def test_the_batch_seed_decides_and_the_global_rng_is_left_alone():
    augment = BatchAugment.build(augment_config(AUG), (H, W))
    batch = torch.stack([smooth_image()] * 6)
    before = torch.get_rng_state()
    first = augment(batch, 1234)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(99)
    assert torch.equal(first, augment(batch, 1234))
    assert not torch.equal(first, augment(batch, 4321))
    assert first.dtype == torch.uint8 and first.shape == batch.shape
    assert not torch.equal(first[0], first[1])  # each image draws its own
    assert torch.equal(batch, torch.stack([smooth_image()] * 6))  # the input (the cache) is not touched


def test_nothing_on_is_none_and_flips_alone_index():
    assert BatchAugment.build(AugmentConfig(), (H, W)) is None
    augment = BatchAugment.build(augment_config({"hflip": 1.0}), (H, W))
    batch = torch.stack([smooth_image()] * 3)
    assert torch.equal(augment(batch, 7), batch.flip(-1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_batch_stays_there_and_matches_the_cpu():
    augment = BatchAugment.build(augment_config(AUG), (H, W))
    batch = torch.stack([smooth_image()] * 4)
    on_gpu = augment(batch.cuda(), 5)
    assert on_gpu.device.type == "cuda"
    assert (on_gpu.cpu().float() - augment(batch, 5).float()).abs().max() <= 1


def test_dataset_hands_the_seed_and_leaves_pixels_to_the_device(image_root):
    spec = load_data(load_config({"data": {"root": str(image_root), "image_size": 16}}))
    decoded = decode_all(spec.train, (16, 16), 3, kind="ram", cache_dir=None, workers=0)
    dataset = ImageDataset(spec.train, (16, 16), 3, decoded=decoded, seeds=True)
    images, labels, seed = dataset.__getitems__([(i, 99) for i in range(4)])
    assert int(seed) == 99 and torch.equal(images, decoded.pixels[:4]) and len(labels) == 4


def test_batch_needs_the_cache():
    with pytest.raises(ConfigError, match="data.augment.where"):
        load_config({"data": {"cache": "none", "augment": {"where": "batch"}}})


@pytest.mark.slow
def test_training_with_batch_augmentation_repeats_and_differs_from_per_image(image_root, tmp_path):
    """The same seed gives the same run (batches drawn from (seed, epoch, batch)); ``where: image``
    keeps the per-image draws, which differ."""

    def run(where: str, folder: str):
        cfg = tiny_config(image_root)
        cfg["data"]["augment"] = {**AUG, "where": where}
        return metric_rows(train(cfg, out=tmp_path / folder, quiet=True))

    first, again, per_image_rows = run("auto", "a"), run("batch", "b"), run("image", "c")
    assert first == again
    assert first != per_image_rows


# ============================================================================ policies and erasing

POLICIES = {
    "randaugment": {"randaugment": {"num_ops": 2, "magnitude": 9}},
    "trivialaugment": {"trivialaugment": True},
    "augmix": {"augmix": True},
    "random_erasing": {"random_erasing": 1.0},
    "all": {"hflip": True, "rotation": 10, "trivialaugment": True, "random_erasing": 0.5},
}


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name", list(POLICIES))
def test_policies_run_in_both_paths_and_repeat_from_the_seed(name, channels):
    aug = augment_config(POLICIES[name])
    images = torch.stack([smooth_image()[:channels]] * 4)
    per_image = build_augment(aug, (H, W))
    torch.manual_seed(0)
    out = torch.stack([per_image(img) for img in images])
    assert out.dtype == torch.uint8 and out.shape == images.shape
    on_batch = BatchAugment.build(aug, (H, W))
    first = on_batch(images, 3)
    assert first.dtype == torch.uint8 and first.shape == images.shape
    assert torch.equal(first, on_batch(images, 3)) and not torch.equal(first, images)


def test_batch_erasing_has_torchvisions_distribution():
    n, size = 4000, (H, W)
    boxes = draw_erasing(0.7, size, n, torch.Generator().manual_seed(0))
    erased = boxes[:, 2] > 0
    torch.manual_seed(0)
    erasing = v2.RandomErasing(p=1.0)
    image = torch.zeros(3, H, W, dtype=torch.uint8)
    theirs = torch.tensor([(lambda p: p["h"] * p["w"])(erasing.make_params([image])) for _ in range(n)]) / (H * W)
    ours = (boxes[erased, 2] * boxes[erased, 3]) / (H * W)
    assert abs(erased.double().mean().item() - 0.7) < 0.03
    assert (quantiles(ours) - quantiles(theirs[theirs > 0])).abs().max() < 0.02
    x = apply_erasing(torch.full((n, 1, H, W), 255, dtype=torch.uint8), boxes)
    assert torch.equal((x == 0).sum(dim=(1, 2, 3)), (boxes[:, 2] * boxes[:, 3]).long())


def test_the_feature_cache_names_the_policy_that_needs_pixels():
    from cnnzoo.training.feature_cache import _flip_versions

    for key in ("trivialaugment", "random_erasing", "randaugment", "augmix"):
        reason, _, _ = _flip_versions(augment_config({"hflip": True, **POLICIES.get(key, {key: True})}))
        assert reason.startswith(f"data.augment.{key} changes the pixels every epoch"), reason
