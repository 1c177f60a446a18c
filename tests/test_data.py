"""The data pipeline (issues #3 and #5): sources, splits, decoding, the cache, augmentation, batches.

Everything runs on small real image files written to tmp_path; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cnnzoo.config import AugmentConfig, load_config
from cnnzoo.data import preprocess, shapes
from cnnzoo.data.augment import build_augment
from cnnzoo.data.cache import cached_array, choose_cache, decode_all
from cnnzoo.data.loaders import EpochBatches, ImageDataset
from cnnzoo.data.sources import class_names, load_data
from cnnzoo.errors import ConfigError, DataError
from cnnzoo.files import cache_home
from cnnzoo.training.run import train

from support.images import write_class_folders, write_mnist_raw
from support.runs import metric_rows, tiny_config, tiny_layers


def augment_config(options: dict) -> AugmentConfig:
    """``data.augment`` as a config file would give it (validated)."""
    return load_config({"data": {"augment": options}}).data.augment


def cfg_for(root, **data):
    return load_config({"data": {"root": str(root), "image_size": 16, **data}})


def load(root, **data):
    return load_data(cfg_for(root, **data))


def class_of(path: str) -> str:
    return Path(path).parent.name


# ============================================================================ layouts and splits


def test_imagefolder_train_and_validation(image_root):
    spec = load(image_root)
    assert spec.classes == ["a", "b"]
    assert (len(spec.train), len(spec.val), spec.test) == (24, 8, None)
    assert spec.root == str(image_root.resolve())
    for split, folder in ((spec.train, "train"), (spec.val, "validation")):
        for path, label in zip(split.paths, split.labels):
            assert Path(path).parent.parent.name == folder
            assert spec.classes[label] == class_of(path)
    assert sorted(spec.train.labels) == [0] * 12 + [1] * 12


def test_val_folder_and_optional_test_split(tmp_path):
    root = tmp_path / "d"
    write_class_folders(root / "train", {"a": 5, "b": 5}, size=12, seed=1)
    write_class_folders(root / "val", {"a": 2, "b": 3}, size=12, seed=2)
    spec = load(root)
    assert (len(spec.train), len(spec.val), spec.test) == (10, 5, None)
    assert all(Path(p).parent.parent.name == "val" for p in spec.val.paths)

    write_class_folders(root / "test", {"a": 1, "b": 2}, size=12, seed=3)
    spec = load(root)
    assert spec.test is not None and len(spec.test) == 3
    assert spec.test.labels == [0, 1, 1]
    assert all(Path(p).parent.parent.name == "test" for p in spec.test.paths)


def test_single_folder_is_split_stratified(tmp_path):
    root = write_class_folders(tmp_path / "all", {"a": 10, "b": 20, "c": 5}, size=12)
    spec = load(root, val_fraction=0.2)
    assert spec.classes == ["a", "b", "c"]
    val_counts = Counter(spec.classes[label] for label in spec.val.labels)
    train_counts = Counter(spec.classes[label] for label in spec.train.labels)
    assert dict(val_counts) == {"a": 2, "b": 4, "c": 1}  # 20% of every class
    assert dict(train_counts) == {"a": 8, "b": 16, "c": 4}
    assert set(spec.train.paths).isdisjoint(spec.val.paths)
    assert len(set(spec.train.paths) | set(spec.val.paths)) == 35
    for split in (spec.train, spec.val):
        assert all(spec.classes[label] == class_of(p) for p, label in zip(split.paths, split.labels))

    spec = load(root, val_fraction=0.5)
    assert dict(Counter(spec.classes[label] for label in spec.val.labels)) == {"a": 5, "b": 10, "c": 2}


def test_single_folder_split_is_seeded(tmp_path):
    root = write_class_folders(tmp_path / "all", {"a": 15, "b": 15}, size=12)

    def val_paths(seed):
        cfg = load_config({"seed": seed, "data": {"root": str(root), "image_size": 16}})
        return load_data(cfg).val.paths

    assert val_paths(0) == val_paths(0)
    assert val_paths(5) == val_paths(5)
    assert val_paths(0) != val_paths(5)


def test_class_names_are_sorted_folder_names(tmp_path):
    root = tmp_path / "d"
    names = ["zebra", "apple", "mango", "kiwi", "banana", "cherry", "date"]  # written in this order
    write_class_folders(root / "train", {n: 2 for n in names}, size=8, seed=1)
    write_class_folders(root / "validation", {n: 1 for n in reversed(names)}, size=8, seed=2)
    cfg = cfg_for(root)
    spec = load_data(cfg)
    assert spec.classes == sorted(names)
    assert class_names(cfg) == sorted(names)
    for split in (spec.train, spec.val):
        assert all(spec.classes[label] == class_of(p) for p, label in zip(split.paths, split.labels))


@pytest.mark.slow
def test_training_fills_model_input_and_classes_from_data(tmp_path):
    root = tmp_path / "d"
    write_class_folders(root / "train", {"zebra": 4, "apple": 4, "mango": 4}, size=20, seed=1)
    write_class_folders(root / "validation", {"zebra": 1, "apple": 1, "mango": 1}, size=20, seed=2)
    config = tiny_config(root, epochs=1, batch_size=6)
    config["data"].update(image_size=[12, 16], channels=1, cache="none")
    run = train(config, out=tmp_path / "runs", quiet=True)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["num_classes"] == 3
    assert saved["model"]["input"] == [1, 12, 16]
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["meta"]["classes"] == ["apple", "mango", "zebra"]
    assert ckpt["meta"]["channels"] == 1 and ckpt["meta"]["image_size"] == [12, 16]


# ============================================================================ image formats


def _save_formats(folder: Path) -> dict[str, Path]:
    """One file per mode/format that users' folders contain; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}

    def put(name, img, **kw):
        paths[name] = folder / name
        img.save(paths[name], **kw)

    put("rgb.png", Image.new("RGB", (10, 10), (255, 0, 0)))
    put("rgb.JPG", Image.new("RGB", (10, 10), (0, 0, 255)), quality=95)  # upper-case extension
    put("grey.png", Image.new("L", (10, 10), 100))
    put("grey.jpeg", Image.new("L", (10, 10), 100), quality=95)
    palette = [10, 20, 30, 255, 0, 0] + [0] * (256 * 3 - 6)
    p = Image.new("P", (10, 10), 1)
    p.putpalette(palette)
    put("palette.png", p)
    pt = Image.new("P", (10, 10), 1)
    pt.putpalette(palette)
    pt.paste(0, (5, 0, 10, 10))  # right half: index 0, transparent
    put("palette_transparent.png", pt, transparency=0)
    put("palette_transparent.gif", pt, transparency=0)
    rgba = Image.new("RGBA", (10, 10), (0, 255, 0, 255))
    rgba.paste((0, 0, 0, 0), (5, 0, 10, 10))  # right half: fully transparent black
    put("rgba.png", rgba)
    la = Image.new("LA", (10, 10), (50, 255))
    la.paste((0, 0), (5, 0, 10, 10))
    put("grey_alpha.png", la)
    put("cmyk.jpg", Image.new("CMYK", (10, 10), (255, 0, 0, 0)), quality=95)  # cyan
    g16 = np.zeros((10, 10), np.uint16)
    g16[:, :5] = 65535
    g16[:, 5:] = 32896  # 128 * 257
    put("grey16.png", Image.fromarray(g16))
    put("rgb.bmp", Image.new("RGB", (10, 10), (1, 2, 3)))
    put("rgb.webp", Image.new("RGB", (10, 10), (200, 100, 50)), lossless=True)
    return paths


def test_reads_every_mode_and_format(tmp_path):
    paths = _save_formats(tmp_path / "formats")
    assert Image.open(paths["grey16.png"]).mode.startswith("I")  # really 16-bit on disk
    assert Image.open(paths["cmyk.jpg"]).mode == "CMYK"
    assert Image.open(paths["palette_transparent.png"]).info.get("transparency") == 0
    for name, path in paths.items():
        for channels in (1, 3):
            arr = preprocess.load_image(path, (8, 6), channels)
            assert arr.dtype == np.uint8 and arr.shape == (8, 6, channels), name

    def px(name, channels=3, size=(10, 10)):
        return preprocess.load_image(paths[name], size, channels)

    assert px("rgb.png")[0, 0].tolist() == [255, 0, 0]
    assert np.abs(px("rgb.JPG")[4, 4].astype(int) - [0, 0, 255]).max() <= 3
    assert px("grey.png")[3, 3].tolist() == [100, 100, 100]  # grey -> RGB repeats the value
    assert px("grey.png", 1)[3, 3].tolist() == [100]
    assert np.abs(px("grey.jpeg", 1)[3, 3].astype(int) - 100).max() <= 2
    assert px("palette.png")[0, 0].tolist() == [255, 0, 0]
    for name in ("palette_transparent.png", "palette_transparent.gif"):
        assert px(name)[5, 1].tolist() == [255, 0, 0], name
        assert px(name)[5, 8].tolist() == [255, 255, 255], name  # transparent shows as white
    assert px("rgba.png")[5, 1].tolist() == [0, 255, 0]
    assert px("rgba.png")[5, 8].tolist() == [255, 255, 255]  # not the hidden black
    assert px("grey_alpha.png", 1)[5, 1].tolist() == [50]
    assert px("grey_alpha.png", 1)[5, 8].tolist() == [255]
    cmyk = px("cmyk.jpg")[5, 5].astype(int)
    assert cmyk[0] < 30 and cmyk[1] > 225 and cmyk[2] > 225, cmyk  # cyan
    assert px("grey16.png", 1)[5, :, 0].tolist() == [255] * 5 + [128] * 5  # scaled, not clipped
    assert px("grey16.png", 3)[5, 0].tolist() == [255, 255, 255]
    assert px("rgb.bmp")[0, 0].tolist() == [1, 2, 3]
    assert px("rgb.webp")[0, 0].tolist() == [200, 100, 50]


def test_every_format_goes_through_load_data_and_the_cache(tmp_path, capsys):
    root = tmp_path / "d"
    paths = _save_formats(root / "train" / "mixed")
    write_class_folders(root / "train", {"plain": 3}, size=10)
    write_class_folders(root / "validation", {"mixed": 1, "plain": 1}, size=10)
    spec = load(root, cache="ram")
    assert spec.skipped_files == 0
    assert len(spec.train) == len(paths) + 3
    for channels in (1, 3):
        decoded = decode_all(spec.train, (8, 8), channels, kind="ram", cache_dir=None, workers=0)
        assert decoded.failed == []
        assert decoded.pixels.shape == (len(spec.train), channels, 8, 8)
    assert "warning" not in capsys.readouterr().err


def test_exif_orientation_is_applied(tmp_path):
    """Orientation 6 = "rotate 90 degrees clockwise to display": W and H swap, the marker moves."""
    img = Image.new("RGB", (20, 10), (0, 0, 0))  # stored landscape: 20 wide, 10 high
    img.paste((255, 255, 255), (0, 0, 5, 5))  # white marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif.tobytes(), quality=95)
    assert Image.open(path).getexif().get(0x0112) == 6

    arr = preprocess.load_image(path, (20, 10), 3)  # portrait (H=20, W=10) needs no resize
    bright = arr[:, :, 0] > 128
    assert bright[:5, 5:].all()  # top-right after a clockwise quarter turn
    assert not bright[:, :5].any() and not bright[5:, :].any()

    grey = preprocess.load_image(path, (20, 10), 1)[:, :, 0] > 128
    assert grey[:5, 5:].all() and not grey[5:, :].any()

    # a square target: the rotated picture is resized, the marker stays top-right
    square = preprocess.load_image(path, (10, 10), 3)[:, :, 0]
    assert square[:2, 8:].min() > 128 and square[:, :3].max() < 128


def test_channels_setting_gives_grey_or_rgb(image_root):
    for channels, mean_len in ((1, 1), (3, 3), (None, 3)):
        spec = load(image_root, channels=channels)
        assert spec.channels == (channels or 3)
        assert len(spec.mean) == len(spec.std) == mean_len
        decoded = decode_all(spec.val, spec.image_size, spec.channels, kind="ram", cache_dir=None, workers=0)
        assert decoded.pixels.shape == (8, spec.channels, 16, 16)
        assert decoded.pixels.dtype == torch.uint8
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    assert preprocess.load_image(red, (4, 4), 1)[0, 0, 0] == 76  # ITU-R 601 luma of pure red


# ============================================================================ skipped and broken files


def test_non_image_files_are_skipped_with_one_warning(image_root, capsys):
    (image_root / "train" / "a" / "notes.txt").write_text("not a picture")
    (image_root / "train" / "b" / "labels.csv").write_text("file,label\n")
    (image_root / "validation" / "a" / "README.md").write_text("# hi")
    (image_root / "validation" / "b" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored silently
    spec = load(image_root)
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert "skipped 3 files" in warnings[0] and "not images" in warnings[0]
    assert str(image_root.resolve()) in warnings[0]
    assert spec.skipped_files == 3
    assert (len(spec.train), len(spec.val)) == (24, 8)
    assert not any(p.endswith((".txt", ".csv", ".md", ".DS_Store")) for p in spec.train.paths + spec.val.paths)


def _add_broken_images(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(3)
    garbage = root / "train" / "a" / "x.jpg"
    garbage.write_bytes(rng.bytes(600))
    full = root / "full.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full, quality=90)
    truncated = root / "train" / "b" / "truncated.jpg"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    return garbage, truncated


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["ram", "none"])
def test_corrupt_images_are_named_and_skipped_while_training_completes(image_root, tmp_path, capsys, cache):
    garbage, truncated = _add_broken_images(image_root)
    config = tiny_config(image_root, epochs=1)
    config["data"]["cache"] = cache
    run = train(config, out=tmp_path / "runs", quiet=True)
    err = capsys.readouterr().err
    assert "x.jpg" in err and "truncated.jpg" in err
    assert "skipped unreadable image" in err
    rows = metric_rows(run)
    assert [r["epoch"] for r in rows] == ["1"]
    assert np.isfinite(float(rows[0]["train_loss"]))
    assert (run / "last.pt").is_file()


def test_decode_all_reports_failures_by_index(image_root, capsys):
    garbage, truncated = _add_broken_images(image_root)
    spec = load(image_root)
    decoded = decode_all(spec.train, (16, 16), 3, kind="ram", cache_dir=None, workers=0)
    failed = sorted(spec.train.paths[i] for i in decoded.failed)
    assert failed == sorted([str(garbage), str(truncated)])
    dataset = ImageDataset(spec.train, (16, 16), 3, decoded=decoded)
    assert len(dataset) == 24
    err = capsys.readouterr().err
    assert err.count("skipped unreadable image") == 2


# ============================================================================ errors


def _error(root, exc_type=DataError, **data) -> str:
    with pytest.raises(exc_type) as info:
        load(root, **data)
    return str(info.value)


def test_error_empty_class_folder(image_root):
    (image_root / "train" / "c").mkdir()
    message = _error(image_root)
    assert str(image_root / "train" / "c") in message and "empty class folder" in message
    # a folder holding only non-images is just as empty
    (image_root / "train" / "c" / "notes.txt").write_text("x")
    assert "empty class folder" in _error(image_root)


def test_error_train_without_validation(tmp_path):
    root = tmp_path / "d"
    write_class_folders(root / "train", {"a": 2, "b": 2}, size=8)
    message = _error(root)
    assert str(root) in message and "validation/" in message and "val/" in message


def test_error_validation_class_not_in_training(image_root):
    write_class_folders(image_root / "validation", {"zzz": 1}, size=8)
    message = _error(image_root)
    assert "zzz" in message and str(image_root / "validation") in message


def test_error_missing_or_unset_root(tmp_path):
    message = _error(tmp_path / "nope")
    assert "data.root" in message and str(tmp_path / "nope") in message
    with pytest.raises(ConfigError, match="data.root"):
        load_data(load_config({"data": {"image_size": 16}}))


def test_error_no_class_folders(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "one.png")
    message = _error(flat)
    assert "no class folders" in message and str(flat) in message
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "validation").mkdir()
    message = _error(tmp_path / "empty")
    assert "no class folders" in message and str(tmp_path / "empty" / "train") in message


def _dataset_in(folder: Path) -> Path:
    write_class_folders(folder / "train", {"a": 3, "b": 3}, size=8)
    write_class_folders(folder / "validation", {"a": 1, "b": 1}, size=8, seed=1)
    return folder


@pytest.mark.parametrize("depth", [1, 2])
def test_data_root_one_or_two_levels_too_high_says_did_you_mean(tmp_path, capsys, depth):
    up = tmp_path / "downloads"
    dataset = _dataset_in(up / "clothing" if depth == 1 else up / "clothing" / "clothing")
    (up / "clothing.zip").write_bytes(b"PK")
    (up / "again").symlink_to(up / "clothing")  # the same images twice: a warning for each, before
    for ask in (lambda: load(up), lambda: class_names(load_config({"data": {"root": str(up)}}))):
        with pytest.raises(DataError) as info:
            ask()
        assert str(info.value) == (
            f"{up}: no train/ or class folders of images here, but {dataset} holds "
            f"train/ and validation/; did you mean --data {dataset} "
            f"(data.root: {dataset})?"
        )
    assert "warning" not in capsys.readouterr().err


def test_a_folder_holding_one_folder_of_class_folders_says_did_you_mean(tmp_path):
    up = tmp_path / "photos"
    write_class_folders(up / "images", {"cat": 2, "dog": 2}, size=8)
    assert _error(up) == (
        f"{up}: only one class folder (images), which holds class folders itself "
        f"(cat, dog); did you mean --data {up / 'images'} (data.root: {up / 'images'})?"
    )


def test_the_train_folder_itself_is_split_and_the_log_names_the_data_root(tmp_path, capsys):
    root = _dataset_in(tmp_path / "clothing")
    spec = load_data(load_config({"data": {"root": str(root / "train"), "image_size": 8}}))
    lines = capsys.readouterr().out.splitlines()
    assert len(spec.train) + len(spec.val) == 6  # what was asked: train/ alone, split by val_fraction
    assert any(f"did you mean data.root: {root}? It holds train/ and validation/" in line for line in lines), lines


# ============================================================================ the cache


def _all_items(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return dataset.__getitems__([(i, 0) for i in range(len(dataset))])


def test_ram_disk_and_uncached_pipelines_give_identical_pixels(image_root, tmp_path):
    spec = load(image_root)
    size = (16, 16)
    ram = decode_all(spec.train, size, 3, kind="ram", cache_dir=None, workers=0)
    forked = decode_all(spec.train, size, 3, kind="ram", cache_dir=None, workers=2)  # worker processes
    disk = decode_all(spec.train, size, 3, kind="disk", cache_dir=tmp_path / "cache", workers=0)
    assert disk.location.startswith(str(tmp_path / "cache"))
    sets = [ImageDataset(spec.train, size, 3, decoded=d) for d in (ram, forked, disk, None)]
    reference_images, reference_labels = _all_items(sets[-1])  # uncached: decodes the files
    assert reference_images.dtype == torch.uint8 and reference_images.shape == (24, 3, 16, 16)
    for dataset in sets[:-1]:
        images, labels = _all_items(dataset)
        assert images.dtype == torch.uint8
        assert torch.equal(images, reference_images)
        assert torch.equal(labels, reference_labels)
    direct = torch.from_numpy(spec.train.read(5, size, 3)).permute(2, 0, 1)
    assert torch.equal(direct, ram.pixels[5])


def test_disk_cache_is_reused(image_root):
    spec = load(image_root)
    first = decode_all(spec.train, (16, 16), 3, kind="disk", cache_dir=None, workers=0)
    path = Path(first.location)
    assert path.is_file() and path.parent == cache_home() / "cache"
    stamp = path.stat().st_mtime_ns
    time.sleep(0.05)
    second = decode_all(spec.train, (16, 16), 3, kind="disk", cache_dir=None, workers=0)
    assert second.location == first.location
    assert path.stat().st_mtime_ns == stamp  # read, not rewritten
    assert torch.equal(first.pixels, second.pixels)
    assert not list(path.parent.glob("*.tmp*"))


def test_disk_cache_is_rebuilt_when_an_image_changes(image_root, tmp_path):
    cache_dir = tmp_path / "cache"
    spec = load(image_root)
    index = 3
    before = decode_all(spec.train, (16, 16), 3, kind="disk", cache_dir=cache_dir, workers=0)
    assert before.pixels[index].float().mean() < 200

    target = Path(spec.train.paths[index])
    Image.new("RGB", (24, 24), (255, 255, 255)).save(target)
    later = target.stat().st_mtime + 10
    os.utime(target, (later, later))
    after = decode_all(spec.train, (16, 16), 3, kind="disk", cache_dir=cache_dir, workers=0)
    assert after.location != before.location
    assert bool((after.pixels[index] == 255).all())
    others = [i for i in range(len(spec.train)) if i != index]
    assert torch.equal(after.pixels[others], before.pixels[others])


def test_disk_cache_key_includes_image_size_and_channels(image_root, tmp_path):
    spec = load(image_root)
    cache_dir = tmp_path / "cache"
    made = {}
    for size, channels in (((16, 16), 3), ((12, 12), 3), ((16, 16), 1), ((12, 16), 1)):
        decoded = decode_all(spec.val, size, channels, kind="disk", cache_dir=cache_dir, workers=0)
        assert tuple(decoded.pixels.shape) == (8, channels, *size)
        made[(size, channels)] = decoded.location
    assert len(set(made.values())) == 4
    assert len(list(cache_dir.glob("*.npy"))) == 4


def _damage_cache(path: Path, how: str) -> None:
    """One way a cache file on disk goes wrong (issue 23, item 5)."""
    sidecar = path.with_suffix(".json")
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "zero bytes":
        path.write_bytes(b"")
    elif how == "reshaped":
        np.save(path, np.zeros((4, 3, 16, 16), dtype=np.uint8))
    elif how == "another dtype":
        np.save(path, np.zeros((24, 3, 16, 32), dtype=np.uint8).view(np.float16))
    elif how == "garbage values":
        data = bytearray(path.read_bytes())
        data[-300:] = bytes(range(256)) + bytes(44)
        path.write_bytes(bytes(data))
    elif how == "garbage header":
        path.write_bytes(b"\x93NUMPY\x01\x00" + os.urandom(200) + path.read_bytes()[208:])
    elif how == "a FIFO":
        path.unlink()
        os.mkfifo(path)
    elif how == "record missing":
        sidecar.unlink()
    elif how == "record garbage":
        sidecar.write_bytes(os.urandom(64))
    elif how == "record a FIFO":
        sidecar.unlink()
        os.mkfifo(sidecar)
    elif how == "record lists another split's images":
        record = json.loads(sidecar.read_text())
        record["record"]["failed"] = [10**9]
        sidecar.write_text(json.dumps(record))
    else:
        raise AssertionError(how)


CACHE_DAMAGE = {
    "truncated": "it is truncated",
    "zero bytes": "its header is unreadable",
    "reshaped": "its header says uint8[4, 3, 16, 16]",
    "another dtype": "its header says float16",
    "garbage values": "its contents changed since it was written",
    "garbage header": "its header is unreadable",
    "a FIFO": "its data (.npy) is not a regular file",
    "record missing": "its record (.json) is missing",
    "record garbage": "its record (.json) is damaged",
    "record a FIFO": "its record (.json) is not a regular file",
    "record lists another split's images": "lists unreadable images that this split does not have",
}


@pytest.fixture
def no_hang():
    """Fail a test that blocks (a FIFO opened for reading) instead of hanging the suite."""
    import signal

    def stop(*_):
        raise TimeoutError("blocked for 60 s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("how", list(CACHE_DAMAGE))
def test_a_damaged_disk_cache_is_rebuilt_with_one_line_saying_why(image_root, tmp_path, capsys, how, no_hang):
    spec = load(image_root)
    cache_dir = tmp_path / "cache"
    first = decode_all(spec.train, (16, 16), 3, kind="disk", cache_dir=cache_dir, workers=0)
    reference = first.pixels.clone()
    path = Path(first.location)
    del first
    capsys.readouterr()
    _damage_cache(path, how)
    again = decode_all(spec.train, (16, 16), 3, kind="disk", cache_dir=cache_dir, workers=0)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: data.cache: rebuilding {path}: " + err[0].split(f"{path}: ", 1)[1]], err
    assert CACHE_DAMAGE[how] in err[0]
    assert again.seconds > 0 and torch.equal(again.pixels, reference)
    reused = decode_all(
        spec.train, (16, 16), 3, kind="disk", cache_dir=cache_dir, workers=0
    )  # whole again: reused quietly
    assert reused.seconds == 0 and torch.equal(reused.pixels, reference) and not capsys.readouterr().err
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([path.name, path.with_suffix(".json").name])


def test_a_folder_where_the_cache_goes_keeps_the_cache_in_ram(image_root, tmp_path, capsys):
    spec = load(image_root)
    first = decode_all(spec.val, (16, 16), 3, kind="disk", cache_dir=tmp_path, workers=0)
    path = Path(first.location)
    path.unlink()
    path.mkdir()
    again = decode_all(spec.val, (16, 16), 3, kind="disk", cache_dir=tmp_path, workers=0)
    assert again.location == "ram" and torch.equal(again.pixels, first.pixels)
    assert capsys.readouterr().err.strip() == (
        f"warning: data.cache: {path} is a folder, not a cache file; keeping the cache in RAM instead"
    )


def test_the_cache_is_keyed_on_content_when_size_and_mtime_stay(tmp_path):
    root = write_class_folders(tmp_path / "data", {"a": 5, "b": 5}, ext="bmp")  # uncompressed: a fixed size
    spec = load(root)
    before = decode_all(spec.train, (16, 16), 3, kind="disk", cache_dir=tmp_path / "cache", workers=0)
    target = Path(spec.train.paths[0])
    stamp = target.stat()
    Image.new("RGB", (24, 24), (255, 255, 255)).save(target)
    os.utime(target, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (stamp.st_size, stamp.st_mtime_ns)
    after = decode_all(load(root).train, (16, 16), 3, kind="disk", cache_dir=tmp_path / "cache", workers=0)
    assert after.location != before.location and bool((after.pixels[0] == 255).all())


FULL_CACHE_DISK = r"""
mount -t tmpfs -o size=64k tmpfs "$1" || exit 97
"$2" - "$1" "$3" <<'EOF'
import os, sys
from pathlib import Path
from cnnzoo.config import load_config
from cnnzoo.data.cache import decode_all
from cnnzoo.data.sources import load_data
folder, root = Path(sys.argv[1]), sys.argv[2]
spec = load_data(load_config({"data": {"root": root, "image_size": 64}}))
decoded = decode_all(spec.train, (64, 64), 3, kind="disk", cache_dir=folder, workers=0)
print("location=" + decoded.location)
print("mean=%.3f" % decoded.pixels.float().mean().item())
print("left=" + ",".join(sorted(os.listdir(folder))))
EOF
"""


def test_a_cache_on_a_full_disk_stays_in_ram_without_sigbus(image_root, tmp_path):
    import subprocess
    import sys

    from support.disk import private_tmpfs_works

    disk = tmp_path / "disk"
    if not private_tmpfs_works(disk):
        pytest.skip("no private tmpfs here (unshare -rm and mount are not allowed)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        ["unshare", "-rm", "bash", "-c", FULL_CACHE_DISK, "full", str(disk), sys.executable, str(image_root)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, (done.returncode, done.stderr)  # 135 was SIGBUS
    facts = dict(line.split("=", 1) for line in done.stdout.splitlines())
    assert facts["location"] == "ram" and facts["left"] == ""  # no temporary left on the full disk
    assert float(facts["mean"]) > 0
    assert done.stderr.strip().splitlines() == [
        f"warning: data.cache: no room for 0.3 MB in {disk}; keeping it in RAM instead"
    ]


def test_cached_array_rebuilds_a_float_cache_with_nan_written_into_it(tmp_path, capsys):
    path = tmp_path / "features.npy"
    values = torch.arange(24, dtype=torch.float32).reshape(4, 6)

    def fill(out: torch.Tensor) -> dict:
        out.copy_(values)
        return {"note": "made here"}

    built = cached_array(path, (4, 6), np.float32, key="data.feature_cache", fill=fill)
    assert not built.reused and built.record == {"note": "made here"}
    del built
    array = np.load(path, mmap_mode="r+")
    array[2, 3] = np.nan
    array.flush()
    del array
    again = cached_array(path, (4, 6), np.float32, key="data.feature_cache", fill=fill)
    assert torch.equal(again.tensor, values) and not again.reused
    assert capsys.readouterr().err.strip() == (
        f"warning: data.feature_cache: rebuilding {path}: its contents changed since it was written (checksum)"
    )


def test_auto_cache_keeps_small_data_in_ram():
    assert choose_cache("auto", 1000) == "ram"
    assert choose_cache("disk", 1000) == "disk"


# ============================================================================ augmentation

AUGMENT_OPTIONS = {
    "hflip": {"hflip": 1.0},
    "hflip-true": {"hflip": True},
    "vflip": {"vflip": 1.0},
    "rotation": {"rotation": 30.0},
    "translate": {"translate": 0.2},
    "translate-xy": {"translate": [0.1, 0.3]},
    "shear": {"shear": 15.0},
    "zoom": {"zoom": 0.3},
    "random_resized_crop": {"random_resized_crop": [0.5, 1.0]},
    "color_jitter": {"color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}},
}


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name", list(AUGMENT_OPTIONS))
def test_each_augmentation_keeps_uint8_and_shape(name, channels):
    augment = build_augment(augment_config(AUGMENT_OPTIONS[name]), (16, 12))
    assert augment is not None
    torch.manual_seed(0)
    image = torch.randint(0, 256, (channels, 16, 12), dtype=torch.uint8)
    out = augment(image)
    assert out.dtype == torch.uint8
    assert tuple(out.shape) == (channels, 16, 12)
    if name in ("hflip", "vflip"):
        assert torch.equal(out, image.flip(-1 if name == "hflip" else -2))


def test_no_augmentation_is_none():
    assert build_augment(AugmentConfig(), (16, 16)) is None


@pytest.mark.parametrize(
    "options, key",
    [
        ({"zoom": 1.5}, "data.augment.zoom"),
        ({"zoom": -0.2}, "data.augment.zoom"),
        ({"random_resized_crop": [0.9, 0.5]}, "data.augment.random_resized_crop"),
        ({"random_resized_crop": [0.5, 1.5]}, "data.augment.random_resized_crop"),
        ({"color_jitter": {"brightnes": 0.2}}, "data.augment.color_jitter.brightnes"),
    ],
)
def test_bad_augmentation_values_are_config_errors(options, key):
    with pytest.raises(ConfigError) as info:
        augment_config(options)
    assert key in str(info.value)


def test_bad_augmentation_fails_training_with_config_error(image_root, tmp_path):
    config = tiny_config(image_root)
    config["data"]["augment"] = {"zoom": 1.5}
    with pytest.raises(ConfigError, match="data.augment.zoom"):
        train(config, out=tmp_path / "runs", quiet=True)


def test_augmentation_is_seeded_per_batch(image_root):
    spec = load(image_root)
    decoded = decode_all(spec.train, (16, 16), 3, kind="ram", cache_dir=None, workers=0)
    options = {
        "hflip": 0.5,
        "rotation": 20.0,
        "translate": 0.1,
        "zoom": 0.2,
        "random_resized_crop": [0.6, 1.0],
        "color_jitter": {"brightness": 0.3},
    }
    augment = build_augment(augment_config(options), (16, 16))
    dataset = ImageDataset(spec.train, (16, 16), 3, decoded=decoded, augment=augment)
    plain = ImageDataset(spec.train, (16, 16), 3, decoded=decoded)
    batch = list(range(8))

    rng_before = torch.get_rng_state()
    first, labels = dataset.__getitems__([(i, 1234) for i in batch])
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    torch.manual_seed(99)  # nor does the global RNG decide the augmentation
    again, labels_again = dataset.__getitems__([(i, 1234) for i in batch])
    other, _ = dataset.__getitems__([(i, 4321) for i in batch])
    original, _ = plain.__getitems__([(i, 1234) for i in batch])
    assert first.dtype == torch.uint8 and first.shape == (8, 3, 16, 16)
    assert torch.equal(first, again) and torch.equal(labels, labels_again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, original)


# ============================================================================ batches


@pytest.mark.parametrize("shuffle, balanced", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize(
    "n, batch_size", [(1, 4), (2, 4), (4, 4), (5, 4), (9, 4), (8, 3), (10, 3), (17, 8), (33, 16), (7, 2)]
)
def test_epoch_batches_len_matches_iteration(n, batch_size, shuffle, balanced):
    labels = torch.tensor([i % 3 for i in range(n)])
    sampler = EpochBatches(labels, batch_size, shuffle=shuffle, seed=3, balanced=balanced)
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler), (n, batch_size)
        assert all(1 <= len(b) <= batch_size for b in batches)
        assert all(len({s for _, s in b}) == 1 for b in batches)  # one seed per batch
        flat = [i for b in batches for i, _ in b]
        if not shuffle:
            assert flat == list(range(n))
        elif not balanced:
            assert len(set(flat)) == len(flat)
            expected = n - 1 if n % batch_size == 1 and n > batch_size else n  # a lone last image is dropped
            assert len(flat) == expected


def test_epoch_batches_batch_size_one():
    labels = torch.tensor([0, 1, 0, 1, 0])
    sampler = EpochBatches(labels, 1, shuffle=True, seed=0)
    batches = list(sampler)
    assert len(sampler) == 5
    assert len(batches) == len(sampler)


def test_epoch_batches_order_depends_only_on_seed_and_epoch():
    labels = torch.tensor([i % 4 for i in range(30)])

    def batches(seed, epoch, warm_up_epochs=()):
        sampler = EpochBatches(labels, 4, shuffle=True, seed=seed)
        for e in warm_up_epochs:  # iterating other epochs first must not matter
            sampler.set_epoch(e)
            list(sampler)
        sampler.set_epoch(epoch)
        torch.manual_seed(len(warm_up_epochs))  # nor the global RNG
        return list(sampler)

    reference = batches(7, 3)
    assert batches(7, 3, warm_up_epochs=(1, 2, 5)) == reference
    assert batches(7, 4) != reference
    assert batches(8, 3) != reference
    seeds = [b[0][1] for b in reference]
    assert len(set(seeds)) == len(seeds)  # each batch its own augmentation seed


def test_balanced_sampler_draws_rare_class_as_often():
    labels = torch.tensor([0] * 90 + [1] * 10)
    balanced = EpochBatches(labels, 10, shuffle=True, seed=0, balanced=True)
    plain = EpochBatches(labels, 10, shuffle=True, seed=0, balanced=False)
    drawn_balanced, drawn_plain = [], []
    for epoch in range(1, 11):
        for sampler, out in ((balanced, drawn_balanced), (plain, drawn_plain)):
            sampler.set_epoch(epoch)
            out.extend(int(labels[i]) for b in sampler for i, _ in b)
    assert len(drawn_balanced) == 1000
    assert 0.4 < sum(drawn_balanced) / len(drawn_balanced) < 0.6
    assert sum(drawn_plain) / len(drawn_plain) == pytest.approx(0.1)


# ============================================================================ shapes


@pytest.fixture(scope="module")
def shapes_home(tmp_path_factory):
    """Generate the shapes set once for this module, in its own CNNZOO_HOME."""
    home = tmp_path_factory.mktemp("shapes-home")
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()) as said:
        mp.setenv("CNNZOO_HOME", str(home))
        spec = load_data(load_config({"data": {"source": "shapes"}}))
    return home, spec, said.getvalue().splitlines()


def test_shapes_generates_real_jpegs_once(shapes_home):
    home, spec, messages = shapes_home
    root = home / f"shapes-v{shapes.VERSION}"
    assert len(messages) == 1 and "Generating" in messages[0]
    assert spec.classes == sorted(shapes.CLASSES) and len(spec.classes) == 5
    assert (len(spec.train), len(spec.val)) == (5 * 300, 5 * 60)
    assert spec.root == str(root.resolve())
    assert spec.channels == 3 and spec.image_size == (64, 64)
    for split in ("train", "validation"):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(shapes.CLASSES)
    sample = Path(spec.train.paths[0])
    with Image.open(sample) as img:
        assert img.format == "JPEG" and img.size == (64, 64)
    assert not list(home.glob(".shapes-*"))  # no half-written temporary folder left


def test_shapes_are_reused_not_regenerated(shapes_home, monkeypatch, capsys):
    home, first, _ = shapes_home
    root = home / f"shapes-v{shapes.VERSION}"
    marker = root / shapes.MARKER
    stamps = (
        marker.stat().st_mtime_ns,
        Path(first.train.paths[0]).stat().st_mtime_ns,
        Path(first.val.paths[-1]).stat().st_mtime_ns,
    )
    monkeypatch.setenv("CNNZOO_HOME", str(home))
    cfg = load_config({"data": {"source": "shapes", "image_size": 32}})
    spec = load_data(cfg)
    assert capsys.readouterr().out == ""
    assert (
        marker.stat().st_mtime_ns,
        Path(spec.train.paths[0]).stat().st_mtime_ns,
        Path(spec.val.paths[-1]).stat().st_mtime_ns,
    ) == stamps
    assert spec.train.paths == first.train.paths
    assert spec.image_size == (32, 32)
    assert class_names(cfg) == list(shapes.CLASSES)


def test_shapes_with_explicit_root_uses_that_folder(shapes_home, tmp_path, capsys):
    """data.root for shapes: the generator writes there (here: a copy of the module's set, reused)."""
    import shutil

    home, first, _ = shapes_home
    target = tmp_path / "myshapes"
    shutil.copytree(home / f"shapes-v{shapes.VERSION}", target)
    spec = load_data(load_config({"data": {"source": "shapes", "root": str(target)}}))
    assert capsys.readouterr().out == ""
    assert spec.root == str(target.resolve())
    assert all(p.startswith(str(target)) for p in spec.train.paths)


# ============================================================================ torchvision sources


@pytest.mark.parametrize("source, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_source_from_raw_files(tmp_path, source, folder):
    from torchvision import datasets

    written = write_mnist_raw(tmp_path / "tv", folder)
    cfg = load_config({"data": {"source": source, "root": str(tmp_path / "tv")}})
    spec = load_data(cfg)
    expected = (datasets.MNIST if source == "mnist" else datasets.FashionMNIST).classes
    assert spec.classes == list(expected) and len(spec.classes) == 10
    assert class_names(cfg) == list(expected)
    assert spec.channels == 1 and spec.image_size == (28, 28)
    assert spec.mean == [0.5] and spec.std == [0.5]
    assert (len(spec.train), len(spec.val)) == (40, 10)
    assert spec.train.labels == written["train_labels"].tolist()
    decoded = decode_all(spec.train, spec.image_size, 1, kind="ram", cache_dir=None, workers=0)
    assert decoded.failed == []
    assert torch.equal(decoded.pixels[:, 0], torch.from_numpy(written["train_images"]))
    resized = decode_all(spec.val, (14, 14), 3, kind="ram", cache_dir=None, workers=0)
    assert resized.pixels.shape == (10, 3, 14, 14)


@pytest.mark.slow
def test_mnist_trains(tmp_path):
    write_mnist_raw(tmp_path / "tv", "MNIST")
    config = {
        "name": "mnist",
        "data": {"source": "mnist", "root": str(tmp_path / "tv"), "workers": 0},
        "model": {"layers": tiny_layers()},
        "train": {"epochs": 1, "batch_size": 20},
    }
    run = train(config, out=tmp_path / "runs", quiet=True)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["input"] == [1, 28, 28] and saved["model"]["num_classes"] == 10
    assert [r["epoch"] for r in metric_rows(run)] == ["1"]
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert len(ckpt["meta"]["classes"]) == 10


def test_torchvision_source_missing_without_download(tmp_path):
    empty = tmp_path / "tv"
    empty.mkdir()
    cfg = load_config({"data": {"source": "mnist", "root": str(empty)}})
    assert cfg.data.download is False
    with pytest.raises(DataError) as info:
        load_data(cfg)
    message = str(info.value)
    assert "data.download" in message and "mnist" in message and str(empty) in message
    assert list(empty.iterdir()) == []  # nothing fetched or created


@pytest.mark.slow
def test_more_loader_workers_than_cores_is_one_warning_of_cnnzoos_not_torchs(image_root, tmp_path):
    """torch's (and torchdata's) paragraph about worker processes past the core count is replaced
    by one line naming the setting; the run trains."""
    from cnnzoo.runtime.device import cpu_count

    from support.cli import run_cnnzoo

    workers, cores = cpu_count() + 1, cpu_count()
    config = tiny_config(image_root, epochs=1)
    config["data"].update(workers=workers, cache="none")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    done = run_cnnzoo(["train", "-c", "c.yaml", "-q"], tmp_path)
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "data.workers" in line or "Warning" in line]
    assert said == [
        f"warning: data.workers: {workers} loader processes for {cores} CPU cores: they compete with "
        "training for the cores and may make it slower; data.workers: auto chooses for this machine"
    ], said
