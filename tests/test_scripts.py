"""The benchmark scripts run end to end on tiny data (figures are printed, never asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from support.cli import run_script
from support.images import make_image_tree
from support.runs import TrainedRun, tiny_config, train_run

pytestmark = pytest.mark.slow  # every benchmark trains or loads a trained model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> TrainedRun:
    """One tiny run the checkpoint benchmarks share: they read it and write their exports elsewhere."""
    return train_run(tmp_path_factory.mktemp("bench-run"), lambda base: make_image_tree(base / "images"))


def _run_on_a_checkpoint(script: str, run: TrainedRun, tmp_path: Path) -> str:
    """A prediction benchmark on ``run``'s best.pt and its validation images, quickly (one repeat, no
    untimed warm-up runs, batch 4)."""
    images = run.root / "validation"
    args = ["--checkpoint", run.best, "--images", images, "--repeat", 1, "--warm", 0, "--batch-size", 4]
    return run_script([ROOT / "scripts" / script, *args], tmp_path)


def test_bench_train_prints_every_phase_and_ratio_and_compares_a_baseline_in_the_same_invocation(image_root, tmp_path):
    # one invocation for both: every phase, and the cnnzoo phase again with --baseline-set
    cfg = tiny_config(image_root)
    cfg["data"]["augment"] = {"hflip": True, "rotation": 10}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    args = ["--config", path, "--epochs", "2", "--baseline-set", "data.augment.where=image"]
    out = run_script([ROOT / "scripts" / "bench_train.py", *args], tmp_path)
    for phase in ("cache", "cnnzoo", "reference", "limit", "baseline"):
        assert f"  {phase}" in out
    assert "ratio cnnzoo/limit:" in out and "ratio cnnzoo/reference:" in out
    assert "1.00x the uint8 size" in out  # the RAM cache holds exactly N*C*H*W bytes
    assert "ratio cnnzoo/baseline:" in out and "ratio baseline/limit:" in out
    assert "baseline (data.augment.where=image): steady data wait" in out


def test_bench_train_phase_reports_json(image_root, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(image_root)))
    out = run_script(
        [str(ROOT / "scripts" / "bench_train.py"), "--config", str(path), "--epochs", "2", "--phase", "cache"], tmp_path
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert result["cache_bytes"] == 24 * 3 * 16 * 16  # 24 training images at 3x16x16
    assert result["images_per_s"] > 0


def test_bench_predict_runs_against_a_trained_checkpoint(trained, tmp_path):
    out = _run_on_a_checkpoint("bench_predict.py", trained, tmp_path)
    assert "cold start:" in out and "batch prediction:" in out and "ratio" in out


def test_bench_transfer_compares_cached_features_with_the_whole_network(image_root, tmp_path):
    cfg = tiny_config(image_root, unfreeze_at_epoch=2, unfreeze_stages=1)
    cfg["data"]["image_size"] = 32
    cfg["data"]["augment"] = {"hflip": True}
    cfg["model"]["layers"] = [
        {"backbone": {"name": "resnet18", "weights": None}},
        "gap",
        {"dense": {"out_features": "num_classes"}},
    ]
    path = tmp_path / "transfer.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = run_script([str(ROOT / "scripts" / "bench_transfer.py"), "--config", str(path), "--images", "16"], tmp_path)
    assert "1 of 5 stages trainable, 4 cached, 2 versions per image, 16 images at 32x32" in out
    for phase in ("whole", "features", "cached"):
        assert f"  {phase}" in out
    assert "ratio cached/whole:" in out


def test_bench_errors_times_a_config_typo_against_importing_torch(tmp_path):
    out = run_script([str(ROOT / "scripts" / "bench_errors.py"), "--repeat", "1"], tmp_path)
    assert "ratio typo/torch:" in out and "ratio summary/torch:" in out


def test_bench_onnx_and_bench_serve_compare_the_export_with_the_checkpoint(trained, tmp_path):
    out = _run_on_a_checkpoint("bench_onnx.py", trained, tmp_path)
    for line in ("cold start, one image:", "peak RSS, one image:", "throughput, batch 4:"):
        assert line in out and "ratio" in out.split(line)[1].splitlines()[0]
    out = run_script(
        [
            str(ROOT / "scripts" / "bench_serve.py"),
            "--checkpoint",
            str(trained.best),
            "--requests",
            "20",
            "--clients",
            "4",
        ],
        tmp_path,
    )
    for backend in ("checkpoint", "onnx"):
        assert f"  {backend}" in out and "server p50 / in-process p50 =" in out.split(f"  {backend}")[1]


def test_bench_ddp_compares_one_and_two_processes(image_root, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(image_root)))
    out = run_script(
        [str(ROOT / "scripts" / "bench_ddp.py"), "--config", str(path), "--epochs", "2", "--rounds", "1"], tmp_path
    )
    assert "round 1: 1 process" in out and "round 1: 2 processes" in out
    assert "speed-up 2/1:" in out and "scaling efficiency:" in out


def test_bench_cache_prints_both_ratios(image_root, tmp_path):
    out = run_script(
        [str(ROOT / "scripts" / "bench_cache.py"), "--folder", str(image_root), "--size", "16", "--rounds", "1"],
        tmp_path,
    )
    assert "ratio content/stat:" in out and "ratio checked/bare:" in out


def test_bench_export_compares_int8_and_tflite_with_fp32_onnx(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    script = ROOT / "scripts" / "bench_export.py"
    out = run_script([script, trained.best, "--out", tmp_path / "exports", "--repeat", 1, "--json", "b.json"], tmp_path)
    rows = {" ".join(line.split()[:2]): line.split()[2:] for line in out.splitlines() if " ONNX " in line}
    assert rows["FP32 ONNX"][1] == "1.00x" and rows["FP32 ONNX"][5] == "1.00x"  # the baseline's own ratios
    assert rows["INT8 ONNX"][1].endswith("x") and float(rows["INT8 ONNX"][6]) > 0  # a size ratio, a cold start
    figures = json.loads((tmp_path / "b.json").read_text())[0]["formats"]
    assert figures["INT8 ONNX"]["validation_images"] == 8 and figures["FP32 ONNX"]["bytes"] > 0
    tflite = figures["TFLite"]
    assert "bytes" in tflite or "pip install 'cnnzoo[tflite]'" in tflite["error"]  # measured, or says why not


def test_bench_openvino_compares_four_exports_with_onnx_runtime_fp32(trained, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    script = ROOT / "scripts" / "bench_openvino.py"
    args = [script, trained.best, "--out", tmp_path / "exports", "--rounds", 1, "--latency-images", 4, "--static"]
    out = run_script([*args, "--calibration", 8, "--json", "b.json"], tmp_path)
    rows = {line[:26].strip(): line[26:].split() for line in out.splitlines() if line.startswith("  O")}
    assert rows["ONNX Runtime FP32"][2] == "+0.00" and rows["ONNX Runtime FP32"][4] == "1.00x"  # the baseline
    assert {"ONNX Runtime INT8", "OpenVINO FP32", "OpenVINO INT8", "OpenVINO INT8 static"} <= set(rows)
    figures = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert figures["OpenVINO FP32"]["accuracy"] == figures["ONNX Runtime FP32"]["accuracy"]  # FP32 is FP32
    assert figures["OpenVINO INT8"]["images_per_s_b32"] > 0 and figures["OpenVINO INT8"]["ms_b1"] > 0


def test_bench_formats_prints_a_benchmark_table_per_checkpoint(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    args = [trained.best, "--formats", "onnx", "--threads", 1, "--seconds", 0.05, "--out", tmp_path / "b"]
    out = run_script([ROOT / "scripts" / "bench_formats.py", *args], tmp_path)
    rows = [line.split(" | ")[0].strip("| ") for line in out.splitlines() if line.startswith("| ")]
    assert rows == ["format", "checkpoint", "onnx"]
    assert (tmp_path / "b" / "1-tiny" / "benchmark.md").read_text().strip() in out


def test_bench_data_prints_the_throughput_and_memory_ratios(image_root, tmp_path):
    pytest.importorskip("webdataset")
    args = ["--data", image_root, "--image-size", 16, "--batch-size", 4, "--workers", 0]
    out = run_script([ROOT / "scripts" / "bench_data.py", *args], tmp_path)
    assert "folder (ImageFolder):" in out and "shards (streamed):" in out and "ratio" in out
    assert "folders (cache none):" in out
    assert "peak RSS streaming 24 images:" in out and "240 images:" in out


def test_ablation_recipe_runs_its_rows_on_tiny_data(image_root, tmp_path):
    args = ["--config", ROOT / "configs" / "resnet_clothing.yaml", "--minutes", "0.02", "--rows", "ema", "tta"]
    args += ["--set", f"data.root={image_root}", "--set", "data.image_size=16", "--set", "train.batch_size=8"]
    out = run_script([ROOT / "scripts" / "ablation_recipe.py", *args], tmp_path)
    lines = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "ema" in lines and "tta" in lines and "needs" not in out
    assert "accuracy on held-out (10% of train)" in out


def test_ablation_recipe_runs_given_rows_for_the_configs_epochs(image_root, tmp_path):
    args = ["--config", ROOT / "configs" / "resnet_clothing.yaml", "--minutes", "0", "--holdout", "0"]
    args += ["--row", "plain: train.epochs=1", "--row", "ema: train.epochs=2 train.ema.decay=0.9", "--row", "tta"]
    args += ["--set", f"data.root={image_root}", "--set", "data.image_size=16", "--set", "train.batch_size=8"]
    out = run_script([ROOT / "scripts" / "ablation_recipe.py", *args], tmp_path)
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert rows["plain"][1] == "1" and rows["ema"][1] == "2", out
    assert rows["tta"][1] == "-" and 0 <= float(rows["tta"][-1]) <= 1
    assert "accuracy on validation" in out


def test_bench_manifest_prints_every_stage_against_the_csv_module(tmp_path):
    out = run_script([ROOT / "scripts" / "bench_manifest.py", "--rows", 300, "--images", 4, "--check"], tmp_path)
    stages = {line.split()[0] for line in out.splitlines()[2:] if line.split()}
    assert stages == {"csv.reader", "read_manifest", "load_data", "data"} and "failed" not in out, out


def test_compare_resize_prints_a_row_per_mode_on_the_thin_objects(tmp_path):
    args = ["--thin-objects", "--per-class", "4", "--epochs", "1", "--modes", "letterbox", "crop", "--holdout", "0.25"]
    out = run_script([ROOT / "scripts" / "compare_resize.py", *args], tmp_path)
    assert "thin objects: 6 classes, 4 train and 2 validation pictures each" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("letterbox", "crop"))]
    assert [r[0] for r in rows] == ["letterbox", "crop"] and all(len(r) == 6 for r in rows)


def test_bench_calibration_prints_the_model_and_the_probe_before_and_after(trained, tmp_path):
    args = ["--run", trained.run_dir, "--heldout", trained.root / "validation"]
    out = run_script([ROOT / "scripts" / "bench_calibration.py", *args], tmp_path)
    assert "held-out images: 8 from" in out and "ECE before" in out and "ECE after" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("model ", "probe "))}
    assert set(rows) == {"model", "probe"} and all(len(r) == 5 and r[1].endswith("%") for r in rows.values())


def test_bench_hf_stream_prints_both_first_epochs_and_the_ratio(tmp_path):
    pytest.importorskip("datasets")
    args = ["--images", "24", "--image-size", "16", "--batch-size", "8", "--workers", "0"]
    out = run_script([ROOT / "scripts" / "bench_hf_stream.py", *args], tmp_path)
    assert "cached    first epoch" in out and "streamed  first epoch" in out and "ratio streamed/cached:" in out


def test_bench_remote_streams_and_trains_from_the_local_s3_server(image_root, tmp_path):
    from support.s3_server import moto_server

    if moto_server() is None:
        pytest.skip("moto's server is not installed (pip install 'moto[server]')")
    pytest.importorskip("s3fs")
    args = ["--data", image_root, "--image-size", 16, "--batch-size", 4, "--workers", 0, "--shard-size", 5]
    out = run_script([ROOT / "scripts" / "bench_remote.py", *args], tmp_path)
    for phase in ("stream local", "stream s3", "train  local", "train  s3"):
        assert f"  {phase}" in out
    assert "ratio stream s3/local:" in out and "ratio train s3/local:" in out


def test_bench_checkpoint_every_compares_each_n_with_none(image_root, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(image_root, batch_size=4)))
    out = run_script([ROOT / "scripts" / "bench_checkpoint_every.py", "--config", path, "--every", 2], tmp_path)
    assert "steps per epoch" in out and "ratio: against the mean of the two runs without" in out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in ("off", "2")]
    assert [row[0] for row in rows] == ["off", "2", "off"]
    assert int(rows[1][3]) > 0  # checkpoints were written


def test_bench_tune_compares_tune_with_the_grid_sweep_on_the_same_budget(image_root, tmp_path):
    pytest.importorskip("optuna")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(image_root)))
    args = ["--config", path, "--epochs", 2, "--lrs", "0.001,0.01", "--decays", "0.0"]
    out = run_script([ROOT / "scripts" / "bench_tune.py", *args], tmp_path)
    assert "budget: 2 runs of 2 epochs" in out and "sweep (grid 2 x 1): best" in out
    assert "tune / sweep: time" in out and "tune at equal epochs / sweep: time" in out
