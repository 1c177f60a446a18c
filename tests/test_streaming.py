"""The streaming path (issue 18): ``data.cache: none``, or ``auto`` when the cache fits nowhere,
decodes every epoch and takes a random-resized-crop from the full-resolution image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo.config import load_config
from cnnzoo.data import preprocess
from cnnzoo.data.augment import build_augment, v2
from cnnzoo.data.cache import cache_choice, decode_all, plan_cache
from cnnzoo.data.loaders import ImageDataset, build_loaders
from cnnzoo.data.sources import load_data
from cnnzoo.training.run import train

from support.images import make_image_tree
from support.runs import metric_rows, tiny_config

GB = 2**30


def test_auto_is_ram_when_a_third_of_the_free_memory_holds_the_cache():
    choice, why = cache_choice("auto", 5 * GB, free_memory=16 * GB, free_disk=100 * GB)
    assert choice == "ram" and "5.0 GB" in why and "16.0 GB" in why


def test_auto_is_disk_when_memory_is_short_and_the_disk_has_room():
    choice, why = cache_choice("auto", 6 * GB, free_memory=16 * GB, free_disk=100 * GB)
    assert choice == "disk" and "100.0 GB free on disk" in why


def test_auto_streams_when_the_cache_fits_neither_in_memory_nor_on_disk():
    choice, why = cache_choice("auto", 150 * GB, free_memory=256 * GB, free_disk=100 * GB)
    assert choice == "none" and "neither" in why and "streaming" in why
    assert cache_choice("auto", 100 * GB, free_memory=256 * GB, free_disk=100 * GB)[0] == "none"  # not under


@pytest.mark.parametrize("setting", ["ram", "disk", "none"])
def test_a_set_cache_is_kept_whatever_the_room(setting):
    assert cache_choice(setting, 10**15, free_memory=GB, free_disk=GB)[0] == setting


def test_auto_measures_this_machine_and_says_which_in_one_line(tmp_path, capsys):
    assert plan_cache("auto", 2**62, tmp_path / "not-made-yet" / "cache") == "none"  # 4 EB fits nowhere
    assert plan_cache("auto", 1000, tmp_path) == "ram"
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("data.cache: auto -> none: the cache (")
    assert lines[1].startswith("data.cache: auto -> ram: ")


def gradient_image(path: Path, width: int = 640, height: int = 480) -> Path:
    """Position written into the pixels (red: x, green: y) plus a one-pixel checkerboard in blue,
    which any resize before the crop blurs away."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), ((x + y) % 2) * 255], axis=-1)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def one_image_set(tmp_path: Path, **data) -> tuple:
    root = tmp_path / "data"
    for split in ("train", "validation"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            gradient_image(root / split / label / "0.png")
    cfg = load_config({"data": {"root": str(root), "image_size": 32, "cache": "none", "workers": 0, **data}})
    return cfg, load_data(cfg)


def test_random_resized_crop_is_taken_from_the_full_resolution_image(tmp_path):
    cfg, spec = one_image_set(tmp_path, augment={"random_resized_crop": [0.08, 1.0]})
    augment = build_augment(cfg.data.augment, spec.image_size)
    dataset = ImageDataset(spec.train, spec.image_size, 3, augment=augment, crop_min_area=0.08)
    full = torch.from_numpy(np.array(Image.open(spec.train.paths[0]).convert("RGB"))).permute(2, 0, 1)
    small = torch.from_numpy(spec.train.read(0, spec.image_size, 3)).permute(2, 0, 1)
    crop = v2.RandomResizedCrop([32, 32], scale=(0.08, 1.0), antialias=True)
    differs_from_resized = 0
    for seed in range(20):
        images, _ = dataset.__getitems__([(0, seed)])
        torch.manual_seed(seed)
        assert torch.equal(images[0], crop(full)), seed  # torchvision's crop of the full image, pixel for pixel
        torch.manual_seed(seed)
        differs_from_resized += not torch.equal(images[0], crop(small))
    assert differs_from_resized == 20  # a crop of the already-resized image is another picture
    # the crops' areas follow RandomResizedCrop's on the full image: red and green span the crop
    spans = []
    for seed in range(200):
        image = dataset.__getitems__([(0, seed)])[0][0].double()
        spans.append((image[0].max() - image[0].min()) * (image[1].max() - image[1].min()) / 255**2)
    assert 0.08 * 0.8 < min(spans) and max(spans) <= 1.0 and 0.35 < float(np.mean(spans)) < 0.65


def test_a_large_jpeg_is_reduced_only_as_far_as_its_smallest_crop_allows(tmp_path):
    path = tmp_path / "large.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)).save(path)
    reduced = preprocess.load_full_resolution(path, 3, crop_to=(32, 32), min_area=0.5)
    assert reduced.shape == (188, 250, 3)  # an eighth: its smallest crop, sqrt(0.75 * 0.5) of it, is 133 px
    assert (0.75 * 0.5 * 188 * 250) ** 0.5 >= 32
    full = preprocess.load_full_resolution(path, 3, crop_to=(224, 224), min_area=0.08)
    assert full.shape == (1500, 2000, 3)  # an 8% crop is 424 px across: half of it would be under 224


def test_streamed_validation_images_are_the_cached_pixels(tmp_path):
    root = make_image_tree(tmp_path / "data", size=120, ext="jpg")
    cfg = load_config({"data": {"root": str(root), "image_size": 40, "cache": "none", "workers": 0}})
    spec = load_data(cfg)
    cached = decode_all(spec.val, spec.image_size, 3, kind="ram", cache_dir=None, workers=0)
    loaders = build_loaders(cfg, spec, augment=None, cuda=False)
    assert loaders.train_set.streaming and loaders.val_set.streaming
    streamed = torch.cat([images for images, _ in loaders.val])
    assert torch.equal(streamed, cached.pixels)


def test_without_random_resized_crop_the_streamed_image_is_resized_first(tmp_path):
    cfg, spec = one_image_set(tmp_path, augment={"hflip": 1.0, "random_resized_crop": None})
    loaders = build_loaders(cfg, spec, augment=build_augment(cfg.data.augment, spec.image_size), cuda=False)
    assert not loaders.train_set.full_resolution
    images, _ = loaders.train_set.__getitems__([(0, 0)])
    assert torch.equal(images[0], torch.from_numpy(spec.train.read(0, (32, 32), 3)).permute(2, 0, 1).flip(-1))


@pytest.mark.slow
def test_a_short_run_trains_streamed_with_a_crop_from_full_resolution(tmp_path, capsys):
    root = make_image_tree(tmp_path / "data", size=96, ext="jpg")
    cfg = tiny_config(root, epochs=2)
    cfg["data"].update(cache="none", workers=1, augment={"random_resized_crop": [0.3, 1.0], "hflip": 0.5})
    run_dir = Path(train(cfg, out=tmp_path / "runs", quiet=False))
    out = capsys.readouterr().out
    assert "cache off (decoded each epoch), 1 loader workers, random-resized-crop from full resolution" in out
    rows = metric_rows(run_dir)
    assert len(rows) == 2 and all(np.isfinite(float(r["train_loss"])) for r in rows)
    assert (run_dir / "best.pt").is_file()
