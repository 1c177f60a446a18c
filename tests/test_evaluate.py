"""``cnnzoo evaluate``: the same numbers training recorded, a report that adds up, and the
split/--data rules; plus unit tests of cnnzoo.evaluation.metrics."""

from __future__ import annotations

import csv
import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import cnnzoo
from cnnzoo.cli import app
from cnnzoo.data.sources import scan_folder, stratified_split
from cnnzoo.errors import DataError
from cnnzoo.evaluation import metrics, scores
from cnnzoo.evaluation.evaluate import evaluate as run_evaluation

from support.cli import one_error_line, run_cnnzoo
from support.images import make_image_tree, write_class_folders
from support.runs import train_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _image_tree(base: Path) -> Path:
    return make_image_tree(base / "images", validation={"a": 5, "b": 4})


def _single_folder(base: Path) -> Path:
    return write_class_folders(base / "flat", {"a": 15, "b": 13}, seed=3)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """ImageFolder layout: train/ + validation/ (no test/)."""
    return train_run(tmp_path_factory.mktemp("eval-folder"), _image_tree)


@pytest.fixture(scope="module")
def fraction_run(tmp_path_factory):
    """One folder of class folders; training holds out data.val_fraction of it."""

    def hold_out(cfg):
        cfg["data"]["val_fraction"] = 0.3
        cfg["seed"] = 11
        cfg["name"] = "flat"

    return train_run(tmp_path_factory.mktemp("eval-fraction"), _single_folder, hold_out, epochs=1)


def recorded(run) -> tuple[dict, dict[str, str]]:
    """best.pt's metrics and the metrics.csv row of the same epoch."""
    ckpt = torch.load(run.best, map_location="cpu", weights_only=True)
    with open(run.run_dir / "metrics.csv", newline="") as f:
        rows = {int(r["epoch"]): r for r in csv.DictReader(f)}
    assert ckpt["epoch"] in rows
    assert ckpt["metrics"]["epoch"] == ckpt["epoch"]
    return ckpt["metrics"], rows[ckpt["epoch"]]


def assert_matches_training(report: dict, run) -> None:
    from_ckpt, row = recorded(run)
    assert report["split"] == "validation"
    assert report["accuracy"] == from_ckpt["val_acc"]  # exact: the same images, the same predictions
    assert f"{report['accuracy']:.6f}" == row["val_acc"]
    assert report["loss"] == pytest.approx(from_ckpt["val_loss"], rel=1e-4, abs=1e-6)
    assert float(row["val_loss"]) == pytest.approx(report["loss"], rel=1e-4, abs=1e-6)


# ----------------------------------------------------------------------------- same numbers as training


def test_cli_evaluate_without_arguments_uses_latest_run(folder_run):
    (folder_run.run_dir / "eval.json").unlink(missing_ok=True)
    result = run_cnnzoo(["evaluate"], cwd=folder_run.base)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "accuracy" in result.stdout and "confusion matrix" in result.stdout
    written = folder_run.run_dir / "eval.json"  # default --out: the checkpoint's folder
    assert written.is_file(), result.stdout
    assert (folder_run.run_dir / "confusion_matrix.png").read_bytes().startswith(PNG_SIGNATURE)
    report = json.loads(written.read_text())
    assert Path(report["checkpoint"]).resolve() == folder_run.best.resolve()
    assert report["num_images"] == 9
    assert_matches_training(report, folder_run)
    assert f"{100 * report['accuracy']:.2f}%" in result.stdout


def test_folder_split_accuracy_equals_val_acc(folder_run, tmp_path):
    report = run_evaluation(folder_run.best, out=tmp_path, progress=False)
    assert report["data"] == str(folder_run.root.resolve())
    assert_matches_training(report, folder_run)


def test_val_fraction_holdout_is_rebuilt(fraction_run, tmp_path):
    report = run_evaluation(fraction_run.best, out=tmp_path, progress=False)
    # the same seeded, stratified hold-out as training: round(0.3 * 15) + round(0.3 * 13) images
    assert report["num_images"] == round(0.3 * 15) + round(0.3 * 13) == 8
    assert [s["support"] for s in report["per_class"].values()] == [4, 4]
    everything, _, _ = scan_folder(fraction_run.root, "all")
    _, held_out = stratified_split(everything, 0.3, 11)
    assert len(held_out) == report["num_images"]
    assert_matches_training(report, fraction_run)


def test_eval_json_lands_in_the_run_folder_when_given_a_run_folder(folder_run, tmp_path):
    """load_checkpoint accepts a run folder (uses its best.pt); eval.json belongs beside that best.pt."""
    run = tmp_path / "copy" / "tiny" / "1"
    shutil.copytree(folder_run.run_dir, run)
    (run / "eval.json").unlink(missing_ok=True)
    report = run_evaluation(run, progress=False)
    assert report["epoch"] == torch.load(run / "best.pt", weights_only=True)["epoch"]
    assert not (run.parent / "eval.json").exists(), "eval.json written beside the run folder"
    assert (run / "eval.json").is_file()


# ----------------------------------------------------------------------------- the report adds up


@pytest.fixture(scope="module")
def json_report(folder_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-out") / "reports"
    result = CliRunner().invoke(app, ["evaluate", str(folder_run.best), "--json", "--out", str(out), "--top-k", "1"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), out


def test_json_report_keys(json_report):
    report, _ = json_report
    for key in (
        "accuracy",
        "top_k_accuracy",
        "loss",
        "per_class",
        "confusion_matrix",
        "classes",
        "num_images",
        "split",
        "checkpoint",
        "epoch",
    ):
        assert key in report, key
    assert report["classes"] == ["a", "b"]
    assert set(report["per_class"]) == {"a", "b"}
    for class_scores in report["per_class"].values():
        assert set(class_scores) >= {"precision", "recall", "f1", "support"}
        assert isinstance(class_scores["support"], int)


def test_confusion_matrix_and_scores_agree_by_hand(json_report):
    report, _ = json_report
    m = report["confusion_matrix"]
    n = report["num_images"]
    classes = report["classes"]
    assert len(m) == len(classes) and all(len(row) == len(classes) for row in m)
    assert sum(map(sum, m)) == n == 9
    assert sum(m[i][i] for i in range(len(classes))) / n == pytest.approx(report["accuracy"], abs=1e-12)
    assert report["top_k"] == 1 and report["top_k_accuracy"] == pytest.approx(report["accuracy"], abs=1e-12)
    for k, name in enumerate(classes):
        tp = m[k][k]
        column = sum(m[i][k] for i in range(len(classes)))
        row = sum(m[k])
        precision = tp / column if column else 0.0
        recall = tp / row if row else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        s = report["per_class"][name]
        assert s["support"] == row
        assert s["precision"] == pytest.approx(precision)
        assert s["recall"] == pytest.approx(recall)
        assert s["f1"] == pytest.approx(f1)
    assert [sum(r) for r in m] == [5, 4]  # supports: the validation folder's counts


def test_eval_json_and_png_written_to_out(json_report):
    report, out = json_report
    saved = json.loads((out / "eval.json").read_text())
    assert {k: v for k, v in report.items() if k != "outputs"} == saved
    png = out / "confusion_matrix.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(png) as img:
        img.verify()
    with Image.open(png) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100
    assert sorted(report["outputs"]) == sorted([str(out / "eval.json"), str(png), str(out / "report.html")])


def test_no_top_k_accuracy_when_k_is_not_below_the_classes(folder_run, tmp_path):
    # two classes: the true one is always in the top 5 (or top 2), so no "top-5 accuracy 100%" is claimed
    report = run_evaluation(folder_run.best, top_k=5, out=tmp_path, progress=False)
    assert report["top_k"] is None and report["top_k_accuracy"] is None
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["top_k"] is None and saved["top_k_accuracy"] is None  # keys kept, no figure
    printed = run_cnnzoo(["evaluate", folder_run.best, "--out", tmp_path / "cli"], tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert "accuracy" in printed.stdout and "top-" not in printed.stdout


# ----------------------------------------------------------------------------- which split, which data


def test_test_split_preferred_and_split_validation_overrides(folder_run, tmp_path):
    test_dir = folder_run.root / "test"
    write_class_folders(test_dir, {"a": 3, "b": 2}, seed=9)
    try:
        preferred = run_evaluation(folder_run.best, out=tmp_path, progress=False)
        assert preferred["split"] == "test" and preferred["num_images"] == 5
        assert [sum(r) for r in preferred["confusion_matrix"]] == [3, 2]
        chosen = run_evaluation(folder_run.best, split="validation", out=tmp_path, progress=False)
        assert chosen["split"] == "validation" and chosen["num_images"] == 9
    finally:
        shutil.rmtree(test_dir)


def test_cli_split_test_without_a_test_split_exits_2(folder_run, monkeypatch):
    monkeypatch.chdir(folder_run.base)  # runs/latest is the folder run
    line = one_error_line(CliRunner().invoke(app, ["evaluate", "--split", "test"]))
    assert "test" in line and "--split validation" in line


def test_unknown_split_name_exits_2(folder_run):
    line = one_error_line(CliRunner().invoke(app, ["evaluate", str(folder_run.best), "--split", "train"]))
    assert "--split" in line


def test_data_root_with_splits(folder_run, tmp_path):
    other = tmp_path / "other"
    write_class_folders(other / "test", {"a": 3, "b": 2}, seed=21)
    write_class_folders(other / "val", {"a": 2, "b": 2}, seed=22)
    report = run_evaluation(folder_run.best, data=other, out=tmp_path / "o1", progress=False)
    assert report["split"] == "test" and report["num_images"] == 5
    assert report["data"] == str(other)
    report = run_evaluation(folder_run.best, data=other, split="validation", out=tmp_path / "o2", progress=False)
    assert report["num_images"] == 4
    only_val = tmp_path / "only-val"
    write_class_folders(only_val / "validation", {"a": 1, "b": 2}, seed=23)
    assert run_evaluation(folder_run.best, data=only_val, out=tmp_path / "o3", progress=False)["num_images"] == 3
    with pytest.raises(DataError, match="test"):
        run_evaluation(folder_run.best, data=only_val, split="test", out=tmp_path / "o4", progress=False)


def test_data_folder_of_class_folders(folder_run, tmp_path):
    direct = write_class_folders(tmp_path / "direct", {"a": 2, "b": 3}, seed=31)
    (direct / "a" / "README.txt").write_text("not an image")
    report = run_evaluation(folder_run.best, data=direct, out=tmp_path / "o", progress=False)
    assert report["num_images"] == 5
    assert [sum(r) for r in report["confusion_matrix"]] == [2, 3]


@pytest.mark.parametrize("layout", ["class-folders", "root-with-splits"])
def test_data_with_other_classes_exits_2_naming_them(folder_run, tmp_path, layout):
    data = tmp_path / "mismatch"
    write_class_folders(data if layout == "class-folders" else data / "validation", {"a": 2, "zebra": 2}, seed=41)
    result = CliRunner().invoke(
        app, ["evaluate", str(folder_run.best), "--data", str(data), "--out", str(tmp_path / "o")]
    )
    line = one_error_line(result)
    assert "zebra" in line  # the extra class
    missing_part = line[line.index("missing") :] if "missing" in line else ""
    assert missing_part and " b" in missing_part.split(";")[0], line  # the missing class, b
    assert not (tmp_path / "o" / "eval.json").exists()


def test_data_folder_not_found_exits_2(folder_run, tmp_path):
    line = one_error_line(
        CliRunner().invoke(app, ["evaluate", str(folder_run.best), "--data", str(tmp_path / "nowhere")])
    )
    assert "nowhere" in line


def test_package_level_evaluate_stays_callable():
    """The docstring's API, ``cnnzoo.evaluate(path)``, after the submodule has been imported."""
    importlib.import_module("cnnzoo.evaluation.evaluate")  # what `cnnzoo evaluate` and any first call do
    assert callable(cnnzoo.evaluate)
    assert cnnzoo.evaluate is run_evaluation


# ----------------------------------------------------------------------------- metrics.py


def test_confusion_matrix_counts_true_rows_predicted_columns():
    m = scores.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert m == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert scores.confusion_matrix([], [], 2) == [[0, 0], [0, 0]]
    assert scores.confusion_matrix([1], [1], 4)[1] == [0, 1, 0, 0]


def test_per_class_scores_by_hand():
    m = [[3, 1], [2, 4]]
    s = scores.per_class_scores(m, ["x", "y"])
    x, y = s["per_class"]["x"], s["per_class"]["y"]
    assert x == pytest.approx({"precision": 3 / 5, "recall": 3 / 4, "f1": 2 * 0.6 * 0.75 / 1.35, "support": 4})
    assert y == pytest.approx(
        {"precision": 4 / 5, "recall": 4 / 6, "f1": 2 * 0.8 * (4 / 6) / (0.8 + 4 / 6), "support": 6}
    )
    assert s["averages"]["macro"]["recall"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert s["averages"]["weighted"]["recall"] == pytest.approx(7 / 10)  # weighted recall == accuracy


def test_per_class_scores_class_never_predicted_or_absent():
    # class 2 is never predicted (column of zeros), class 1 never occurs (row of zeros)
    m = [[2, 1, 0], [0, 0, 0], [1, 0, 0]]
    s = scores.per_class_scores(m, ["p", "q", "r"])["per_class"]
    assert s["r"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert s["q"]["support"] == 0 and s["q"]["recall"] == 0.0 and s["q"]["precision"] == 0.0
    assert s["p"]["precision"] == pytest.approx(2 / 3) and s["p"]["recall"] == pytest.approx(2 / 3)
    empty = scores.per_class_scores([[0, 0], [0, 0]], ["p", "q"])
    assert empty["averages"]["weighted"]["f1"] == 0.0


def test_top_k_correct():
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5], [0.7, 0.2, 0.1]])
    labels = np.array([2, 2, 0, 0])
    assert scores.top_k_correct(probs, labels, 1) == 1  # only the last
    assert scores.top_k_correct(probs, labels, 2) == 3  # row 2's label 0 is ranked third
    assert scores.top_k_correct(probs, labels, 3) == 4
    assert scores.top_k_correct(probs, labels, 10) == 4  # k clipped to the classes


def test_summary_scores_top_k_only_below_the_number_of_classes():
    from cnnzoo.evaluation.evaluate import format_report

    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5], [0.7, 0.2, 0.1]])
    labels, classes = np.array([2, 2, 0, 0]), ["p", "q", "r"]
    about = {"checkpoint": "best.pt", "epoch": 3, "data": "d", "split": "validation"}
    two = {**about, **scores.summary(np.log(probs), probs, labels, classes, top_k=2)}
    assert (two["top_k"], two["top_k_accuracy"]) == (2, 0.75)
    assert "accuracy 25.00%   top-2 accuracy 75.00%" in format_report(two)
    for k in (3, 5):  # as many classes as k, or fewer: every label is in the top k, 100% by construction
        every = {**about, **scores.summary(np.log(probs), probs, labels, classes, top_k=k)}
        assert every["top_k"] is None and every["top_k_accuracy"] is None
        assert "top-" not in format_report(every)


def test_probabilities_for_one_logit_and_k_logit_heads():
    one = metrics.probabilities(torch.tensor([[0.0], [2.0], [-3.0]]))
    assert one.shape == (3, 2)
    torch.testing.assert_close(one.sum(dim=1), torch.ones(3))
    torch.testing.assert_close(one[:, 1], torch.sigmoid(torch.tensor([0.0, 2.0, -3.0])))
    assert one[0].tolist() == [0.5, 0.5]
    assert metrics.predictions(torch.tensor([[0.5], [-0.5]])).tolist() == [1, 0]

    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [100.0, 0.0, -100.0]])
    many = metrics.probabilities(logits)
    assert many.shape == (3, 3)
    torch.testing.assert_close(many.sum(dim=1), torch.ones(3))
    e = torch.exp(torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(many[0], e / e.sum())
    assert torch.isfinite(many).all() and many[2, 0] == pytest.approx(1.0)
    assert metrics.predictions(logits).tolist() == [2, 0, 0]
    # a half-precision head still gives float32 probabilities
    assert metrics.probabilities(logits.half()).dtype == torch.float32


def test_plain_loss_sum_for_both_heads():
    labels = torch.tensor([1, 0])
    one = torch.tensor([[2.0], [-1.0]])
    expected = -(torch.log(torch.sigmoid(torch.tensor(2.0))) + torch.log(1 - torch.sigmoid(torch.tensor(-1.0))))
    assert metrics.plain_loss_sum(one, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    two = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    expected = -(torch.log_softmax(two, 1)[0, 1] + torch.log_softmax(two, 1)[1, 0])
    assert metrics.plain_loss_sum(two, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_numpy_scores_equal_training_torch_rules_for_both_heads():
    """evaluate's NumPy loss and predictions (every format's) against training's torch ones."""
    labels = torch.tensor([1, 0, 1, 1])
    for logits in (torch.tensor([[2.0], [-1.0], [30.0], [-40.0]]), torch.randn(4, 3) * 20):
        expected = metrics.plain_loss_sum(logits, labels).item()
        # abs: a near-zero loss (every logit far on the right side) differs in float32's last digits
        assert scores.loss_sum(logits.numpy(), labels.numpy()) == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert scores.predictions(logits.numpy()).tolist() == metrics.predictions(logits).tolist()
    assert metrics.confusion_counts(labels, labels, 3).tolist() == scores.confusion_matrix(
        [1, 0, 1, 1], [1, 0, 1, 1], 3
    )


@pytest.mark.slow
def test_moved_training_data_says_to_pass_data(tmp_path):
    from cnnzoo.training.run import train

    from support.runs import tiny_config

    root = make_image_tree(tmp_path / "images", train={"a": 6, "b": 6}, validation={"a": 2, "b": 2})
    run = train(tiny_config(root, epochs=1), out=tmp_path / "runs", quiet=True)
    shutil.move(str(root), str(tmp_path / "moved"))
    with pytest.raises(DataError, match="pass --data to evaluate on other data"):
        run_evaluation(run / "best.pt", progress=False)
    report = run_evaluation(run / "best.pt", data=tmp_path / "moved", progress=False)
    assert report["num_images"] == 4 and report["split"] == "validation"
