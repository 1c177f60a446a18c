"""Export and torch-free prediction (issue #11), on models trained here for real.

ONNX and TorchScript exports of small CNNs (softmax and one-logit heads) and of a timm
backbone model are checked against their checkpoints; ``cnnzoo predict --model x.onnx``
runs in a subprocess whose ``sys.modules`` is inspected for torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cnnzoo
from cnnzoo import inference
from cnnzoo.exporting import export
from conftest import tiny_config, write_class_folders
from helpers_predict import one_error_line, run_cnnzoo, subprocess_env, train_run

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def _jpeg_tree(base: Path) -> Path:
    root = base / "images"
    write_class_folders(root / "train", {"a": 12, "b": 12, "c": 12}, seed=1, ext="jpg")
    write_class_folders(root / "validation", {"a": 4, "b": 4, "c": 4}, seed=2, ext="jpg")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three classes, a BatchNorm CNN, JPEG images; base/runs/latest points at it."""
    def with_batchnorm(cfg):
        cfg["model"]["layers"].insert(1, "batchnorm")

    return train_run(tmp_path_factory.mktemp("export-run"), _jpeg_tree, with_batchnorm)


@pytest.fixture(scope="module")
def exported(trained):
    return {fmt: export(trained.best, fmt) for fmt in ("onnx", "torchscript")}


def validation_jpegs(run) -> list[str]:
    return sorted(str(p) for p in (run.root / "validation").rglob("*.jpg"))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_writes_a_self_contained_file_that_matches_the_checkpoint(trained, exported, fmt):
    result = exported[fmt]
    assert result.ok and result.max_difference <= 1e-4
    assert result.path == trained.best.with_name("best" + (".onnx" if fmt == "onnx" else ".torchscript.pt"))
    reference = cnnzoo.load(trained.best)
    model = inference.load(result.path)
    assert model.format == fmt and model.classes == ["a", "b", "c"]
    assert model.image_size == reference.image_size and model.mean == reference.mean
    images = validation_jpegs(trained)
    got, want = model.predict(images, top_k=3), reference.predict(images, top_k=3)
    assert [r["label"] for r in got] == [r["label"] for r in want]
    for g, w in zip(got, want):
        for a, b in zip(g["top_k"], w["top_k"]):
            assert a["label"] == b["label"] and a["probability"] == pytest.approx(b["probability"], abs=1e-4)


def test_onnx_batch_size_is_dynamic(exported, trained):
    model = inference.load(exported["onnx"].path)
    images = validation_jpegs(trained)
    one_by_one = [model.predict(p)[0]["probability"] for p in images[:5]]
    batched = [r["probability"] for r in model.predict(images[:5], batch_size=5)]
    assert batched == pytest.approx(one_by_one, abs=1e-6)


def test_onnx_predict_never_imports_torch_and_matches_the_checkpoint_cli(trained, exported):
    images = validation_jpegs(trained)[:6]
    probe = ("import sys, json\nsys.argv = ['cnnzoo', 'predict', '--model', sys.argv[1], '--json', *sys.argv[2:]]\n"
             "from cnnzoo.cli import main\ntry:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
             "print('MODULES', json.dumps([m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')]),"
             " file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", probe, str(exported["onnx"].path), *images],
                          capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stderr.strip().splitlines()[-1].split(" ", 1)[1])
    assert modules == []
    onnx_records = json.loads(done.stdout)
    checkpoint = run_cnnzoo(["predict", "--model", trained.best, "--json", *images], trained.base)
    assert checkpoint.returncode == 0, checkpoint.stderr
    for a, b in zip(onnx_records, json.loads(checkpoint.stdout)):
        assert a["image"] == b["image"] and a["label"] == b["label"]
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)


def test_onnx_predict_keeps_the_cli_contract(trained, exported, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    good = validation_jpegs(trained)[0]
    done = run_cnnzoo(["predict", "--model", exported["onnx"].path, good, broken, "--csv", "-k", "2"], trained.base)
    assert done.returncode == 1  # some images unreadable
    lines = done.stdout.splitlines()
    assert lines[0] == "image,label,probability,top1_label,top1_probability,top2_label,top2_probability"
    assert len(lines) == 2 and lines[1].startswith(good)
    assert f"cnnzoo: cannot read {broken}" in done.stderr
    only_bad = run_cnnzoo(["predict", "--model", exported["onnx"].path, broken], trained.base)
    assert only_bad.returncode == 2


def test_binary_head_exports_with_the_same_two_class_probabilities(tmp_path):
    def one_logit(cfg):
        cfg["model"]["layers"][-1] = {"dense": {"out_features": 1}}

    run = train_run(tmp_path, _jpeg_tree_two, one_logit)
    result = export(run.best, "onnx")
    assert result.ok
    images = sorted(str(p) for p in (run.root / "validation").rglob("*.jpg"))
    got = inference.load(result.path).predict(images, top_k=2)
    want = cnnzoo.load(run.best).predict(images, top_k=2)
    assert [r["label"] for r in got] == [r["label"] for r in want]
    assert [r["probability"] for r in got] == pytest.approx([r["probability"] for r in want], abs=1e-5)


def _jpeg_tree_two(base: Path) -> Path:
    root = base / "images"
    write_class_folders(root / "train", {"a": 12, "b": 12}, seed=1, ext="jpg")
    write_class_folders(root / "validation", {"a": 4, "b": 4}, seed=2, ext="jpg")
    return root


def test_a_timm_backbone_model_exports(image_root, tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(5)
    weights = tmp_path / "lite0.pth"
    torch.save(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict(), weights)
    config = tiny_config(image_root, epochs=1)
    config["data"]["image_size"] = 32
    config["model"]["layers"] = [{"backbone": {"name": "timm/tf_efficientnet_lite0", "weights": str(weights)}},
                                 "gap", {"dense": {"out_features": "num_classes"}}]
    run = cnnzoo.train(config, out=tmp_path / "runs", quiet=True)
    for fmt in ("onnx", "torchscript"):
        result = export(run / "best.pt", fmt, out=tmp_path / "exports")
        assert result.ok, result.max_difference
        assert result.path.parent == tmp_path / "exports"


def test_parity_failure_exits_1_and_says_so(trained, tmp_path):
    # a tolerance of zero cannot be met by a different runtime's float arithmetic (the ONNX
    # difference is about 1e-8 here), so the failure path runs for real
    done = run_cnnzoo(["export", trained.best, "--out", tmp_path / "strict.onnx", "--tolerance", "0"], trained.base)
    if "largest probability difference 0.00e+00" in done.stdout:
        pytest.skip("onnxruntime reproduced torch bit for bit on this machine")
    assert one_error_line(done, code=1).endswith("do not deploy it (try another --opset or --format)")
    assert "FAILED" in done.stdout


def test_export_cli_defaults_to_the_latest_run(trained, tmp_path):
    done = run_cnnzoo(["export", "--format", "onnx", "--out", tmp_path], trained.base)
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'best.onnx'}" in done.stdout
    assert ": ok" in done.stdout


@pytest.mark.parametrize("args, expected", [
    (["--format", "keras"], "--format keras: choose one of onnx, torchscript"),
    (["--out", "/proc/cnnzoo/x.onnx"], "cannot write there"),
])
def test_bad_export_arguments_are_one_line(trained, args, expected):
    done = run_cnnzoo(["export", trained.best, *args], trained.base)
    assert expected in one_error_line(done)


def test_bad_model_files_are_one_line(trained, tmp_path):
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"\x08\x07garbage")
    image = validation_jpegs(trained)[0]
    assert "not a readable ONNX model" in one_error_line(run_cnnzoo(["predict", "--model", fake, image], tmp_path))
    foreign = tmp_path / "foreign.onnx"
    import onnx

    proto = onnx.load(str(export(trained.best, "onnx", out=tmp_path / "plain.onnx").path))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    assert "without cnnzoo's metadata" in one_error_line(run_cnnzoo(["predict", "--model", foreign, image], tmp_path))
    scripted = export(trained.best, "torchscript", out=tmp_path / "model.torchscript.pt").path
    for made in (scripted, foreign.with_name("plain.onnx")):
        assert "already an export" in one_error_line(run_cnnzoo(["export", made], trained.base))
