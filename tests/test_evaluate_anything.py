"""Evaluate anything on anything (issue 30 item 5): a model trained on a Kaggle-style manifest, as a
checkpoint and as ONNX (FP32 and INT8) exports, scored with and without ``--data`` on the manifest,
its folder, part of it and WebDataset shards made from it. The model keeps how its data was read
and split (``meta.data``: the source, root, seed, split keys and the manifest's digest), so that
the training manifest is split as training split it, and a manifest holding training rows is
scored with a warning that counts them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cnnzoo.config import load_config
from cnnzoo.data import manifest, sources
from cnnzoo.deploy.export import export
from cnnzoo.evaluation.evaluate import evaluate

from support.cli import run_cnnzoo
from support.images import write_kaggle_layout
from support.runs import train_run

pytestmark = pytest.mark.slow  # a module fixture trains the model and exports it
pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

COUNTS = {"shirt": 10, "shoes": 10, "pants": 10}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("anything"), lambda base: write_kaggle_layout(base / "clothes", COUNTS))


@pytest.fixture(scope="module")
def exports(trained):
    fp32 = export(trained.best, "onnx", out=trained.run_dir / "best.onnx")
    int8 = export(trained.best, "onnx", int8=True)
    return {"fp32": fp32.path, "int8": int8.path}


def _held_out(trained) -> set[str]:
    """The validation split training made, rebuilt here from the config it saved."""
    cfg = load_config(trained.run_dir / "config.yaml")
    return {os.path.realpath(p) for p in sources.load_data(cfg).val.files()}


def _scored(report: dict) -> tuple[int, str, float]:
    return report["num_images"], report["split"], report["accuracy"]


def test_the_model_keeps_how_its_data_was_split_in_a_few_settings(trained, exports):
    import torch

    meta = torch.load(trained.best, weights_only=True)["meta"]
    rule = meta["data"]
    assert rule["digest"] == manifest.file_digest(trained.root) and rule["digest"].startswith("sha256:")
    assert rule["source"] == "manifest" and rule["root"] == str(trained.root.resolve())
    assert rule["seed"] == 0 and rule["val_fraction"] == 0.2
    assert len(json.dumps(rule)) < 400  # the same size for 30 rows or 1.6 M: no row is listed
    for path in exports.values():
        exported = json.loads(next(p.value for p in onnx.load(str(path)).metadata_props if p.key == "cnnzoo"))
        assert exported["data"] == rule


@pytest.mark.parametrize("kind", ["checkpoint", "fp32", "int8"])
def test_without_data_every_format_scores_the_split_training_held_out(trained, exports, kind, tmp_path):
    model = trained.best if kind == "checkpoint" else exports[kind]
    report = evaluate(model, out=tmp_path, progress=False)
    assert report["split"] == "validation" and report["num_images"] == len(_held_out(trained)) == 6
    assert report["data"] == str(trained.root.resolve())


@pytest.mark.parametrize("kind", ["checkpoint", "int8"])
@pytest.mark.parametrize("given", ["manifest", "folder", "copy"])
def test_the_training_manifest_is_split_as_training_split_it(trained, exports, kind, given, tmp_path, capsys):
    """The CSV, the folder holding it beside images/, or a copy of the same bytes elsewhere."""
    model = trained.best if kind == "checkpoint" else exports[kind]
    data = {"manifest": trained.root, "folder": trained.root.parent, "copy": tmp_path / "copy.csv"}[given]
    if given == "copy":
        data.write_bytes(trained.root.read_bytes())
        (tmp_path / "images").symlink_to(trained.root.parent / "images")
    plain = evaluate(model, out=tmp_path / "plain", progress=False)
    capsys.readouterr()
    report = evaluate(model, data, out=tmp_path / "given", progress=False)
    assert _scored(report) == _scored(plain)
    assert f"data: {data} is the data this model trained on; scoring the split training held out" in (
        capsys.readouterr().out
    )


def test_a_test_file_beside_the_training_manifest_is_scored_and_named(trained, tmp_path):
    """images.csv with test.csv beside it (the trial's layout): the test split is test.csv's rows, and
    the report names that file, not the training manifest."""
    copy = tmp_path / "clothes"
    (copy / "images").mkdir(parents=True)
    for image in (trained.root.parent / "images").iterdir():
        (copy / "images" / image.name).symlink_to(image)
    (copy / trained.root.name).write_bytes(trained.root.read_bytes())  # the same bytes: the training data
    test = write_kaggle_layout(copy, {"shirt": 2, "shoes": 2, "pants": 2}, seed=7, name="test.csv")
    report = evaluate(trained.best, copy, out=tmp_path / "out", progress=False)
    assert (report["split"], report["num_images"], report["data"]) == ("test", 6, str(test))


def test_a_manifest_holding_training_rows_is_scored_with_a_warning_that_counts_them(trained, exports, tmp_path):
    lines = trained.root.read_text().splitlines()
    part = tmp_path / "part.csv"  # elsewhere: a folder holding two manifests would be refused
    part.write_text("\n".join(lines[:13]) + "\n")  # the header and 12 rows
    (tmp_path / "images").symlink_to(trained.root.parent / "images")
    held_out = _held_out(trained)
    rows = [r.split(",")[0] for r in lines[1:13]]
    trained_rows = sum(os.path.realpath(trained.root.parent / "images" / f"{r}.jpg") not in held_out for r in rows)
    assert 0 < trained_rows < 12
    for model in (trained.best, exports["int8"]):
        result = run_cnnzoo(["evaluate", model, "--data", part, "--out", tmp_path / model.name], trained.base)
        assert result.returncode == 0, result.stderr
        assert (
            f"warning: {trained_rows} of 12 images in {part} were in this model's training split, so these "
            f"scores overstate it" in result.stderr
        )
        assert "on test: 12 images" in result.stdout


def test_a_manifest_without_training_rows_gets_no_warning(trained, tmp_path):
    other = tmp_path / "other"
    test_csv = write_kaggle_layout(other, {"shirt": 2, "shoes": 2, "pants": 2}, seed=7, name="test.csv")
    result = run_cnnzoo(["evaluate", trained.best, "--data", test_csv, "--out", tmp_path / "out"], trained.base)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr and "on test: 6 images" in result.stdout


def test_an_export_from_before_the_split_rule_still_evaluates_and_says_nothing(trained, exports, tmp_path):
    proto = onnx.load(str(exports["fp32"]))
    entry = next(p for p in proto.metadata_props if p.key == "cnnzoo")
    meta = json.loads(entry.value)
    del meta["data"]
    entry.value = json.dumps(meta)
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    result = run_cnnzoo(["evaluate", old, "--data", trained.root], trained.base)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr and "on test: 30 images" in result.stdout  # it cannot tell: all rows
    refused = run_cnnzoo(["evaluate", old], trained.base)
    assert refused.returncode == 2 and "an export from before cnnzoo kept its split); pass --data" in refused.stderr


def test_an_export_scores_webdataset_shards_without_torch(trained, exports, tmp_path):
    pytest.importorskip("webdataset")
    shards = tmp_path / "shards"
    made = run_cnnzoo(["data", "shards", trained.root, shards, "--shard-size", "8"], trained.base)
    assert made.returncode == 0, made.stderr
    for model in (trained.best, exports["int8"]):
        result = run_cnnzoo(["evaluate", model, "--data", shards, "--json"], trained.base)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["split"] == "validation" and report["num_images"] == 6


def test_the_trial_commands_work_one_after_another(trained, exports, tmp_path):
    """The new user's trial: evaluate the INT8 export of a CSV-trained model, with and without --data."""
    for args in (["evaluate", exports["int8"]], ["evaluate", exports["int8"], "--data", trained.root]):
        result = run_cnnzoo([*args, "--out", tmp_path / str(len(args))], trained.base)
        assert result.returncode == 0, result.stderr
        assert "on validation: 6 images" in result.stdout
    assert Path(tmp_path / "2" / "report.html").is_file()


def test_predict_data_takes_the_folder_holding_the_manifest(trained, exports):
    result = run_cnnzoo(["predict", "-m", exports["fp32"], "--data", trained.root.parent, "--csv"], trained.base)
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert len(rows) == 1 + 30 and rows[1].split(",")[0] == trained.root.read_text().splitlines()[1].split(",")[0]
