"""``cnnzoo explain`` (issue #12): the report for real trained models.

A model trained on the built-in shapes data is explained on freshly drawn shapes whose
masks are known (:func:`cnnzoo.data.shapes.shape_mask`): Grad-CAM must put clearly more heat
inside the shape than outside. The HTML is rendered in headless Chromium when it is
installed: not blank, one section per layer.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import cnnzoo
from cnnzoo.cli import app
from cnnzoo.data.shapes import CLASSES, draw_shape, shape_mask
from cnnzoo.explanation.page import explain

from support.browser import headless_chromium
from support.cli import one_error_line, run_cnnzoo
from support.runs import tiny_config

pytestmark = pytest.mark.slow  # every test here trains a model or uses one a module fixture trained


@pytest.fixture(scope="module")
def shapes_run(quickstart_run):
    """The quickstart config trained for real on the generated shapes: the session's one quickstart
    run (conftest), which its own test also checks; read here, never changed."""
    return quickstart_run.run_dir


def drawn(folder: Path, kind: str, seed: int) -> tuple[Path, np.ndarray]:
    path = folder / f"{kind}-{seed}.jpg"
    draw_shape(kind, seed).save(path, quality=95)
    return path, shape_mask(kind, seed)


def test_gradcam_heat_lies_on_the_shape(shapes_run, tmp_path):
    ratios = []
    for n, kind in enumerate(CLASSES * 6):  # 30 drawings: a median that one odd image cannot move
        path, mask = drawn(tmp_path, kind, 900_000 + n)
        _, report = explain(shapes_run / "best.pt", path, out=tmp_path / f"{n}.html")
        cam = report.cam
        small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(cam.shape[::-1], Image.BILINEAR)) >= 128
        assert small.any() and (~small).any()
        ratios.append(cam[small].mean() / max(cam[~small].mean(), 1e-6))
    # the evidence for the predicted class sits on the drawn shape, not on the background
    assert np.median(ratios) >= 2.0, ratios


def test_report_has_every_layer_and_the_pictures(shapes_run, tmp_path):
    path, mask = drawn(tmp_path, "star", 424242)
    out, report = explain(shapes_run / "best.pt", path, out=tmp_path / "star.html", png_dir=tmp_path / "png")
    text = out.read_text()
    layers = torch.load(shapes_run / "best.pt", weights_only=True)["layers"]
    assert len(re.findall(r'<section class="layer"', text)) == len(layers) == len(report.layers)
    assert "(32 − 3 + 2·1)/1 + 1 = 32" in text and "(32 − 2 + 2·0)/2 + 1 = 16" in text  # conv, pool
    assert "Grad-CAM" in text and "Learned filters of the first conv layer" in text
    # the answer first (issue 30: it was at the bottom of a 9,300 px page): prediction, Grad-CAM, then the rest
    order = ["<h1>", 'id="probabilities"', 'id="gradcam"', "The input as the network sees it", '<section class="layer"']
    places = [text.index(marker) for marker in [*order, "Learned filters of the first conv layer"]]
    assert places == sorted(places), dict(zip(order, places))
    assert text.index("<img", text.index('id="gradcam"')) < text.index("The input as the network sees it")
    assert "http://" not in text and "https://" not in text  # opens with no network
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert "input.png" in pngs and "gradcam.png" in pngs and "filters-filter000.png" in pngs
    assert any(name.startswith("layer00-Conv2d-map") for name in pngs)
    first_conv = report.layers[0]
    assert len(first_conv.pictures) == 16  # out_channels of the first conv, under the cap
    probabilities = report.probabilities
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert (
        report.classes[int(probabilities.argmax())]
        == cnnzoo.load(shapes_run / "best.pt").predict(path, unknown=False)[0]["label"]
    )


def test_target_picks_the_class_grad_cam_explains(shapes_run, tmp_path):
    path, _ = drawn(tmp_path, "circle", 31337)
    _, chosen = explain(shapes_run / "best.pt", path, out=tmp_path / "a.html", target="triangle")
    assert chosen.classes[chosen.target] == "triangle"
    # in-process: the same explain command code (the refusal test below runs the real command)
    done = CliRunner().invoke(app, ["explain", str(path), "-m", str(shapes_run / "best.pt"), "--target", "hexagon"])
    assert (
        "--target hexagon: not a class of this model; its classes: circle, cross, square, star, triangle"
        in one_error_line(done)
    )


def _chromium() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("needs Debian's chromium (apt install chromium)")
    return chromium


def test_the_report_renders_in_a_browser(shapes_run, tmp_path):
    chromium = _chromium()
    path, _ = drawn(tmp_path, "cross", 777)
    out, report = explain(shapes_run / "best.pt", path, out=tmp_path / "cross.html")
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0
    assert dom.stdout.count('<section class="layer"') == len(report.layers)
    assert dom.stdout.count('<div class="row') == len(report.classes)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium, *flags, "--window-size=1200,1600", f"--screenshot={shot}", out.as_uri()],
        capture_output=True,
        timeout=120,
    )
    grey = np.asarray(Image.open(shot).convert("L"))
    assert grey.std() > 20 and len(np.unique(grey)) > 50  # pictures drawn, not a blank page


def test_the_page_opens_with_the_prediction_and_grad_cam(shapes_run, tmp_path):
    from selenium.webdriver.common.by import By

    path, _ = drawn(tmp_path, "square", 4242)
    out, report = explain(shapes_run / "best.pt", path, out=tmp_path / "square.html")
    browser = headless_chromium()  # a 1000 x 800 window
    try:
        browser.get(out.as_uri())
        height = browser.execute_script("return window.innerHeight")
        page = browser.execute_script("return document.documentElement.scrollHeight")
        gradcam = browser.find_element(By.CSS_SELECTOR, "#gradcam img")
        bars = browser.find_elements(By.CSS_SELECTOR, "#probabilities .row")
        assert len(bars) == len(report.classes)
        bottoms = [
            browser.execute_script("return arguments[0].getBoundingClientRect().bottom", e) for e in [gradcam, *bars]
        ]
        # without scrolling: the whole Grad-CAM picture and every class's bar, on a page several screens long
        assert max(bottoms) <= height < page / 2, (bottoms, height, page)
    finally:
        browser.quit()


def test_grey_model_and_a_backbone_model_are_explained(image_root, tmp_path):
    config = tiny_config(image_root, epochs=1)
    config["data"]["channels"] = 1
    grey = cnnzoo.train(config, out=tmp_path / "grey", quiet=True)
    image = next((image_root / "validation" / "a").iterdir())
    out, report = explain(grey / "best.pt", image, png_dir=tmp_path / "grey-png")
    assert out == grey / "explain" / f"{image.stem}.html" and out.is_file()
    assert len(report.input_pictures) == 2  # the resized image and its one normalised channel
    assert report.cam is not None and report.cam.shape == (16, 16)

    import torchvision

    torch.manual_seed(1)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    config = tiny_config(image_root, epochs=1)
    config["data"]["image_size"] = 64  # resnet18's last stage: 2x2 maps for Grad-CAM
    config["model"]["layers"] = [
        {"backbone": {"name": "resnet18", "weights": str(weights)}},
        "gap",
        {"dense": {"out_features": "num_classes"}},
    ]
    run = cnnzoo.train(config, out=tmp_path / "bb", quiet=True)
    out, report = explain(run / "best.pt", image)
    captions = [p.caption for p in report.layers[0].pictures]
    assert sum(c.startswith("stage 0 ") for c in captions) > 0 and sum(c.startswith("stage 4 ") for c in captions) > 0
    assert report.cam_layer == "0 (Backbone)" and report.cam.shape == (64, 64)
    assert len(report.filters) == 64  # resnet18's first conv, inside the backbone


def test_explain_refuses_an_export_and_an_unreadable_image(image_root, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    run = cnnzoo.train(tiny_config(image_root, epochs=1), out=tmp_path / "runs", quiet=True)
    onnx_file = cnnzoo.export(run / "best.pt", "onnx").path
    image = next((image_root / "validation" / "a").iterdir())
    assert "explain needs a checkpoint" in one_error_line(run_cnnzoo(["explain", image, "-m", onnx_file], tmp_path))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"no")
    monkeypatch.chdir(tmp_path)  # in-process: the same command code as the real process above
    done = CliRunner().invoke(app, ["explain", str(broken), "-m", str(run / "best.pt")])
    assert "cannot read image" in one_error_line(done)
