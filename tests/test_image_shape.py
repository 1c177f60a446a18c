"""Images keep their shape (issue #30 item 7): ``data.resize`` (squash, letterbox, crop) and
``data.channels`` 1 to 4, with pretrained backbones adapted to the channel count.

The geometry is checked on a long, thin picture whose two ends are coloured (red left, blue
right, grey between): letterbox and squash keep both ends, a centre crop cuts both off. The
parity tests train for real, export ONNX and compare its probabilities with the checkpoint's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnzoo
from cnnzoo import inference
from cnnzoo.checkpoint import check_meta
from cnnzoo.data import preprocess
from cnnzoo.errors import UserError
from cnnzoo.model.backbones import Backbone
from cnnzoo.model.layers import trace_chain
from cnnzoo.model.weights import adapt_input_conv

from support.images import make_image_tree
from support.runs import train_run
from support.shared import shared_path

RED, BLUE, GREY = (255, 0, 0), (0, 0, 255), (128, 128, 128)
MEAN_FILL = tuple(round(m * 255) for m in preprocess.IMAGENET_MEAN)  # (124, 116, 104)


def long_thin(width: int = 200, height: int = 20) -> np.ndarray:
    """A grey strip with a red left end and a blue right end, each a tenth of its length."""
    img = np.empty((height, width, 3), np.uint8)
    img[:] = GREY
    img[:, : width // 10] = RED
    img[:, -width // 10 :] = BLUE
    return img


def fitted(mode: str, image: np.ndarray, size=(32, 32)) -> np.ndarray:
    return preprocess.load_image(image, size, 3, preprocess.Fit.of(mode, preprocess.IMAGENET_MEAN))


def has(pixels: np.ndarray, colour: tuple[int, ...]) -> bool:
    return bool((np.abs(pixels.astype(int) - colour).max(axis=-1) <= 8).any())


def test_letterbox_keeps_both_ends_and_pads_with_the_mean():
    out = fitted("letterbox", long_thin())
    assert out.shape == (32, 32, 3)
    middle = out[16]
    assert has(middle[:2], RED) and has(middle[-2:], BLUE)  # the ends reach the edges, in place
    assert (out[0] == MEAN_FILL).all() and (out[-1] == MEAN_FILL).all()  # bands above and below
    assert not has(out[:, 16], RED)  # nothing stretched: the grey middle stays grey


def test_squash_keeps_both_ends_and_fills_the_frame():
    out = fitted("squash", long_thin())
    assert has(out[0, :2], RED) and has(out[-1, -2:], BLUE)  # top row to bottom row: no padding
    assert not (out == MEAN_FILL).all(axis=-1).any()


def test_crop_cuts_both_ends_off():
    out = fitted("crop", long_thin())
    assert out.shape == (32, 32, 3)
    assert not has(out, RED) and not has(out, BLUE)
    assert has(out, GREY)


def test_letterbox_pads_the_sides_of_a_tall_image_for_a_wide_model():
    tall = np.transpose(long_thin(), (1, 0, 2))  # red top, blue bottom
    out = fitted("letterbox", tall, size=(16, 48))
    assert out.shape == (16, 48, 3)
    assert has(out[:2, 24], RED) and has(out[-2:, 24], BLUE)
    assert (out[:, 0] == MEAN_FILL).all() and (out[:, -1] == MEAN_FILL).all()


def test_an_image_of_the_model_aspect_is_the_same_in_every_mode():
    square = long_thin(64, 64)
    assert all((fitted(mode, square) == fitted("squash", square)).all() for mode in ("letterbox", "crop"))


@pytest.mark.parametrize("mode", ["letterbox", "crop"])
def test_full_resolution_reads_bring_the_image_to_the_model_aspect(mode):
    """The random-resized-crop (data.cache: none) is drawn from the image fitted as the cached one is."""
    fit = preprocess.Fit.of(mode, preprocess.IMAGENET_MEAN)
    full = preprocess.load_full_resolution(long_thin(), 3, crop_to=(32, 64), min_area=0.5, fit=fit)
    assert full.shape[1] == 2 * full.shape[0]  # the model's 1:2 aspect
    assert (has(full, RED) and has(full, BLUE)) == (mode == "letterbox")


def test_old_files_and_absent_fields_read_as_squash():
    mean = preprocess.IMAGENET_MEAN
    assert preprocess.Fit.of("bilinear", mean).mode == "squash"  # what files before data.resize wrote
    assert preprocess.Fit.of(None, mean).mode == "squash"
    assert preprocess.Fit.of("letterbox", mean).fill == MEAN_FILL
    with pytest.raises(ValueError):
        preprocess.Fit.of("pad", mean)
    legacy = cnnzoo.load(Path(__file__).resolve().parent / "data" / "legacy" / "run" / "best.pt")
    assert legacy.meta["resize"] == "bilinear" and legacy.fit == preprocess.SQUASH


def test_metadata_with_a_bad_resize_or_channel_count_is_one_line():
    meta = {"classes": ["a", "b"], "channels": 1, "image_size": [8, 8], "mean": [0.5], "std": [0.5]}
    check_meta({**meta, "resize": "letterbox"}, "m.onnx", "ONNX export")
    with pytest.raises(UserError) as bad:
        check_meta({**meta, "resize": "stretch"}, "m.onnx", "ONNX export")
    assert str(bad.value) == (
        "m.onnx: damaged or foreign ONNX export: resize should be squash, letterbox, crop or bilinear "
        "(how images are resized)"
    )
    with pytest.raises(UserError, match=r"^m.onnx: damaged or foreign ONNX export: channels should be 1 \(grey\)"):
        check_meta({**meta, "channels": 7, "mean": [0.5] * 7, "std": [0.5] * 7}, "m.onnx", "ONNX export")


def test_channel_counts_read_images_as_l_la_rgb_rgba():
    rgba = Image.new("RGBA", (6, 6), (200, 100, 50, 0))  # fully transparent
    assert preprocess.load_image(rgba, (4, 4), 4)[0, 0, 3] == 0  # alpha kept
    assert preprocess.load_image(rgba, (4, 4), 3)[0, 0].tolist() == [255, 255, 255]  # shown on white
    half = Image.new("RGBA", (6, 6), (200, 100, 50, 128))
    assert np.abs(preprocess.load_image(half, (4, 4), 4)[0, 0].astype(int) - (200, 100, 50, 128)).max() <= 2
    assert preprocess.load_image(rgba, (4, 4), 2).shape == (4, 4, 2)
    assert preprocess.load_image(Image.new("RGB", (6, 6), (10, 20, 30)), (4, 4), 1).shape == (4, 4, 1)
    assert sorted(preprocess.CHANNEL_MODES) == list(cnnzoo.config.READABLE_CHANNELS)


def test_normalisation_per_channel_count():
    mean, std = preprocess.resolve_normalization("imagenet", 1)
    assert mean == [pytest.approx(sum(preprocess.IMAGENET_MEAN) / 3)] and len(std) == 1
    assert preprocess.resolve_normalization("auto", 4)[0] == [*preprocess.IMAGENET_MEAN, 0.5]
    assert preprocess.resolve_normalization("auto", 2) == ([0.5, 0.5], [0.5, 0.5])
    assert preprocess.channel_stats([0.2, 0.4, 0.6], [0.1, 0.2, 0.3], 1) == (
        [pytest.approx(0.4)],
        [pytest.approx(0.2)],
    )


def test_adapted_first_conv_answers_a_grey_image_as_the_rgb_conv_does():
    torch.manual_seed(0)
    rgb = torch.randn(8, 3, 3, 3)
    grey = torch.rand(2, 1, 9, 9)
    want = torch.nn.functional.conv2d(grey.expand(-1, 3, -1, -1), rgb)
    one = adapt_input_conv(rgb, 1)
    assert torch.equal(one, rgb.sum(dim=1, keepdim=True))
    assert torch.allclose(torch.nn.functional.conv2d(grey, one), want, atol=1e-5)
    four = adapt_input_conv(rgb, 4)  # R G B R, scaled by 3/4
    assert torch.allclose(four[:, :3], rgb * 0.75) and torch.allclose(four[:, 3], rgb[:, 0] * 0.75)
    six = adapt_input_conv(rgb, 6)  # RGB twice, halved: an image with equal channels answers the same
    assert torch.allclose(torch.nn.functional.conv2d(grey.expand(-1, 6, -1, -1), six), want, atol=1e-5)


def test_a_torchvision_backbone_takes_one_channel_with_summed_rgb_weights(tmp_path):
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()  # stands in for ImageNet weights
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    backbone = Backbone("resnet18", weights=str(path), in_channels=1)
    backbone.load_pretrained()
    assert backbone.body.conv1.in_channels == 1
    assert torch.equal(backbone.body.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(backbone.body.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])  # the rest as it was
    assert backbone(torch.zeros(1, 1, 32, 32)).shape == (1, 512, 1, 1)


@pytest.mark.needs_shared
def test_the_shared_timm_weights_load_into_a_grey_efficientnet_lite0():
    pytest.importorskip("timm")
    path = shared_path("weights/tf_efficientnet_lite0.imagenet.pth")
    state = torch.load(path, map_location="cpu", weights_only=True)
    backbone = Backbone("timm/tf_efficientnet_lite0", weights=str(path), in_channels=1)
    backbone.load_pretrained()
    assert torch.equal(backbone.body.conv_stem.weight, state["conv_stem.weight"].sum(dim=1, keepdim=True))


def test_plain_layers_take_their_in_channels_from_the_data():
    infos = trace_chain([{"conv": {"out_channels": 4, "kernel_size": 3}}, "relu"], (4, 16, 16))
    assert infos[0].kwargs["in_channels"] == 4
    backbone = trace_chain([{"backbone": {"name": "resnet18", "weights": None}}], (1, 32, 32))
    assert backbone[0].kwargs["in_channels"] == 1


# ----------------------------------------------------------------- trained for real, exported


def wide_tree(folder):
    """Class folders of 24x48 pictures: letterboxed to a square, each gets bands above and below."""
    root = make_image_tree(folder / "images", train={"a": 10, "b": 10}, validation={"a": 4, "b": 4}, size=24)
    for path in root.rglob("*.png"):
        img = Image.open(path)
        img.resize((48, 24)).save(path)
    return root


@pytest.fixture(scope="module")
def shaped(tmp_path_factory):
    """A tiny CNN trained on grey, letterboxed images; and its ONNX export."""
    from cnnzoo.deploy.export import export

    def grey_letterbox(cfg):
        cfg["data"].update(resize="letterbox", channels=1, normalize="imagenet")

    run = train_run(tmp_path_factory.mktemp("shape-run"), wide_tree, grey_letterbox)
    return run, export(run.best, "onnx")


@pytest.mark.slow
def test_letterbox_and_grey_train_export_and_predict_as_the_checkpoint(shaped):
    pytest.importorskip("onnxruntime")
    run, exported = shaped
    assert exported.ok
    reference = cnnzoo.load(run.best)
    model = inference.load(exported.path)
    for loaded in (reference, model):
        assert loaded.meta["resize"] == "letterbox" and loaded.channels == 1 and len(loaded.mean) == 1
        assert loaded.fit.mode == "letterbox"
    images = sorted(str(p) for p in (run.root / "validation").rglob("*.png"))
    pixels = model.preprocess(images[0])
    assert pixels.shape == (16, 16, 1) and (pixels[0] == pixels[0, 0]).all()  # a padded band on top
    got, want = model.predict(images, top_k=2), reference.predict(images, top_k=2)
    for g, w in zip(got, want):
        assert g["label"] == w["label"] and g["probability"] == pytest.approx(w["probability"], abs=1e-4)
