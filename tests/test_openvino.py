"""OpenVINO export (issue 32, item 1) on a model trained here for real: the IR pair matches the
checkpoint (probabilities and the knn unknown score), carries the ONNX export's metadata, is
predicted, evaluated and served without torch, is quantized by NNCF under the ``--max-drop`` rule,
and replaces only its own files; without the extra, one line names it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import cnnzoo
from cnnzoo import inference
from cnnzoo.deploy.export import export
from cnnzoo.evaluation.evaluate import evaluate
from cnnzoo.inference.openvino_model import read_metadata

from servelib import Server
from support.cli import (
    invoke_cnnzoo,
    one_error_line,
    predict_listing_torch,
    run_cnnzoo,
    run_cnnzoo_without,
    run_cnnzoo_without_torch,
    subprocess_env,
    torch_modules_imported,
)
from support.runs import trained_batchnorm_cnn

pytestmark = pytest.mark.slow  # a module fixture trains the model

ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three classes, a BatchNorm CNN with the knn unknown score (a second output), JPEG images."""
    return trained_batchnorm_cnn(tmp_path_factory.mktemp("openvino-run"), train_per_class=16, validation_per_class=6)


@pytest.fixture(scope="module")
def exported(trained):
    return export(trained.best, "openvino")


@pytest.fixture(scope="module")
def quantized(trained):
    return export(trained.best, "openvino", int8=True)


def _validation(trained) -> list[tuple[str, str]]:
    return sorted((str(p), p.parent.name) for p in (trained.root / "validation").rglob("*.jpg"))


def _accuracy(model_path: Path, images: list[tuple[str, str]]) -> float:
    records = inference.load(model_path).predict([path for path, _ in images], unknown=False)
    return sum(r["label"] == label for r, (_, label) in zip(records, images)) / len(images)


def _onnx_metadata(path: Path) -> dict:
    return json.loads(next(p.value for p in onnx.load(str(path)).metadata_props if p.key == "cnnzoo"))


def test_the_ir_pair_matches_the_checkpoint_with_its_unknown_score(trained, exported):
    xml, weights = trained.best.with_name("best.openvino.xml"), trained.best.with_name("best.openvino.bin")
    assert exported.ok and exported.max_difference <= 1e-4 and exported.files == [xml, weights]
    assert xml.is_file() and weights.is_file() and not list(trained.run_dir.glob(".*.tmp"))
    model, reference = inference.load(xml), cnnzoo.load(trained.best)
    assert type(model).__name__ == "OpenVinoModel" and model.format == "openvino" and model.has_score
    assert model.files() == [xml, weights]
    images = [path for path, _ in _validation(trained)]
    got, want = model.predict(images, top_k=3), reference.predict(images, top_k=3)
    assert [r["label"] for r in got] == [r["label"] for r in want]
    for g, w in zip(got, want):
        assert g["unknown"] == w["unknown"] and g["unknown_score"] == pytest.approx(w["unknown_score"], abs=1e-4)
        for a, b in zip(g["top_k"], w["top_k"]):
            assert a["label"] == b["label"] and a["probability"] == pytest.approx(b["probability"], abs=1e-4)
    one_by_one = [model.predict(p)[0]["probability"] for p in images[:5]]
    assert [r["probability"] for r in model.predict(images[:5], batch_size=5)] == pytest.approx(one_by_one, abs=1e-6)


def test_the_metadata_is_the_onnx_exports(trained, exported, tmp_path):
    """Classes, preprocessing, meta.data, calibration and the unknown score's entry travel alike."""
    meta = json.loads(read_metadata(exported.path))
    assert meta == _onnx_metadata(export(trained.best, "onnx", out=tmp_path).path)
    assert {"classes", "mean", "std", "data", "calibration", "unknown"} <= set(meta)
    model = inference.load(exported.path)
    assert model.temperature == cnnzoo.load(trained.best).temperature is not None
    assert model.unknown == cnnzoo.load(trained.best).unknown and model.unknown["score"] == "knn"
    graph = ov.Core().read_model(str(exported.path))
    assert [sorted(o.get_names()) for o in graph.outputs] == [["logits"], ["unknown_score"]]


def test_predict_runs_without_torch_and_agrees_with_the_checkpoint_cli(trained, exported):
    images = [path for path, _ in _validation(trained)][:6]
    done = predict_listing_torch(str(exported.path), images)
    assert done.returncode == 0, done.stderr
    assert torch_modules_imported(done) == []
    checkpoint = run_cnnzoo(["predict", "--model", trained.best, "--json", *images], trained.base)
    for a, b in zip(json.loads(done.stdout), json.loads(checkpoint.stdout)):
        assert a["image"] == b["image"] and a["label"] == b["label"]
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)


def test_evaluate_runs_without_torch_and_scores_what_the_checkpoint_scores(trained, exported, tmp_path):
    args = ["evaluate", exported.path, "--data", trained.root / "validation", "--out", tmp_path / "ov", "--json"]
    done = run_cnnzoo_without_torch(args)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    reference = evaluate(trained.best, trained.root / "validation", out=tmp_path / "ckpt", progress=False)
    assert report["format"] == "openvino" and report["int8"] is False
    assert report["accuracy"] == reference["accuracy"] and report["confusion_matrix"] == reference["confusion_matrix"]
    assert report["loss"] == pytest.approx(reference["loss"], rel=1e-4, abs=1e-6)


def test_the_server_runs_it_without_torch(trained, exported):
    pytest.importorskip("starlette")
    srv = Server(exported.path, trained.base)
    try:
        image = Path(_validation(trained)[0][0])
        status, records = srv.post_image("/predict", image.read_bytes())
        assert status == 200 and records[0]["label"] == cnnzoo.load(trained.best).predict(str(image))[0]["label"]
        assert srv.get("/info")[1]["format"] == "openvino"
        maps = Path(f"/proc/{srv.process.pid}/maps")
        if maps.exists():
            libraries = maps.read_text()
            assert "libopenvino" in libraries and "libtorch" not in libraries
    finally:
        srv.stop()


# ----------------------------------------------------------------------------- INT8 (NNCF)


def test_int8_carries_the_metadata_and_reports_what_predict_gives(trained, exported, quantized):
    report = quantized.int8
    xml = trained.best.with_name("best.int8.openvino.xml")
    assert quantized.path == xml and quantized.files == [xml, xml.with_suffix(".bin")] and quantized.ok
    meta, plain = json.loads(read_metadata(xml)), json.loads(read_metadata(exported.path))
    assert {k: v for k, v in meta.items() if k != "int8"} == plain
    assert meta["int8"]["calibration_images"] == 48 == report.calibration_images  # all 48 < 256
    assert meta["int8"]["int8_accuracy"] == report.int8_accuracy and "NNCF" in meta["int8"]["scheme"]
    images = _validation(trained)
    assert report.validation_images == len(images) == 18
    assert report.fp32_accuracy == _accuracy(exported.path, images)
    assert report.int8_accuracy == _accuracy(xml, images)
    assert report.int8_bytes == sum(f.stat().st_size for f in quantized.files)
    # the FP32 pair it was quantized from was converted again: the same weights, the graph's
    # operation names numbered by a process-wide counter (a few bytes more or less)
    assert report.fp32_bytes == pytest.approx(sum(f.stat().st_size for f in exported.files), abs=200)
    operations = {op.get_type_name() for op in ov.Core().read_model(str(xml)).get_ops()}
    assert "FakeQuantize" in operations or "FakeConvert" in operations


def test_int8_leaves_the_unknown_score_in_fp32(trained, exported, quantized):
    """The bank's similarities are not quantized: the score keeps the threshold's meaning."""
    graph = ov.Core().read_model(str(quantized.path))
    score = graph.outputs[1].get_node()
    stack, seen, quantized_inputs = [score], set(), []
    while stack:
        node = stack.pop()
        if node.get_friendly_name() in seen:
            continue
        seen.add(node.get_friendly_name())
        if node.get_type_name() == "MatMul":  # the features against the bank
            quantized_inputs += [v.get_node().get_type_name() for v in node.input_values()]
        stack.extend(v.get_node() for v in node.input_values())
    assert quantized_inputs and "FakeQuantize" not in quantized_inputs


def test_int8_predict_and_evaluate_run_without_torch(trained, quantized, tmp_path):
    images = [path for path, _ in _validation(trained)][:6]
    done = predict_listing_torch(str(quantized.path), images)
    assert done.returncode == 0, done.stderr
    assert torch_modules_imported(done) == []
    args = ["evaluate", quantized.path, "--data", trained.root / "validation", "--out", tmp_path, "--json"]
    evaluated = run_cnnzoo_without_torch(args)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(evaluated.stdout)["accuracy"] == quantized.int8.int8_accuracy


def test_int8_cli_reports_both_and_a_drop_past_max_drop_exits_1_with_the_file_kept(trained, tmp_path):
    before = hashlib.sha256(trained.best.read_bytes()).hexdigest()
    args = ["export", "-f", "openvino", "--int8", "--calibration", "8", "--out", tmp_path / "a"]
    done = run_cnnzoo(args, trained.base)
    assert done.returncode == 0, done.stderr
    assert "INT8 calibrated on 8 training images; on 18 validation images:" in done.stdout
    assert "wrote " in done.stdout and "best.int8.openvino.xml + best.int8.openvino.bin (openvino INT8" in done.stdout
    assert hashlib.sha256(trained.best.read_bytes()).hexdigest() == before
    # the same rule as ONNX INT8: a negative --max-drop is refused by the CLI, so ask INT8 to gain
    # on a model whose FP32 and INT8 agree: a drop of 0 points against an allowance of 0 passes, and
    # an INT8 file that loses any image fails; the report's own figures decide which is asserted
    report = json.loads(read_metadata(tmp_path / "a" / "best.int8.openvino.xml"))["int8"]
    strict = invoke_cnnzoo([*args[:-1], tmp_path / "b", "--max-drop", "0"], trained.base)  # the same command code
    if report["int8_accuracy"] < report["fp32_accuracy"]:
        assert "do not deploy it" in one_error_line(strict, code=1)
        assert (tmp_path / "b" / "best.int8.openvino.xml").is_file()
    else:
        assert strict.exit_code == 0, strict.stderr


# ----------------------------------------------------------------------------- files and errors


def test_a_second_export_replaces_its_own_pair_and_refuses_others_files(trained, exported, tmp_path):
    again = export(trained.best, "openvino")  # over its own pair, without --force
    assert again.ok and again.path == exported.path
    foreign = tmp_path / "model.xml"
    foreign.write_text("<notes>mine</notes>\n")
    line = one_error_line(run_cnnzoo(["export", "-f", "openvino", "--out", foreign], trained.base))  # a real process
    assert "not an OpenVINO export is there already" in line and "--force" in line
    assert foreign.read_text() == "<notes>mine</notes>\n" and not foreign.with_suffix(".bin").exists()
    weights = tmp_path / "other.bin"
    weights.write_bytes(b"someone's weights")
    line = one_error_line(invoke_cnnzoo(["export", "-f", "openvino", "--out", tmp_path / "other.xml"], trained.base))
    assert "other.bin is there already, not the weights of an OpenVINO export" in line
    assert weights.read_bytes() == b"someone's weights" and not (tmp_path / "other.xml").exists()
    forced = invoke_cnnzoo(["export", "-f", "openvino", "--out", tmp_path / "other.xml", "--force"], trained.base)
    assert forced.exit_code == 0, forced.stderr
    assert inference.load(tmp_path / "other.xml").classes == ["a", "b", "c"]
    line = one_error_line(invoke_cnnzoo(["export", "-f", "openvino", "--out", tmp_path / "model.onnx"], trained.base))
    assert "an OpenVINO export is read by its .xml ending; name it model.xml" in line


def test_a_damaged_or_foreign_pair_is_one_line(trained, exported, tmp_path):
    image = _validation(trained)[0][0]
    foreign = tmp_path / "page.xml"
    foreign.write_text("<html><body/></html>\n")
    foreign.with_suffix(".bin").write_bytes(b"")
    assert "not an OpenVINO model" in one_error_line(run_cnnzoo(["predict", "-m", foreign, image], trained.base))
    lone = tmp_path / "lone.xml"
    lone.write_bytes(exported.path.read_bytes())  # the graph without its weights
    line = one_error_line(invoke_cnnzoo(["predict", "-m", lone, image], trained.base))  # in-process from here
    assert line.endswith("lone.bin: its weights file is not there (beside lone.xml)")
    line = one_error_line(invoke_cnnzoo(["export", exported.path], trained.base))
    assert "already an export; export from a checkpoint" in line


def test_without_the_extra_each_command_names_it(trained, exported, tmp_path):
    image = _validation(trained)[0][0]
    export_line = one_error_line(
        run_cnnzoo_without(["openvino"], ["export", "-f", "openvino", "--out", tmp_path], trained.base)
    )
    assert export_line == "cnnzoo: error: --format openvino needs OpenVINO; pip install 'cnnzoo[openvino]'"
    predict = ["predict", "-m", exported.path, image]
    predict_line = one_error_line(run_cnnzoo_without(["openvino"], predict, trained.base))
    assert predict_line.endswith("running an OpenVINO model needs the OpenVINO runtime; pip install 'cnnzoo[openvino]'")
    int8 = ["export", "-f", "openvino", "--int8", "--calibration", "4", "--out", tmp_path]
    int8_line = one_error_line(run_cnnzoo_without(["nncf"], int8, trained.base))
    assert int8_line == "cnnzoo: error: --int8 --format openvino needs NNCF; pip install 'cnnzoo[openvino]'"
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_an_unknown_format_is_one_line_naming_openvino(trained):
    line = one_error_line(invoke_cnnzoo(["export", "--format", "openvn"], trained.base))  # in-process
    assert line == "cnnzoo: error: --format openvn: choose one of onnx, torchscript, tflite, openvino"


def test_an_export_declines_openvinos_telemetry(trained, tmp_path):
    """OpenVINO's converter sends usage data unless declined (no consent file means yes): an export
    runs it with its CI switch, so the process's telemetry ends declined, whatever HOME holds."""
    probe = (
        "import sys\nfrom cnnzoo.deploy.export import export\n"
        "export(sys.argv[1], 'openvino', out=sys.argv[2])\n"
        "import openvino_telemetry as tm\nprint(tm.Telemetry().consent)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(trained.best), str(tmp_path)],
        capture_output=True,
        text=True,
        env={**subprocess_env(HOME=str(tmp_path)), "CI": ""},  # no consent file: OpenVINO's default is to send
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False"]
