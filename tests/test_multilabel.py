"""Multi-label classification: the scores against hand-computed cases, the loss and its weights,
the data path (multi-hot batches, the task detected or set, bad input in one line), and (slow) a
shapes set with one to three shapes per image trained, predicted, evaluated and exported."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnzoo
from cnnzoo.config import load_config
from cnnzoo.data import loaders
from cnnzoo.data.shapes import write_multi_label_shapes
from cnnzoo.data.sources import load_data
from cnnzoo.errors import ConfigError, DataError
from cnnzoo.evaluation import multilabel
from cnnzoo.inference.classifier import calibrated_thresholds, temperature_of
from cnnzoo.training.recipe import MULTI_LABEL_LOSS, Criterion, loss_kind, pos_weight_vector

from support.cli import invoke_cnnzoo, one_error_line, run_cnnzoo
from support.images import write_class_folders
from support.runs import tiny_config, tiny_layers

# ----------------------------------------------------------------------------- scores, by hand


def test_average_precision_by_hand_with_and_without_ties():
    # ranks: + (P 1, R .5), - , + (P 2/3, R 1), -  ->  .5 * 1 + .5 * 2/3
    assert multilabel.average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx(
        0.5 + 1 / 3
    )
    # a tie is one threshold: at 0.5 one of two is right (P .5, R .5), then P 2/3 at R 1
    assert multilabel.average_precision(np.array([0.5, 0.5, 0.2]), np.array([1, 0, 1])) == pytest.approx(0.25 + 1 / 3)
    assert multilabel.average_precision(np.array([0.3, 0.1]), np.array([0, 0])) is None


def test_map_leaves_out_classes_without_a_positive_image():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4]])
    targets = np.array([[1, 0, 0], [0, 0, 0]])
    assert multilabel.mean_average_precision(scores, targets) == pytest.approx(1.0)  # class 0 only


def test_f1_exact_match_and_hamming_loss_at_per_class_thresholds_by_hand():
    scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4]])
    targets = np.array([[1, 0], [1, 1], [0, 0]])
    # thresholds .5 and .8 predict [[1, 0], [1, 0], [0, 0]]: class 1 misses its one image
    got = multilabel.threshold_scores(scores, targets, [0.5, 0.8])
    assert got["f1_micro"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    assert got["f1_macro"] == pytest.approx((1.0 + 0.0) / 2)
    assert got["exact_match"] == pytest.approx(2 / 3) and got["hamming_loss"] == pytest.approx(1 / 6)
    per_class = multilabel.per_class(scores, targets, [0.5, 0.8], ["a", "b"])
    assert per_class["b"] == {"ap": 1.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "threshold": 0.8}


def test_the_tuned_threshold_sits_between_the_f1_best_score_and_the_next():
    assert multilabel.best_f1_threshold(np.array([0.9, 0.6, 0.4, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(0.5)
    assert multilabel.best_f1_threshold(np.array([0.9, 0.6]), np.array([0, 0]), default=0.5) == 0.5


def test_scores_agree_with_scikit_learn_where_it_is_installed():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    targets = (rng.random((200, 4)) < 0.3).astype(int)
    scores = np.clip(targets * 0.3 + rng.random((200, 4)) * 0.7, 0, 1).round(2)  # rounded: ties
    for k in range(4):
        expected = sklearn_metrics.average_precision_score(targets[:, k], scores[:, k])
        assert multilabel.average_precision(scores[:, k], targets[:, k]) == pytest.approx(expected)
    predicted = scores >= 0.5
    got = multilabel.threshold_scores(scores, targets, [0.5] * 4)
    assert got["f1_micro"] == pytest.approx(sklearn_metrics.f1_score(targets, predicted, average="micro"))
    assert got["f1_macro"] == pytest.approx(sklearn_metrics.f1_score(targets, predicted, average="macro"))
    assert got["hamming_loss"] == pytest.approx(sklearn_metrics.hamming_loss(targets, predicted))


# ----------------------------------------------------------------------------- loss


def test_one_sigmoid_rule_for_multi_label_and_one_logit_heads_in_float32_as_torch():
    """Evaluate, predict and every export score a logit with one function
    (:func:`cnnzoo.inference.classifier.probabilities`): float32, as training's ``torch.sigmoid``
    (whose scores tuned the thresholds) and an exported model compute it."""
    from cnnzoo.inference.classifier import probabilities

    logits = np.array([[-100.0, -17.0, -1.5, 0.0], [0.25, 3.0, 17.0, 100.0]], dtype=np.float32)
    multi = probabilities(logits, multi_label=True)
    assert multi.dtype == np.float32
    np.testing.assert_allclose(multi, torch.sigmoid(torch.from_numpy(logits)).numpy(), rtol=1e-6, atol=1e-7)
    one_logit = probabilities(logits.reshape(-1, 1))
    np.testing.assert_array_equal(one_logit[:, 1], multi.reshape(-1))
    np.testing.assert_array_equal(one_logit[:, 0], 1 - multi.reshape(-1))


def test_balanced_class_weights_are_pos_weights_negatives_over_positives():
    weights = pos_weight_vector("balanced", ["a", "b"], [1, 3], images=4)
    assert weights.tolist() == pytest.approx([3.0, 1 / 3])
    criterion = Criterion(MULTI_LABEL_LOSS, weights, label_smoothing=0.0)
    logits, targets = torch.tensor([[0.3, -1.0]]), torch.tensor([[1.0, 0.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights)
    assert criterion(logits, targets).item() == pytest.approx(expected.item())


def test_label_smoothing_pulls_multi_hot_targets_toward_one_half():
    criterion = Criterion(MULTI_LABEL_LOSS, None, label_smoothing=0.2)
    logits, targets = torch.tensor([[2.0, -2.0]]), torch.tensor([[1.0, 0.0]])
    smoothed = torch.tensor([[0.9, 0.1]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, smoothed)
    assert criterion(logits, targets).item() == pytest.approx(expected.item())


def test_a_one_logit_head_or_cross_entropy_is_refused_for_multi_label_in_one_line():
    assert loss_kind("auto", 3, 3, multi_label=True) == MULTI_LABEL_LOSS
    with pytest.raises(ConfigError, match="train.loss: multi-label data .* 1 output for 2 classes"):
        loss_kind("bce", 1, 2, multi_label=True)
    with pytest.raises(ConfigError, match="train.loss is cross_entropy"):
        loss_kind("cross_entropy", 3, 3, multi_label=True)


def test_check_meta_refuses_a_multi_label_model_without_its_thresholds():
    from cnnzoo.checkpoint import check_meta
    from cnnzoo.errors import UserError

    meta = {"classes": ["a", "b"], "channels": 3, "image_size": [8, 8], "mean": [0.5] * 3, "std": [0.5] * 3}
    check_meta({**meta, "task": "multi", "thresholds": [0.5, 0.2]}, "m.pt", "checkpoint")
    for bad in ({"task": "multi"}, {"task": "multi", "thresholds": [0.5]}, {"task": "multi", "thresholds": [0.5, 2]},
                {"task": "several"}):  # fmt: skip
        with pytest.raises(UserError, match=r"m.pt: damaged or foreign checkpoint: meta\.(thresholds|task)"):
            check_meta({**meta, **bad}, "m.pt", "checkpoint", prefix="meta.")


# ----------------------------------------------------------------------------- data


def write_tags(folder: Path, tags: list[str], column: str = "tags") -> Path:
    """A manifest over pictures of classes a and b, each row tagged as ``tags`` says."""
    write_class_folders(folder, {"a": (len(tags) + 1) // 2, "b": len(tags) // 2})
    files = sorted(f"{c}/{p.name}" for c in ("a", "b") for p in (folder / c).iterdir())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows([["image", column, "split"], *[[f, t, "validation" if i % 4 == 3 else "train"]
                                                     for i, (f, t) in enumerate(zip(files, tags))]])  # fmt: skip
    (folder / "labels.csv").write_text(buffer.getvalue())
    return folder / "labels.csv"


def test_space_separated_tags_load_as_multi_hot_batches(tmp_path):
    path = write_tags(tmp_path, ["a", "a b", "b", "a b", "a", "b", "a b", "a"])
    spec = load_data(load_config(tiny_config(path)))
    assert spec.multi_label and spec.classes == ["a", "b"]
    dataset = loaders.ImageDataset(spec.train, spec.image_size, spec.channels, multi_label_classes=2)
    images, targets = dataset.__getitems__([(i, 0) for i in range(len(dataset))])
    assert targets.dtype == torch.float32 and targets.tolist() == [[1, 0], [1, 1], [0, 1], [1, 0], [0, 1], [1, 1]]
    assert dataset.class_counts(2) == [4, 4]  # images that have each class (every 4th row validates)


def test_data_check_counts_each_image_once_in_each_of_its_classes(tmp_path):
    from cnnzoo.data.check import check_data, format_check

    path = write_tags(tmp_path, ["a", "a b", "b", "a b", "a", "b", "a b", "a"])
    report = check_data(load_config(tiny_config(path)))
    assert report["counts"] == {"train": [4, 4], "validation": [2, 1]} and report["images"]["train"] == 6
    assert "  images" in format_check(report)


def test_a_row_with_no_tags_is_an_image_with_none_of_the_classes(tmp_path):
    tags = ["a", "a b", "b", "", "a", "", "a b", "b"]
    spec = load_data(load_config(tiny_config(write_tags(tmp_path, tags))))
    assert spec.multi_label and spec.train.label_sets[4] == []  # row 6 (every 4th row validates)
    dataset = loaders.ImageDataset(spec.train, spec.image_size, spec.channels, multi_label_classes=2)
    assert dataset.targets[4].tolist() == [0, 0]
    weights = loaders.multi_label_weights(dataset.targets)  # the balanced sampler still draws it
    assert weights is not None and bool((weights > 0).all())
    files = sorted(f"{c}/{p.name}" for c in "ab" for p in (tmp_path / c).iterdir())
    one_hot = tmp_path / "onehot.csv"
    one_hot.write_text("image,a,b\n" + "".join(f"{f},{int('a' in t)},{int('b' in t)}\n" for f, t in zip(files, tags)))
    # 0/1 columns where a row has no 1 are findings an image may lack: multi-label too
    assert load_data(load_config(tiny_config(one_hot))).multi_label


def test_an_empty_label_in_single_label_data_says_how_to_allow_it(tmp_path):
    path = write_tags(tmp_path, ["a", "b", "b", "", "a", "a", "b", "b"], column="label")
    with pytest.raises(DataError, match=r"labels.csv row 5: empty 'label'; .* set train.task: multi"):
        load_data(load_config(tiny_config(path)))


@pytest.mark.slow
def test_a_tiny_multi_label_run_with_the_balanced_sampler_and_pos_weights(tmp_path):
    from cnnzoo.training.run import train

    path = write_tags(tmp_path, ["a", "a b", "b", "a b", "a", "", "a b", "a"] * 2)
    raw = tiny_config(path, epochs=1, class_weights="balanced", label_smoothing=0.1, thresholds="tuned")
    raw["data"]["sampler"] = "balanced"
    run = train(raw, out=tmp_path / "runs", quiet=True)
    row = next(csv.DictReader((run / "metrics.csv").open()))
    assert 0 <= float(row["val_map"]) <= 1 and row["val_f1_micro"] != ""
    meta = torch.load(run / "last.pt", weights_only=True)["meta"]
    assert meta["task"] == "multi" and len(meta["thresholds"]) == 2


def _same_records(python: list[dict], cli: list[dict]) -> None:
    """The same predictions: names, labels and rankings alike, probabilities to float32's precision
    (the two processes may sum in another order)."""
    assert [(r["image"], r["label"], r.get("labels")) for r in python] == [
        (r["image"], r["label"], r.get("labels")) for r in cli
    ]
    for mine, theirs in zip(python, cli):
        assert [t["label"] for t in mine["top_k"]] == [t["label"] for t in theirs["top_k"]]
        assert mine["probability"] == pytest.approx(theirs["probability"], abs=1e-6)
        assert mine.get("probabilities", {}) == pytest.approx(theirs.get("probabilities", {}), abs=1e-6)


@pytest.mark.slow
def test_the_python_api_predicts_a_manifest_as_predict_tta_threshold_data_does(tmp_path):
    """``cnnzoo predict --tta --threshold 0.3 --data test.csv`` is ``load(...).predict_manifest(...)``:
    the same records in the manifest's order (a missing image an empty record and an error), the
    same CSV, and the model itself left as it was (its own thresholds, no TTA)."""
    import cnnzoo
    from cnnzoo.training.run import train

    path = write_tags(tmp_path / "data", ["a", "a b", "b", "a b", "a", "", "a b", "a"])
    run = train(tiny_config(path, epochs=1), out=tmp_path / "runs", quiet=True)
    names = [row["image"] for row in csv.DictReader(path.open())]
    manifest = path.parent / "test.csv"
    manifest.write_text("id\n" + "".join(f"{name}\n" for name in [names[3], "a/gone.png", *names[:3]]))
    options = ["--tta", "--threshold", "0.3", "--data", manifest, "-m", run / "best.pt", "-k", "2"]
    cli = run_cnnzoo(["predict", *options, "--json"], tmp_path)
    assert cli.returncode == 1 and "cannot read a/gone.png: file not found" in cli.stderr

    model = cnnzoo.load(run / "best.pt")
    errors: list = []
    got = model.predict_manifest(manifest, 2, tta=True, threshold=0.3, errors=errors)
    assert errors == [("a/gone.png", "file not found")] and got.image_column == "id"
    assert got.records[1] == {"image": "a/gone.png", "label": "", "probability": None, "top_k": []}
    _same_records(got.records, json.loads(cli.stdout))
    assert all(r["labels"] == [c for c in sorted(r["probabilities"], key=lambda c: -r["probabilities"][c])
                               if r["probabilities"][c] >= 0.3] for r in got.records if r["top_k"])  # fmt: skip
    submission = invoke_cnnzoo(["predict", *options, "--csv"], tmp_path).stdout  # in-process: the same command code
    assert model.csv(json.loads(cli.stdout), 2, image_header=got.image_column) == submission
    # nothing set from outside: its own thresholds, moved only by its calibration
    assert model.tta is False
    assert model.thresholds == calibrated_thresholds(model.meta["thresholds"], temperature_of(model.meta))
    plain = model.predict([str(p) for p in [path.parent / names[0]]], 2)[0]
    assert plain["probability"] != pytest.approx(got.records[2]["probability"], abs=1e-9)  # TTA changed it
    with pytest.raises(cnnzoo.UserError, match="a/gone.png: cannot read image"):
        model.predict_manifest(manifest)  # without an errors list, the first missing image raises


@pytest.mark.slow
def test_the_training_recipe_runs_on_multi_label_data(tmp_path):
    """MixUp/CutMix (blended multi-hot targets), EMA and batch augmentation on a multi-label run;
    best.pt holds the average that validation scored."""
    from cnnzoo.training.run import train

    path = write_tags(tmp_path, ["a", "a b", "b", "a b", "a", "", "a b", "a"] * 2)
    raw = tiny_config(path, epochs=1, mixup=0.2, cutmix=1.0, ema={"decay": 0.9})
    raw["data"]["augment"] = {"hflip": True, "rotation": 10, "where": "batch"}
    run = train(raw, out=tmp_path / "runs", quiet=True)
    row = next(csv.DictReader((run / "metrics.csv").open()))
    assert 0 <= float(row["val_map"]) <= 1
    best, last = (torch.load(run / name, weights_only=True) for name in ("best.pt", "last.pt"))
    assert best["meta"]["task"] == "multi" and best["epoch"] == 1
    # best.pt holds the average; last.pt the raw weights, and the average beside them
    weights = [k for k, v in best["model_state"].items() if v.is_floating_point()]
    assert all(torch.equal(best["model_state"][k], last["ema"]["weights"][k]) for k in weights)
    assert any(not torch.equal(best["model_state"][k], last["model_state"][k]) for k in weights)


def test_task_single_over_rows_with_several_labels_is_one_line(tmp_path):
    path = write_tags(tmp_path, ["a", "a b", "b", "a b", "a", "b", "a b", "a"])
    with pytest.raises(DataError, match="some rows have several labels, but train.task is single"):
        load_data(load_config(tiny_config(path)), task="single")


def test_task_multi_on_class_folders_is_one_line(tmp_path):
    write_class_folders(tmp_path / "train", {"a": 4, "b": 4})
    write_class_folders(tmp_path / "validation", {"a": 2, "b": 2})
    with pytest.raises(ConfigError, match="train.task: multi needs a manifest"):
        load_data(load_config(tiny_config(tmp_path)), task="multi")


def test_a_validation_tag_not_seen_in_training_names_its_row(tmp_path):
    path = write_tags(tmp_path, ["a", "a b", "b", "a c", "a", "b", "a b", "a"])
    with pytest.raises(DataError, match=r"labels.csv row 5: label 'c' is not one of the training classes"):
        load_data(load_config(tiny_config(path)))


def test_single_label_options_on_multi_label_data_are_one_line_each(tmp_path):
    path = write_tags(tmp_path, ["a", "a b", "b", "a b", "a", "b", "a b", "a"])
    raw = tiny_config(path, epochs=1)
    raw["model"]["layers"] = tiny_layers(outputs=1)
    line = one_error_line(invoke_cnnzoo(["train", "-c", _write(tmp_path, raw), "--runs", tmp_path / "runs"], tmp_path))
    assert "train.loss: multi-label data" in line and "1 output for 2 classes" in line
    single = tiny_config(tmp_path / "folders", epochs=1, thresholds="tuned")
    write_class_folders(tmp_path / "folders" / "train", {"a": 4, "b": 4})
    write_class_folders(tmp_path / "folders" / "validation", {"a": 2, "b": 2})
    line = one_error_line(
        invoke_cnnzoo(["train", "-c", _write(tmp_path, single), "--runs", tmp_path / "runs"], tmp_path)
    )
    assert "train.thresholds: thresholds are for multi-label data" in line


def _write(folder: Path, raw: dict) -> Path:
    import yaml

    path = folder / f"config{len(list(folder.glob('config*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_clothing_canvas_script_writes_a_multi_label_manifest(tmp_path):
    from support.cli import PROJECT, run_script

    source = tmp_path / "photos"
    write_class_folders(source / "train", {"hat": 3, "pants": 3, "shirt": 3}, size=40)
    write_class_folders(source / "validation", {"hat": 2, "pants": 2, "shirt": 2}, size=40, seed=1)
    out = tmp_path / "canvases"
    script = PROJECT / "scripts" / "build_multilabel_clothing.py"
    run_script([script, "--source", source, "--out", out, "--train", 12, "--validation", 4, "--cell", 32], tmp_path)
    rows = list(csv.DictReader((out / "labels.csv").open()))
    assert len(rows) == 16 and {r["split"] for r in rows} == {"train", "validation"}
    for row in rows:
        tags = row["tags"].split()
        assert 1 <= len(tags) <= 3 and len(set(tags)) == len(tags) and set(tags) <= {"hat", "pants", "shirt"}
    from PIL import Image

    assert Image.open(out / rows[0]["image"]).size == (96, 32)
    assert load_data(load_config(tiny_config(out / "labels.csv"))).multi_label


# ----------------------------------------------------------------------------- end to end (slow)

SHAPES = ("circle", "cross", "triangle")


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    """configs/shapes_multilabel.yaml's network trained on one to three of three shapes per image."""
    import yaml

    from cnnzoo.training.run import train

    base = tmp_path_factory.mktemp("multi-label")
    manifest = write_multi_label_shapes(base / "data", {"train": 480, "validation": 120}, size=32, classes=SHAPES)
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "shapes_multilabel.yaml").read_text())
    raw["data"].update(root=str(manifest), image_size=32, cache="ram", workers=0)
    raw["train"].update(epochs=8, batch_size=16)
    return base, manifest, train(raw, out=base / "runs", quiet=True)


def _json(result) -> object:
    """The JSON a command printed, from a subprocess's result or a CliRunner's (it must succeed)."""
    returned = result.returncode if hasattr(result, "returncode") else result.exit_code
    assert returned == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_shapes_with_several_labels_train_to_a_high_map_with_tuned_thresholds(shapes_run):
    _, _, run = shapes_run
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert {"val_map", "val_f1_micro", "val_f1_macro"} <= set(rows[0])
    best = torch.load(run / "best.pt", weights_only=True)
    # monitor: auto watches val_map here, and the saved config says what the user wrote
    assert best["meta"]["task"] == "multi" and best["config"]["train"]["monitor"] == "auto"
    assert float(best["metrics"]["val_map"]) == pytest.approx(max(float(r["val_map"]) for r in rows), abs=1e-6)
    assert float(best["metrics"]["val_map"]) >= 0.85  # 0.94 at 8 epochs; random scores: ~0.67
    thresholds = best["meta"]["thresholds"]
    assert len(thresholds) == 3 and thresholds != [0.5] * 3 and all(0 < t < 1 for t in thresholds)


@pytest.mark.slow
def test_predict_evaluate_and_the_onnx_export_of_a_multi_label_model(shapes_run):
    base, manifest, run = shapes_run
    images = sorted((manifest.parent / "images").glob("validation_*.png"))[:6]
    # the real command once; the other commands in-process (the same code, no new interpreter each)
    records = _json(run_cnnzoo(["predict", "-m", run / "best.pt", "--json", *images], base))
    # the thresholds training chose, where the calibrated sigmoids cross them (issue 31: labels unchanged)
    meta = torch.load(run / "best.pt", weights_only=True)["meta"]
    thresholds = dict(zip(SHAPES, calibrated_thresholds(meta["thresholds"], temperature_of(meta))))
    for r in records:
        p = r["probabilities"]
        assert set(p) == set(SHAPES) and r["labels"] == sorted(
            (c for c in SHAPES if p[c] >= thresholds[c]), key=lambda c: -p[c]
        )
    everything = _json(invoke_cnnzoo(["predict", "-m", run / "best.pt", "--json", "--threshold", "0", images[0]], base))
    assert sorted(everything[0]["labels"]) == sorted(SHAPES)

    submission = invoke_cnnzoo(["predict", "-m", run / "best.pt", "--data", manifest, "--csv", "-k", "1"], base)
    table = list(csv.DictReader(io.StringIO(submission.stdout)))
    assert list(table[0]) == ["image", "labels", "top1_label", "top1_probability"] and len(table) == 600
    assert all(set(row["labels"].split()) <= set(SHAPES) for row in table)

    report = _json(invoke_cnnzoo(["evaluate", run / "best.pt", "--json", "--out", base / "eval"], base))
    best = torch.load(run / "best.pt", weights_only=True)["metrics"]
    assert report["map"] == pytest.approx(float(best["val_map"]), abs=1e-4)  # the split training scored
    assert {"f1_micro", "f1_macro", "exact_match", "hamming_loss"} <= set(report)
    assert set(report["per_class"]["circle"]) == {"ap", "precision", "recall", "f1", "support", "threshold"}
    assert (base / "eval" / "pr_curves.png").stat().st_size > 0

    exported = invoke_cnnzoo(["export", run / "best.pt", "--format", "onnx", "--out", base / "m.onnx"], base)
    assert exported.exit_code == 0, exported.stderr
    from_onnx = _json(invoke_cnnzoo(["predict", "-m", base / "m.onnx", "--json", *images], base))
    assert [r["labels"] for r in from_onnx] == [r["labels"] for r in records]
    # the export is scored as the checkpoint was: the split training held out, every label (issue 30)
    scored = _json(invoke_cnnzoo(["evaluate", base / "m.onnx", "--json", "--out", base / "eval-onnx"], base))
    assert scored["map"] == pytest.approx(report["map"], abs=1e-4) and scored["num_images"] == report["num_images"]
    for a, b in zip(from_onnx, records):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)
    from cnnzoo.inference.onnx import OnnxModel

    assert OnnxModel(base / "m.onnx").info()["thresholds"] == pytest.approx(list(thresholds.values()))


@pytest.mark.slow
def test_serve_and_explain_a_multi_label_model(shapes_run, tmp_path):
    from servelib import Server

    base, manifest, run = shapes_run
    image = sorted((manifest.parent / "images").glob("validation_*.png"))[0]
    expected = _json(invoke_cnnzoo(["predict", "-m", run / "best.pt", "--json", image], base))
    server = Server(run / "best.pt", base)
    try:
        status, info = server.get("/info")
        assert status == 200 and info["task"] == "multi" and len(info["thresholds"]) == 3
        status, answer = server.request("/predict", data=image.read_bytes(), headers={"Content-Type": "image/png"})
        assert status == 200 and answer[0]["labels"] == expected[0]["labels"]
        _page_shows_independent_bars(server.url, image, expected[0])
    finally:
        server.stop()
    done = invoke_cnnzoo(
        ["explain", image, "-m", run / "best.pt", "--target", "cross", "--out", tmp_path / "x.html"], base
    )
    assert done.exit_code == 0, done.stderr
    assert "Grad-CAM for cross" in (tmp_path / "x.html").read_text()


def _page_shows_independent_bars(url: str, image: Path, record: dict) -> None:
    """serve's page in headless Chromium: a bar per class, each with its threshold marked, the bars
    under their threshold drawn lighter, and the labels over it as the heading."""
    from support.browser import headless_chromium

    browser = headless_chromium()
    try:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ready
        from selenium.webdriver.support.ui import WebDriverWait

        browser.get(url + "/")
        WebDriverWait(browser, 20).until(lambda b: "multi-label" in b.find_element(By.ID, "about").text)
        browser.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(browser, 20).until(ready.presence_of_all_elements_located((By.CSS_SELECTOR, "#rows .row")))
        rows = browser.find_elements(By.CSS_SELECTOR, "#rows .row")
        names = [r.find_element(By.CLASS_NAME, "name").text for r in rows]
        assert names == sorted(SHAPES, key=lambda c: -record["probabilities"][c])
        assert len(browser.find_elements(By.CSS_SELECTOR, "#rows .mark")) == len(SHAPES)
        below = {r.find_element(By.CLASS_NAME, "name").text for r in rows if "below" in
                 r.find_element(By.CLASS_NAME, "bar").get_attribute("class")}  # fmt: skip
        assert below == set(SHAPES) - set(record["labels"])
        heading = browser.find_element(By.ID, "label").text
        assert heading == (", ".join(record["labels"]) or "none of the classes")
    finally:
        browser.quit()


@pytest.mark.slow
def test_int8_of_a_multi_label_model_counts_images_by_their_whole_label_set(shapes_run):
    """export --int8's paired check (issue 32): an image is right when its predicted label set is its
    label set; the FP32 side's share of those is evaluate's exact match, and the changed images
    are the ones predict answers differently with the two files."""
    pytest.importorskip("onnxruntime")
    from cnnzoo.deploy import quantize
    from cnnzoo.deploy.export import export

    base, _, run = shapes_run
    result = export(run / "best.pt", "onnx", int8=True, out=base / "int8" / "m.int8.onnx")
    fp32 = export(run / "best.pt", "onnx", out=base / "int8" / "m.onnx").path
    report = result.int8
    ckpt = torch.load(run / "best.pt", weights_only=True)
    _, validation = quantize.data_splits(ckpt["config"], list(SHAPES))
    paths = [str(validation.item(i)) for i in range(len(validation))]
    truth = [sorted(SHAPES[k] for k in validation.label_sets[i]) for i in range(len(validation))]

    def right(model_path) -> list[bool]:
        records = cnnzoo.load(model_path).predict(paths)
        return [sorted(r["labels"]) == t for r, t in zip(records, truth)]

    before, after = right(fp32), right(result.path)
    assert report.validation_images == len(paths) == 120
    assert report.fp32_accuracy == sum(before) / 120 and report.int8_accuracy == sum(after) / 120
    assert report.now_wrong == sum(b and not a for b, a in zip(before, after))
    assert report.now_right == sum(a and not b for b, a in zip(before, after))
    scored = cnnzoo.evaluate(fp32, split="validation", progress=False, html_report=False, out=base / "int8-eval")
    assert scored["exact_match"] == pytest.approx(report.fp32_accuracy)
