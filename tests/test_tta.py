"""Test-time augmentation (issue #20): ``evaluate --tta`` and ``predict --tta`` average the
probabilities of five views of each image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cnnzoo
from cnnzoo.inference.tta import VIEWS, AveragedViews, views
from cnnzoo.training.run import train

from support.cli import one_error_line, run_cnnzoo
from support.runs import tiny_config


def test_views_are_the_image_its_mirror_and_three_crops():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    out = views(x)
    assert len(out) == len(VIEWS) == 5
    assert all(v.shape == x.shape for v in out)
    assert torch.equal(out[0], x) and torch.equal(out[1], x.flip(-1))
    # a crop of 14 of 16 pixels from the top-left corner, stretched: its first pixel is the image's
    assert out[3][..., 0, 0].tolist() == x[..., 0, 0].tolist()
    assert out[4][..., -1, -1].tolist() == x[..., -1, -1].tolist()


@pytest.mark.parametrize("outputs", [3, 1])
def test_logits_carry_the_averaged_probabilities(outputs):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(outputs))
    x = torch.randn(4, 3, 12, 12)
    net(x)
    logits = AveragedViews(net)(x)
    if outputs == 1:
        expected = torch.stack([net(v).sigmoid() for v in views(x)]).mean(0)
        assert torch.allclose(logits.sigmoid(), expected, atol=1e-6)
    else:
        expected = torch.stack([net(v).softmax(1) for v in views(x)]).mean(0)
        assert torch.allclose(logits.softmax(1), expected, atol=1e-6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from support.images import make_image_tree

    folder = tmp_path_factory.mktemp("tta")
    root = make_image_tree(folder / "images")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNZOO_HOME", str(folder / "home"))
        run = train(tiny_config(root, epochs=1), out=folder / "runs", quiet=True)
    return folder, run


@pytest.mark.slow
def test_evaluate_and_predict_with_tta(trained):
    folder, run = trained
    plain = cnnzoo.evaluate(run / "best.pt", split="validation", progress=False, out=folder / "plain")
    tta = cnnzoo.evaluate(run / "best.pt", split="validation", progress=False, out=folder / "tta", tta=True)
    assert tta["tta"] is True and plain["tta"] is False
    assert tta["num_images"] == plain["num_images"] and tta["loss"] != plain["loss"]

    model = cnnzoo.load(run / "best.pt")
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    without = model.probabilities(image[None])
    model.tta = True
    with_tta = model.probabilities(image[None])
    assert with_tta.shape == without.shape and np.allclose(with_tta.sum(1), 1, atol=1e-5)
    assert not np.allclose(with_tta, without)

    images = sorted((folder / "images").rglob("*.png"))[:2]
    done = run_cnnzoo(["predict", "--tta", "-m", run / "best.pt", "--json", *images], folder)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_tta_on_an_onnx_model_is_one_line(trained):
    folder, run = trained
    onnx_path = folder / "model.onnx"
    cnnzoo.export(run / "best.pt", "onnx", out=onnx_path)
    image = sorted((folder / "images").rglob("*.png"))[0]
    line = one_error_line(run_cnnzoo(["predict", "--tta", "-m", onnx_path, image], folder))
    assert "--tta" in line and "torch" in line
