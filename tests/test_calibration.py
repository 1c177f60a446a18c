"""Calibrated probabilities (issue 31): the temperature fitted after training, stored in best.pt and
every export, applied the same by every format without torch, and evaluate's ECE before and after."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnzoo
from cnnzoo import inference
from cnnzoo.checkpoint import check_meta
from cnnzoo.errors import UserError
from cnnzoo.evaluation.analysis import calibration_error
from cnnzoo.inference.classifier import calibrated_thresholds, probabilities, temperature_of
from cnnzoo.training.calibrate import BOUNDS, fit_temperature

from support.cli import one_error_line, run_cnnzoo
from support.images import make_image_tree
from support.runs import train_run

LEGACY = Path(__file__).resolve().parent / "data" / "legacy"
META = {"classes": ["a", "b"], "channels": 3, "image_size": [8, 8], "mean": [0.5] * 3, "std": [0.5] * 3}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


# ------------------------------------------------------------------------------------ the fit itself


def test_the_fit_recovers_a_known_temperature_from_synthetic_logits():
    """Labels drawn from softmax(z); the network's logits are z * T: the fit must give T back."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (20_000, 5))
    labels = (rng.random((len(z), 1)) > _softmax(z).cumsum(axis=1)).sum(axis=1)
    assert fit_temperature(z * 2.5, labels) == pytest.approx(2.5, rel=0.05)
    assert fit_temperature(z * 0.6, labels) == pytest.approx(0.6, rel=0.05)
    one = rng.normal(0, 2, (20_000, 1))  # a one-logit (binary) head: the sigmoid's likelihood
    yes = (rng.random(len(one)) < _sigmoid(one[:, 0])).astype(np.int64)
    assert fit_temperature(one * 1.7, yes) == pytest.approx(1.7, rel=0.05)


def test_a_multi_label_fit_gives_each_class_its_own_temperature():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (20_000, 4))
    truth = (rng.random(z.shape) < _sigmoid(z)).astype(np.float32)
    truth[:, 3] = 0  # a class no validation image has: its likelihood only falls as T shrinks
    got = fit_temperature(z * np.array([0.5, 1.0, 3.0, 2.0]), truth, multi_label=True)
    assert got[:3] == pytest.approx([0.5, 1.0, 3.0], rel=0.05) and got[3] == 1.0


def test_a_perfect_validation_sharpens_within_the_bounds_instead_of_running_off():
    """Every image right with a margin: the likelihood only rises as T falls, until it is 1 to float
    precision; the search stops there (ties go to the larger T), inside its bounds."""
    logits = np.array([[5.0, -5.0], [-5.0, 5.0]] * 10)
    t = fit_temperature(logits, np.array([0, 1] * 10))
    assert BOUNDS[0] <= t < 0.5


def test_the_temperature_divides_the_logits_and_keeps_every_multi_label_answer():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 3, (500, 3)).astype(np.float32)
    assert probabilities(z, temperature=2.0) == pytest.approx(_softmax(z / 2), abs=1e-6)
    assert probabilities(z, temperature=None) == pytest.approx(_softmax(z), abs=1e-6)
    t, raw = np.array([0.5, 2.0, 1.3], np.float32), [0.3, 0.5, 0.8]
    moved = calibrated_thresholds(raw, t)
    assert moved[1] == pytest.approx(0.5) and moved[0] < 0.3 and moved[2] < 0.8  # sharper: lower; softer: nearer 0.5
    before = _sigmoid(z) >= np.array(raw)
    after = probabilities(z, multi_label=True, temperature=t) >= np.array(moved)
    assert (before == after).mean() > 0.995  # the same labels, but for float32 ties at the boundary
    assert calibrated_thresholds(raw, None) == raw and calibrated_thresholds([0.0, 1.0], 2.0) == [0.0, 1.0]


# ---------------------------------------------------------------------------------- the field checked


def test_the_checkpoint_check_takes_a_temperature_and_refuses_anything_else():
    ok = {"method": "temperature", "temperature": 1.7, "ece": 0.02, "ece_uncalibrated": 0.06, "images": 9}
    check_meta({**META, "calibration": ok}, "m.pt", "checkpoint", prefix="meta.")
    check_meta({**META, "task": "multi", "thresholds": [0.5, 0.5], "calibration": {**ok, "temperature": [1.0, 2.0]}},
               "m.pt", "checkpoint", prefix="meta.")  # fmt: skip
    assert temperature_of({**META, "calibration": ok}) == 1.7 and temperature_of(META) is None
    for bad in (0, -1.0, float("nan"), float("inf"), 1e9, "2", True, None, [1.0, 2.0]):
        with pytest.raises(UserError, match=r"^m.pt: damaged or foreign checkpoint: meta\.calibration\.temperature "):
            check_meta({**META, "calibration": {**ok, "temperature": bad}}, "m.pt", "checkpoint", prefix="meta.")
    multi = {**META, "task": "multi", "thresholds": [0.5, 0.5]}
    with pytest.raises(UserError, match=r"calibration\.temperature should be .* or 2 of them \(one per class\)"):
        check_meta({**multi, "calibration": {**ok, "temperature": [1.0, 2.0, 3.0]}}, "m.pt", "checkpoint")
    for bad in ("temperature", [1.0], {"temperature": 1.0}, {**ok, "method": "platt"}):
        with pytest.raises(UserError, match=r"^m.onnx: damaged or foreign ONNX export: metadata calibration should"):
            check_meta({**META, "calibration": bad}, "m.onnx", "ONNX export", prefix="metadata ")


def test_a_model_from_before_calibration_loads_uncalibrated():
    model = inference.load(LEGACY / "run" / "best.pt")
    assert model.temperature is None and "calibration" not in model.meta


# ------------------------------------------------------------------------------ trained for real, tiny


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("calibrated"), lambda base: make_image_tree(base / "images"))


@pytest.fixture(scope="module")
def uncalibrated(tmp_path_factory):
    make = lambda base: make_image_tree(base / "images")  # noqa: E731
    return train_run(tmp_path_factory.mktemp("uncalibrated"), make, calibrate="none")


def _images(run) -> list[str]:
    return sorted(str(p) for p in (run.root / "validation").rglob("*.png"))


def test_training_stores_the_temperature_it_fits_on_the_validation_split(calibrated):
    best = torch.load(calibrated.best, weights_only=True)
    record = best["meta"]["calibration"]
    assert record["method"] == "temperature" and record["images"] == 8  # the 8 validation images
    assert BOUNDS[0] <= record["temperature"] <= BOUNDS[1] and record["temperature"] != pytest.approx(1.0)
    assert 0 <= record["ece"] <= record["ece_uncalibrated"] <= 1  # fitted on these: never worse there
    last = torch.load(calibrated.run_dir / "last.pt", weights_only=True)
    if last["epoch"] == best["epoch"]:  # the same weights: the same temperature
        assert last["meta"]["calibration"] == record
    else:
        assert "calibration" not in last["meta"]


def test_checkpoint_onnx_and_torchscript_give_the_same_calibrated_probabilities(calibrated, tmp_path):
    pytest.importorskip("onnxruntime")
    model = inference.load(calibrated.best)
    t = torch.load(calibrated.best, weights_only=True)["meta"]["calibration"]["temperature"]
    pixels = np.stack([model.preprocess(p) for p in _images(calibrated)])
    logits, probs = model.logits_and_probabilities(pixels)
    assert probs == pytest.approx(_softmax(logits / t), abs=1e-5)
    assert np.abs(probs - _softmax(logits)).max() > 1e-3  # the temperature changed them
    for fmt in ("onnx", "torchscript"):
        exported = cnnzoo.export(calibrated.best, fmt, out=tmp_path / f"model.{'pt' if fmt == 'torchscript' else fmt}")
        other = inference.load(exported.path, trust_torchscript=True)
        assert other.meta["calibration"]["temperature"] == t
        assert other.probabilities(pixels) == pytest.approx(probs, abs=1e-5)
        records = other.predict(_images(calibrated))
        assert [r["probability"] for r in records] == pytest.approx([float(p.max()) for p in probs], abs=1e-5)


def test_evaluate_json_reports_the_ece_as_served_and_without_the_temperature(calibrated, tmp_path):
    result = run_cnnzoo(["evaluate", calibrated.best, "--json", "--out", tmp_path], calibrated.base)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    model = inference.load(calibrated.best)
    logits = np.stack([model.logits(model.preprocess(p)[None])[0] for p in _images(calibrated)])
    labels = np.array([Path(p).parent.name == "b" for p in _images(calibrated)], dtype=np.int64)
    assert report["temperature"] == pytest.approx(model.temperature)
    assert report["ece"] == pytest.approx(calibration_error(_softmax(logits / model.temperature), labels), abs=1e-5)
    assert report["ece_uncalibrated"] == pytest.approx(calibration_error(_softmax(logits), labels), abs=1e-5)
    stored = torch.load(calibrated.best, weights_only=True)["meta"]["calibration"]
    assert report["ece"] == pytest.approx(stored["ece"], abs=1e-5)  # evaluate scores the split T was fitted on
    page = (tmp_path / "report.html").read_text()
    assert 'id="ece-uncalibrated"' in page and 'alt="reliability before calibration"' in page
    assert 'alt="reliability after calibration"' in page
    assert f"{100 * report['ece_uncalibrated']:.2f}%</span> before" in page


def test_calibrate_none_stores_nothing_and_evaluate_says_so(uncalibrated, tmp_path):
    best = torch.load(uncalibrated.best, weights_only=True)
    assert "calibration" not in best["meta"]
    report = cnnzoo.evaluate(uncalibrated.best, out=tmp_path, progress=False)
    assert report["temperature"] is None and report["ece"] == report["ece_uncalibrated"]
    page = (tmp_path / "report.html").read_text()
    assert "ece-uncalibrated" not in page and 'alt="reliability diagram"' in page


def test_a_bad_temperature_in_a_checkpoint_is_one_line(calibrated, tmp_path):
    ckpt = torch.load(calibrated.best, weights_only=True)
    ckpt["meta"]["calibration"]["temperature"] = -2.0
    torch.save(ckpt, tmp_path / "bad.pt")
    line = one_error_line(run_cnnzoo(["predict", "-m", tmp_path / "bad.pt", _images(calibrated)[0]], tmp_path))
    assert "bad.pt: damaged or foreign checkpoint: meta.calibration.temperature should be a number from" in line
    del ckpt["meta"]["calibration"]  # as a checkpoint from before calibration: it loads, uncalibrated
    torch.save(ckpt, tmp_path / "old.pt")
    old = inference.load(tmp_path / "old.pt")
    assert old.temperature is None
    pixels = old.preprocess(_images(calibrated)[0])[None]
    assert old.probabilities(pixels) == pytest.approx(_softmax(old.logits(pixels)), abs=1e-6)
