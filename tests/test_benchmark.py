"""``cnnzoo benchmark`` (issue 32, item 2): a checkpoint trained here exported to every installed
format, each scored and timed on the same images. The table has a row per format with the same
columns in the CLI and the API; a format's accuracy is what ``evaluate`` of its file gives; a format
whose packages do not import (made unimportable in a real subprocess) gets a row naming its extra;
a format that really fails gets its error while the others are measured; an unknown format name is
one line and exit code 2. Timings are checked to be there and positive, never against a wall time.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_multilabel import write_tags

import cnnzoo
from cnnzoo.deploy import benchmark as benching
from cnnzoo.deploy import export as exporting
from cnnzoo.evaluation.evaluate import evaluate

from support.cli import invoke_cnnzoo, one_error_line, subprocess_env
from support.images import make_image_tree
from support.runs import tiny_config, train_run, trained_batchnorm_cnn

pytest.importorskip("onnxruntime")


CSV_COLUMNS = [
    "format",
    "file",
    "size_bytes",
    "accuracy",
    "drop_points",
    "load_s",
    "p50_ms",
    "p95_ms",
    "images_per_s",
    "batch",
    "threads",
    "images",
    "status",
    "note",
]
MEASURED = ["size_bytes", "load_s", "p50_ms", "p95_ms", "images_per_s"]


def _rows(path: Path, metric: str = "accuracy") -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [metric if c == "accuracy" else c for c in CSV_COLUMNS]
    return {row["format"]: row for row in rows}


def _measured(row: dict[str, str]) -> bool:
    return row["status"] == "ok" and all(float(row[c]) > 0 for c in MEASURED)


# ============================================================================ the formats, from the table


def test_every_format_in_the_table_and_its_int8_version_is_a_row(monkeypatch):
    names = [v.name for v in benching.variants()]
    assert names[:3] == ["checkpoint", "onnx", "onnx-int8"] and "torchscript" in names and "tflite" in names
    onnx = exporting.EXPORT_FORMATS["onnx"]
    toy = exporting.ExportFormat(".toy.onnx", "a toy", onnx.write, onnx.recognise, extra="toy", int8=True)
    monkeypatch.setitem(exporting.EXPORT_FORMATS, "toy", toy)  # a format added to the table is benchmarked
    assert [v.name for v in benching.variants()][-2:] == ["toy", "toy-int8"]
    assert [v.name for v in benching.chosen("int8, toy")] == ["checkpoint", "onnx-int8", "toy"]
    assert benching.chosen("all") == benching.variants()


def test_an_unknown_format_is_one_line_naming_the_valid_ones(tmp_path):
    line = one_error_line(invoke_cnnzoo(["benchmark", "--formats", "onnx,pdf"], tmp_path))
    assert "--formats pdf: not a format" in line
    assert all(name in line for name in ("all", "onnx", "onnx-int8", "torchscript", "tflite", "int8"))
    with pytest.raises(cnnzoo.UserError, match="--formats keras: not a format"):
        cnnzoo.benchmark(tmp_path / "best.pt", "keras")  # refused before the model is looked for


# ============================================================================ on a trained model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_batchnorm_cnn(tmp_path_factory.mktemp("bench-run"), train_per_class=16, validation_per_class=6)


@pytest.mark.slow
def test_the_api_measures_each_format_and_its_accuracy_is_evaluates(trained, tmp_path):
    result = cnnzoo.benchmark(trained.best, "onnx,int8,torchscript", out=tmp_path, threads=1, seconds=0.05)
    assert [r.format for r in result.rows] == ["checkpoint", "onnx", "onnx-int8", "torchscript"]
    assert result.files == [tmp_path / "benchmark.csv", tmp_path / "benchmark.md"]
    assert result.threads == 1 and result.images == 18 and result.split == "validation" and not result.failed
    rows = _rows(tmp_path / "benchmark.csv")
    assert all(_measured(row) and row["threads"] == "1" and row["images"] == "18" for row in rows.values())
    for name in ("onnx", "onnx-int8"):  # what evaluate of the exported file gives
        report = evaluate(rows[name]["file"], split="validation", out=tmp_path / f"eval-{name}", progress=False)
        assert float(rows[name]["accuracy"]) == report["accuracy"]
        assert float(rows[name]["drop_points"]) == pytest.approx(
            100 * (float(rows["checkpoint"]["accuracy"]) - report["accuracy"])
        )
    assert (
        float(rows["checkpoint"]["accuracy"])
        == evaluate(trained.best, out=tmp_path / "eval", progress=False)["accuracy"]
    )
    assert rows["onnx"]["file"] == str(tmp_path / "onnx" / "best.onnx")
    assert int(rows["onnx"]["size_bytes"]) == (tmp_path / "onnx" / "best.onnx").stat().st_size
    assert not any(trained.run_dir.glob("best.*onnx"))  # nothing written beside the checkpoint
    table = (tmp_path / "benchmark.md").read_text()
    assert "18 validation images" in table and "1 CPU thread;" in table
    assert "| format | file | size (MB) | accuracy (%) | drop (points) |" in table
    assert table.count("\n| ") == 1 + 4  # the header and a row per format


@pytest.mark.slow
def test_the_cli_prints_and_writes_the_table_beside_the_checkpoint(trained):
    # in trained.base: runs/latest is the default checkpoint
    done = invoke_cnnzoo(["benchmark", "--formats", "onnx", "--threads", "1", "--images", "10"], trained.base)
    assert done.exit_code == 0, done.stderr
    folder = trained.run_dir / "benchmark"
    rows = _rows(folder / "benchmark.csv")
    assert list(rows) == ["checkpoint", "onnx"] and all(_measured(row) for row in rows.values())
    assert rows["onnx"]["images"] == "10" and (folder / "onnx" / "best.onnx").is_file()
    assert "10 validation images" in done.stdout and "onnx/best.onnx" in done.stdout
    assert f"wrote {folder / 'benchmark.csv'} and benchmark.md" in done.stdout


_WITHOUT = (
    "import sys\nsys.modules[sys.argv[1]] = None  # importing it now fails, as where it is not installed\n"
    "sys.argv = ['cnnzoo', *sys.argv[2:]]\nfrom cnnzoo.cli import main\nmain()\n"
)


@pytest.mark.slow
def test_a_format_whose_package_does_not_import_gets_a_row_naming_its_extra(trained, tmp_path):
    args = [trained.best, "--formats", "onnx,torchscript", "--out", tmp_path, "--threads", "1"]
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT, "onnxruntime", "benchmark", *map(str, args)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = _rows(tmp_path / "benchmark.csv")
    assert rows["onnx"]["status"] == "not installed" and rows["onnx"]["accuracy"] == ""
    assert rows["onnx"]["note"] == "pip install 'cnnzoo[onnx]' (onnxruntime missing)"
    assert _measured(rows["torchscript"]) and _measured(rows["checkpoint"])
    assert not (tmp_path / "onnx").exists()


@pytest.mark.slow
def test_a_failing_format_gets_its_error_and_the_others_are_measured(tmp_path):
    """INT8 calibrates on the training images; a checkpoint whose training data has moved away
    benchmarked on other labelled images: its INT8 row fails with export's own line, the rest run."""
    run = train_run(tmp_path, lambda base: make_image_tree(base / "images"), epochs=1)
    shutil.move(tmp_path / "images", tmp_path / "moved")
    args = ["benchmark", run.best, "--formats", "onnx,int8", "--data", tmp_path / "moved" / "validation"]
    done = invoke_cnnzoo([*args, "--out", tmp_path / "bench", "--threads", "1"], tmp_path)
    line = one_error_line(done, code=1)
    assert "onnx-int8: failed" in line
    rows = _rows(tmp_path / "bench" / "benchmark.csv")
    assert _measured(rows["checkpoint"]) and _measured(rows["onnx"]) and rows["onnx"]["images"] == "8"
    assert rows["onnx-int8"]["status"] == "failed" and "--int8 calibrates on it" in rows["onnx-int8"]["note"]
    assert "onnx-int8" in done.stdout and "failed:" in done.stdout


@pytest.mark.slow
def test_a_multi_label_model_is_scored_by_its_map_as_evaluate_scores_it(tmp_path):
    from cnnzoo.training.run import train

    manifest = write_tags(tmp_path, ["a", "a b", "b", "a b", "a", "", "a b", "a"] * 2)
    run = train(tiny_config(manifest, epochs=1), out=tmp_path / "runs", quiet=True)
    result = cnnzoo.benchmark(run / "best.pt", "onnx", out=tmp_path / "bench", threads=1, seconds=0.05)
    assert result.metric == "mAP" and "| mAP (%) |" in (tmp_path / "bench" / "benchmark.md").read_text()
    rows = _rows(tmp_path / "bench" / "benchmark.csv", metric="map")
    report = evaluate(rows["onnx"]["file"], split="validation", out=tmp_path / "eval", progress=False)
    assert float(rows["onnx"]["map"]) == report["map"] and rows["onnx"]["images"] == str(report["num_images"]) == "4"
