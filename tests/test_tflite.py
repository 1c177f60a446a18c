"""TFLite export (issue 21, part 1) through litert-torch, run by the LiteRT interpreter, on a model
trained here for real. The ``tflite`` extra is not in the ``test`` extra (litert-torch pins
packages the test tools need otherwise), so these tests skip where it is not installed:
``pip install 'cnnzoo[tflite]'`` in a separate environment runs them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cnnzoo
from cnnzoo import inference
from cnnzoo.checkpoint import load_checkpoint
from cnnzoo.deploy.export import export, metadata
from cnnzoo.inference.torch_models import Model

from support.cli import one_error_line, predict_listing_torch, run_cnnzoo, run_cnnzoo_without_torch
from support.runs import trained_batchnorm_cnn

pytestmark = pytest.mark.slow  # a module fixture trains the model

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_batchnorm_cnn(tmp_path_factory.mktemp("tflite-run"), train_per_class=12, validation_per_class=4)


@pytest.fixture(scope="module")
def exported(trained):
    return export(trained.best, "tflite")


def _images(trained) -> list[str]:
    return sorted(str(p) for p in (trained.root / "validation").rglob("*.jpg"))


def test_tflite_export_matches_the_checkpoint_and_carries_the_metadata(trained, exported):
    assert exported.ok and exported.max_difference <= 1e-4
    assert exported.path == trained.best.with_name("best.tflite")
    model = inference.load(exported.path)
    assert model.format == "tflite" and model.classes == ["a", "b", "c"]
    reference = Model(load_checkpoint(trained.best), device="cpu")
    assert model.meta == json.loads(json.dumps(metadata(reference), default=str))
    assert reference.temperature is not None and model.temperature == reference.temperature  # calibrated alike
    details = model.interpreter.get_input_details()[0]
    assert list(details["shape"]) == [1, 16, 16, 3]  # one image, channels last
    images = _images(trained)
    got, want = model.predict(images, top_k=3), cnnzoo.load(trained.best).predict(images, top_k=3)
    for g, w in zip(got, want):
        assert g["label"] == w["label"]
        for a, b in zip(g["top_k"], w["top_k"]):
            assert a["label"] == b["label"] and a["probability"] == pytest.approx(b["probability"], abs=1e-4)


def test_tflite_predict_runs_without_torch_and_prints_nothing_else(trained, exported):
    images = _images(trained)[:4]
    done = predict_listing_torch(str(exported.path), images)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == ["MODULES []"]  # no torch, and no runtime chatter
    want = cnnzoo.load(trained.best).predict(images)
    assert [r["label"] for r in json.loads(done.stdout)] == [r["label"] for r in want]


def test_a_tflite_file_without_cnnzoo_metadata_or_not_tflite_is_one_line(trained, exported, tmp_path):
    from ai_edge_litert.tools import flatbuffer_utils

    bare = flatbuffer_utils.read_model(str(exported.path))
    bare.metadata = [m for m in bare.metadata or [] if m.name != b"cnnzoo" and m.name != "cnnzoo"]
    flatbuffer_utils.write_model(bare, str(tmp_path / "bare.tflite"))
    (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer at all")
    image = _images(trained)[0]
    line = one_error_line(run_cnnzoo(["predict", "-m", tmp_path / "bare.tflite", image], trained.base))
    assert "a TFLite model without cnnzoo's metadata" in line
    line = one_error_line(run_cnnzoo(["predict", "-m", tmp_path / "junk.tflite", image], trained.base))
    assert "junk.tflite" in line


def test_tflite_export_keeps_the_output_rules(trained, exported, tmp_path):
    other = tmp_path / "notes.tflite"
    other.write_text("mine")
    line = one_error_line(run_cnnzoo(["export", "-f", "tflite", "--out", other], trained.base))
    assert "a file that is not a TFLite export is there already" in line and other.read_text() == "mine"
    line = one_error_line(run_cnnzoo(["export", exported.path], trained.base))
    assert "already an export" in line


def test_tflite_serve_answers_like_predict_without_torch(trained, exported):
    pytest.importorskip("starlette")
    from servelib import Server

    image = _images(trained)[0]
    srv = Server(exported.path, trained.base)
    try:
        status, info = srv.get("/info")
        assert status == 200 and info["format"] == "tflite" and info["input"] == [3, 16, 16]
        status, records = srv.post_image("/predict", Path(image).read_bytes())
        assert status == 200
        want = inference.load(exported.path).predict(image)[0]
        assert records[0]["label"] == want["label"]
        assert records[0]["probability"] == pytest.approx(want["probability"], abs=1e-6)
        maps = Path(f"/proc/{srv.process.pid}/maps")
        if maps.exists():
            assert "libtorch" not in maps.read_text()
    finally:
        srv.stop()


def test_commands_that_need_the_checkpoint_say_so_for_a_tflite_export(trained, exported):
    line = one_error_line(run_cnnzoo(["explain", _images(trained)[0], "--checkpoint", exported.path], trained.base))
    assert "a TFLite export, not a checkpoint; predict, serve and evaluate take an export" in line


def test_tflite_evaluate_equals_the_checkpoints_without_torch(trained, exported, tmp_path):
    """``cnnzoo evaluate best.tflite`` in a process where ``import torch`` fails, against the checkpoint's."""
    reference = cnnzoo.evaluate(trained.best, out=tmp_path / "ckpt", progress=False)
    args = ["evaluate", exported.path, "--out", tmp_path / "tflite", "--json"]  # the data root its metadata names
    done = run_cnnzoo_without_torch(args)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["format"] == "tflite" and report["model"] == str(exported.path)
    same = ("classes", "num_images", "accuracy", "top_k_accuracy", "confusion_matrix", "per_class", "split", "data")
    for key in same:
        assert report[key] == reference[key], key
    assert report["loss"] == pytest.approx(reference["loss"], rel=1e-4, abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "tflite").iterdir()) == [
        "confusion_matrix.png",
        "eval.json",
        "report.html",
    ]
