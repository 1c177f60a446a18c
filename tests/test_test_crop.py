"""The test-time centre crop (issue 32, item 5): chosen after training on the validation split by
its rule, stored in best.pt's meta, carried by every export and applied alike by the checkpoint,
ONNX and TorchScript; a model without one reads whole images as before."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnzoo import inference
from cnnzoo.checkpoint import TEST_CROPS, load_checkpoint
from cnnzoo.data import preprocess
from cnnzoo.deploy.export import export
from cnnzoo.evaluation.checkpoints import score_checkpoint
from cnnzoo.training import test_crop

from support.cli import one_error_line, run_cnnzoo
from support.images import make_image_tree
from support.runs import TrainedRun, train_run

CROPS = {"random_resized_crop": [0.6, 1.0], "hflip": True}


def test_the_rule_keeps_the_best_accuracy_and_of_equals_the_larger_crop():
    assert test_crop.choose({1.0: 0.80, 0.9: 0.85, 0.8: 0.83}) == 0.9
    assert test_crop.choose({1.0: 0.85, 0.95: 0.85, 0.9: 0.85}) == 1.0  # no gain: the whole image
    assert test_crop.choose({1.0: 0.80, 0.9: 0.85, 0.85: 0.85}) == 0.9
    assert 1.0 in test_crop.CANDIDATES and all(TEST_CROPS[0] <= c <= TEST_CROPS[1] for c in test_crop.CANDIDATES)
    assert TEST_CROPS == preprocess.TEST_CROPS  # the check of meta and the fit agree on the range


def test_a_crop_reads_the_centred_share_of_each_side():
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    for mode in preprocess.RESIZE_MODES:  # 1.0 and absent: the fit every model read before
        assert preprocess.Fit.of(mode, [0.5] * 3, 1.0) == preprocess.Fit.of(mode, [0.5] * 3)
    half = preprocess.Fit.of("squash", [0.5] * 3, 0.5)
    np.testing.assert_array_equal(preprocess.load_image(image, (20, 30), 3, half), image[10:30, 15:45])
    assert repr(preprocess.Fit.of("crop", [0.5] * 3)) == "Fit(mode='crop', fill=())"  # cache keys made before
    with pytest.raises(ValueError, match="test_crop"):
        preprocess.Fit.of("squash", [0.5] * 3, 0.3)


def _train(tmp_path: Path, augment: dict, **train) -> TrainedRun:
    def edit(cfg: dict) -> None:
        cfg["data"]["augment"] = augment

    return train_run(tmp_path, lambda base: make_image_tree(base / "images", ext="jpg"), edit, **train)


@pytest.fixture(scope="module")
def cropped(tmp_path_factory) -> TrainedRun:
    return _train(tmp_path_factory.mktemp("crop-run"), CROPS, epochs=3)


@pytest.mark.slow
def test_training_on_crops_stores_the_crop_the_rule_chooses_on_validation(cropped):
    ckpt = load_checkpoint(cropped.best)
    meta, choice = ckpt["meta"], ckpt["meta"]["test_crop_choice"]
    assert choice["accuracy"]["1.0"] == pytest.approx(ckpt["metrics"]["val_acc"])  # the whole image: training's view
    assert choice["images"] == 8 and list(choice["accuracy"]) == [str(c) for c in test_crop.CANDIDATES]
    for crop in test_crop.CANDIDATES:  # each figure is evaluate's accuracy on validation with that crop
        scored = score_checkpoint(
            cropped.best, None, split="validation", batch_size=None, device="cpu", progress=False, test_crop=crop
        )
        assert choice["accuracy"][str(crop)] == test_crop.accuracy(scored)
    assert meta["test_crop"] == test_crop.choose({float(c): a for c, a in choice["accuracy"].items()})
    assert inference.load(cropped.best).fit.crop == meta["test_crop"]
    assert meta["calibration"]["images"] == 8  # the temperature came after, on the chosen view
    assert "test_crop" not in load_checkpoint(cropped.run_dir / "last.pt")["meta"]  # training's record, as it was


@pytest.mark.slow
@pytest.mark.parametrize(("augment", "train"), [({"hflip": True}, {}), (CROPS, {"test_crop": "none"})])
def test_no_crop_without_random_resized_crop_or_with_none(tmp_path, augment, train):
    run = _train(tmp_path, augment, **train)
    meta = load_checkpoint(run.best)["meta"]
    assert "test_crop" not in meta and "test_crop_choice" not in meta
    model = inference.load(run.best)
    assert model.fit.crop == 1.0 and "test_crop" not in model.info()


@pytest.fixture(scope="module")
def forced(cropped, tmp_path_factory) -> Path:
    """best.pt with meta.test_crop 0.8 whatever was chosen: a crop that surely changes the pixels."""
    folder = tmp_path_factory.mktemp("forced")
    ckpt = torch.load(cropped.best, weights_only=True)
    ckpt["meta"]["test_crop"] = 0.8
    torch.save(ckpt, folder / "best.pt")
    return folder / "best.pt"


def _probabilities(model, images: list[str]) -> np.ndarray:
    records = model.predict(images, top_k=2, unknown=False)
    return np.array([[t["probability"] for t in sorted(r["top_k"], key=lambda t: t["label"])] for r in records])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_every_export_carries_the_crop_and_applies_it_as_the_checkpoint_does(cropped, forced, fmt, tmp_path):
    pytest.importorskip("onnxruntime")
    images = sorted(str(p) for p in (cropped.root / "validation").rglob("*.jpg"))
    result = export(forced, fmt, out=tmp_path)
    assert result.ok
    exported = inference.load(result.path, trust_torchscript=True)  # our own file
    assert exported.meta["test_crop"] == 0.8 and exported.info()["test_crop"] == 0.8
    checkpoint = inference.load(forced)
    np.testing.assert_allclose(_probabilities(exported, images), _probabilities(checkpoint, images), atol=1e-5)
    whole = shutil.copy2(cropped.best, tmp_path / "whole.pt")  # the same weights
    ckpt = torch.load(whole, weights_only=True)
    ckpt["meta"]["test_crop"] = 1.0
    torch.save(ckpt, whole)
    assert not np.allclose(_probabilities(inference.load(whole), images), _probabilities(checkpoint, images))


@pytest.mark.slow
def test_a_test_crop_out_of_range_is_one_line(cropped, tmp_path):
    ckpt = torch.load(cropped.best, weights_only=True)
    ckpt["meta"]["test_crop"] = 0.3
    torch.save(ckpt, tmp_path / "bad.pt")
    image = next((cropped.root / "validation").rglob("*.jpg"))
    line = one_error_line(run_cnnzoo(["predict", "--model", tmp_path / "bad.pt", image], tmp_path))
    assert "meta.test_crop should be the share of each side kept, 0.5 to 1.0" in line


@pytest.mark.slow
def test_bench_single_view_prints_each_view_and_each_crop(cropped, tmp_path):
    from support.cli import run_script

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_single_view.py"
    out = run_script([script, "--run", cropped.run_dir, "--heldout", cropped.root / "validation"], tmp_path)
    assert "held-out: 8 images from" in out and "five views (--tta)" in out and "mirrored" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("  0.") or line.startswith("  1 ")]
    assert len(rows) == len(test_crop.CANDIDATES)
    meta = load_checkpoint(cropped.best)["meta"]
    assert f"test_crop {meta['test_crop']:g} stored, by the rule on 8 validation images" in out
    assert f"shipped (test_crop {meta['test_crop']:g}): one view " in out
    # a checkpoint from before the crop: the choice is made again by the rule, in memory, the file untouched
    ckpt = torch.load(cropped.best, weights_only=True)
    del ckpt["meta"]["test_crop"], ckpt["meta"]["test_crop_choice"]
    torch.save(ckpt, tmp_path / "old.pt")
    before = (tmp_path / "old.pt").read_bytes()
    again = run_script([script, "--run", tmp_path / "old.pt", "--heldout", cropped.root / "validation"], tmp_path)
    assert f"test_crop {meta['test_crop']:g} chosen now (not stored), by the rule on 8 validation images" in again
    assert (tmp_path / "old.pt").read_bytes() == before
