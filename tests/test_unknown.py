"""The "unknown" answer (issue 31 item 4): a score fitted after training, stored with its threshold,
and answered alike by the checkpoint and its ONNX export; ``evaluate --unknown``'s figures.

The trained models learn discs and bars drawn on dark noise (support/images.py); an image of
loud noise, or a flat colour, is like none of them, and the kNN score must say so. The AUROC and
FPR95 functions are checked against scikit-learn on synthetic scores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import cnnzoo
from cnnzoo.checkpoint import check_meta, load_checkpoint
from cnnzoo.cli import app
from cnnzoo.deploy.export import export
from cnnzoo.errors import UserError
from cnnzoo.inference import unknown

from support.cli import one_error_line, run_cnnzoo
from support.images import make_image_tree
from support.runs import train_run

LEGACY = Path(__file__).resolve().parent / "data" / "legacy"


# -- the scores and the figures, on synthetic numbers


def test_auroc_and_fpr95_agree_with_scikit_learn_on_synthetic_scores():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    known = rng.normal(0.0, 1.0, 500)
    strange = rng.normal(1.5, 1.0, 300)
    strange[:20] = known[:20]  # ties count half
    truth = np.r_[np.zeros(len(known)), np.ones(len(strange))]
    both = np.r_[known, strange]
    assert unknown.auroc(known, strange) == pytest.approx(metrics.roc_auc_score(truth, both), abs=1e-12)
    fpr, tpr, thresholds = metrics.roc_curve(truth, both)
    # the share of unknown images at or below the threshold that keeps 95% of the known ones
    cut = unknown.threshold_keeping(known, 0.95)
    assert np.mean(known <= cut) == pytest.approx(math.ceil(0.95 * len(known)) / len(known))
    assert unknown.fpr_at_keep(known, strange) == pytest.approx(np.mean(strange <= cut))
    assert unknown.auroc(known, known + 10) == 1.0 and unknown.auroc(known + 10, known) == 0.0
    assert unknown.auroc(known, known) == pytest.approx(0.5)
    assert unknown.fpr_at_keep(known, known + 10) == 0.0 and unknown.fpr_at_keep(known, known - 10) == 1.0


def test_threshold_keeps_at_least_the_share_asked_for():
    scores = np.arange(100, dtype=float)
    for keep in (0.5, 0.9, 0.95, 0.99):
        cut = unknown.threshold_keeping(scores, keep)
        assert np.mean(scores <= cut) == pytest.approx(math.ceil(keep * 100) / 100)
        assert cut not in scores  # halfway to the next score: a rounding away never moves an image
    assert unknown.threshold_keeping(np.array([3.0]), 0.5) == pytest.approx(3.0, abs=1e-4)  # all kept: past it


def test_logit_scores_read_the_raw_logits_higher_is_stranger():
    logits = np.array([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert unknown.logit_score("msp", logits) == pytest.approx(-p.max(1))
    assert unknown.logit_score("max_logit", logits) == pytest.approx([-10.0, -1.0])
    assert unknown.logit_score("energy", logits) == pytest.approx(-np.log(np.exp(logits).sum(1)))
    for name in unknown.LOGIT_SCORES:  # the confident row is the familiar one
        first, second = unknown.logit_score(name, logits)
        assert first < second
    # a binary head's one logit scores as the two logits [0, z]
    assert unknown.logit_score("msp", np.array([[3.0]])) == pytest.approx(
        unknown.logit_score("msp", np.array([[0.0, 3.0]]))
    )


def test_knn_score_is_one_minus_the_kth_cosine_similarity():
    bank = np.eye(3, dtype=np.float32)
    features = np.array([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=np.float32)
    assert unknown.knn_score(features, bank, 1) == pytest.approx([0.0, 1 - 1 / math.sqrt(2)], abs=1e-6)
    assert unknown.knn_score(features, bank, 2) == pytest.approx([1.0, 1 - 1 / math.sqrt(2)], abs=1e-6)
    assert unknown.knn_score(features, bank, 50) == pytest.approx([1.0, 1.0], abs=1e-6)  # k past the bank: its last


@pytest.mark.parametrize(
    "entry, words",
    [
        ("knn", "should be"),
        ({"score": "odd", "threshold": 0.1, "keep": 0.95}, "one of msp"),
        ({"score": "knn", "threshold": "high", "keep": 0.95}, "threshold: a number"),
        ({"score": "energy", "threshold": 1.0, "keep": 1.5}, "keep: in (0, 1)"),
    ],
)
def test_a_broken_meta_unknown_is_one_line_naming_it(entry, words):
    meta = {"classes": ["a", "b"], "channels": 3, "image_size": [8, 8], "mean": [0.5] * 3, "std": [0.5] * 3}
    check_meta(meta, "m.pt", "checkpoint", prefix="meta.")  # absent: an old model, no unknown answer
    with pytest.raises(UserError, match="meta.unknown should be") as caught:
        check_meta({**meta, "unknown": entry}, "m.pt", "checkpoint", prefix="meta.")
    assert words in str(caught.value) and "\n" not in str(caught.value)


# -- trained for real


def _tree(base: Path) -> Path:
    return make_image_tree(base / "images", train={"a": 30, "b": 30}, validation={"a": 20, "b": 20})


def _strangers(folder: Path, count: int = 8) -> list[str]:
    """Loud noise and flat colours: like none of the drawn discs and bars."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) if i % 2 else np.full((24, 24, 3), 40 * i, np.uint8)
        paths.append(folder / f"stranger_{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return [str(p) for p in paths]


def _validation(trained) -> list[str]:
    return sorted(str(p) for p in (trained.root / "validation").rglob("*.png"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("unknown-run"), _tree, epochs=3)


@pytest.fixture(scope="module")
def onnx_path(trained):
    return export(trained.best, "onnx").path


@pytest.mark.slow
def test_training_stores_the_score_and_a_threshold_that_keeps_the_share_of_validation(trained):
    ckpt = load_checkpoint(trained.best)
    entry = ckpt["meta"]["unknown"]
    assert entry["score"] == "knn" and entry["keep"] == 0.95 and entry["k"] == 10
    assert entry["bank_images"] == 60 and entry["validation_images"] == 40
    assert ckpt["unknown_bank"].shape[0] == 60
    assert torch.linalg.vector_norm(ckpt["unknown_bank"], dim=1) == pytest.approx(torch.ones(60), abs=1e-5)
    model = cnnzoo.load(trained.best)
    records = model.predict(_validation(trained))
    kept = np.mean([not r["unknown"] for r in records])
    assert kept == pytest.approx(math.ceil(0.95 * 40) / 40)  # the threshold keeps 38 of the 40


@pytest.mark.slow
def test_a_foreign_image_is_unknown_in_the_checkpoint_and_the_onnx_export_alike(trained, onnx_path, tmp_path):
    images = _strangers(tmp_path / "strangers") + _validation(trained)[:6]
    answers = {}
    for path in (trained.best, onnx_path):
        records = cnnzoo.load(path).predict(images, top_k=2)
        answers[path] = records
        for r in records[:8]:
            assert r["unknown"] is True and r["label"] == "unknown", r
            assert {t["label"] for t in r["top_k"]} == {"a", "b"}  # the probabilities are still given
    for a, b in zip(*answers.values()):
        assert a["unknown"] == b["unknown"] and a["label"] == b["label"]
        assert a["unknown_score"] == pytest.approx(b["unknown_score"], abs=1e-4)


@pytest.mark.slow
def test_predict_options_turn_the_answer_off_move_the_threshold_and_refuse_a_bad_one(trained, tmp_path):
    images = _strangers(tmp_path / "strangers", 2)
    model = cnnzoo.load(trained.best)
    plain = model.predict(images, unknown=False)
    assert all("unknown" not in r and "unknown_score" not in r and r["label"] in ("a", "b") for r in plain)
    assert not any(r["unknown"] for r in model.predict(images, unknown_threshold=2.0))
    # the real command once each for an answer and a refusal; the other cases in-process (the same code)
    listed = run_cnnzoo(["predict", "--model", trained.best, "--json", *images], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [r["label"] for r in json.loads(listed.stdout)] == ["unknown", "unknown"]
    refused = run_cnnzoo(["predict", "--model", trained.best, "--unknown-threshold", "2.5", *images], tmp_path)
    line = one_error_line(refused)
    assert "--unknown-threshold" in line and "[0, 2]" in line
    runner = CliRunner()
    model_args = ["predict", "--model", str(trained.best)]
    shown = runner.invoke(app, [*model_args, images[0]])
    assert "unknown (looks like none of the 2 classes)" in shown.stdout
    off = runner.invoke(app, [*model_args, "--json", "--no-unknown", *images])
    assert all("unknown" not in r for r in json.loads(off.stdout))
    for value in ("-0.1", "nan"):
        line = one_error_line(runner.invoke(app, [*model_args, "--unknown-threshold", value, *images]))
        assert "--unknown-threshold" in line and "[0, 2]" in line
    both = runner.invoke(app, [*model_args, "--unknown-threshold", "1", "--no-unknown", *images])
    assert "--no-unknown" in one_error_line(both)


@pytest.mark.slow
def test_evaluate_unknown_reports_auroc_fpr95_and_the_share_rejected(trained, onnx_path, tmp_path):
    strangers = tmp_path / "strangers"
    _strangers(strangers)
    args = ["--unknown", str(strangers), "--json", "--out", str(tmp_path / "e")]
    done = run_cnnzoo(["evaluate", trained.best, *args], tmp_path)  # the real command, for the checkpoint
    assert done.returncode == 0, done.stderr
    reports = [json.loads(done.stdout)]
    runner = CliRunner()  # the export and the refusals in-process: the same code
    exported = runner.invoke(app, ["evaluate", str(onnx_path), *args])
    assert exported.exit_code == 0, exported.stderr
    reports.append(json.loads(exported.stdout))
    for report in reports:
        assert report["unknown_auroc"] == 1.0 and report["unknown_fpr95"] == 0.0
        assert report["unknown_rejected"] == 1.0 and report["unknown_images"] == 8
        assert report["unknown_known_kept"] == pytest.approx(0.95)
        assert report["unknown_score"] == "knn"
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    empty = runner.invoke(app, ["evaluate", str(trained.best), "--unknown", str(tmp_path / "empty"), "--json"])
    assert "holds no images" in one_error_line(empty)
    manifest = tmp_path / "none.csv"
    manifest.write_text("image\n")  # the manifest's own refusal: no rows
    assert "none.csv" in one_error_line(runner.invoke(app, ["evaluate", str(trained.best), "--unknown", str(manifest)]))


@pytest.mark.slow
def test_a_model_without_a_score_answers_as_before_and_refuses_the_options(tmp_path):
    old = LEGACY / "run" / "best.pt"  # trained before issue 31
    image = str(next((LEGACY / "images").rglob("*.png")))
    model = cnnzoo.load(old)
    assert model.unknown is None
    assert "unknown" not in model.predict(image)[0]
    runner = CliRunner()  # the refusals in-process (the predict-options test runs the real command)
    line = one_error_line(runner.invoke(app, ["predict", "--model", str(old), "--unknown-threshold", "0.5", image]))
    assert "has no unknown score" in line
    strangers = tmp_path / "strangers"
    _strangers(strangers, 2)
    line = one_error_line(
        runner.invoke(app, ["evaluate", str(old), "--unknown", str(strangers), "--data", str(LEGACY / "images")])
    )
    assert "has no unknown score" in line


@pytest.mark.slow
def test_a_logit_score_needs_no_second_output_and_no_bank(tmp_path):
    run = train_run(tmp_path, _tree, epochs=1, unknown={"score": "energy", "keep": 0.9})
    ckpt = load_checkpoint(run.best)
    assert ckpt["meta"]["unknown"]["score"] == "energy" and "unknown_bank" not in ckpt
    onnx = cnnzoo.load(export(run.best, "onnx").path)
    assert not onnx.has_score  # one output: the score comes from the logits
    images = _validation(run)
    a, b = cnnzoo.load(run.best).predict(images), onnx.predict(images)
    assert [r["unknown"] for r in a] == [r["unknown"] for r in b]
    assert np.mean([not r["unknown"] for r in a]) == pytest.approx(math.ceil(0.9 * 40) / 40)


@pytest.mark.slow
def test_enabled_false_fits_no_score(tmp_path):
    off = train_run(tmp_path / "off", _tree, epochs=1, unknown={"enabled": False})
    assert "unknown" not in load_checkpoint(off.best)["meta"]
    assert "unknown" not in cnnzoo.load(off.best).predict(_validation(off)[0])[0]


@pytest.mark.slow
def test_serve_says_unknown_in_words_and_takes_the_options(trained, onnx_path, tmp_path):
    from starlette.testclient import TestClient

    from cnnzoo.deploy.serve.app import create_app

    noise = Path(_strangers(tmp_path / "strangers", 2)[1]).read_bytes()
    for model in (cnnzoo.load(trained.best), cnnzoo.load(onnx_path)):
        answer = TestClient(create_app(model)).post("/predict", content=noise).json()[0]
        assert answer["unknown"] is True and answer["label"] == "unknown"
        assert answer["text"] == "unknown (looks like none of the 2 classes)"
        off = TestClient(create_app(model, unknown="off")).post("/predict", content=noise).json()[0]
        assert "unknown" not in off and off["label"] in ("a", "b")
    line = one_error_line(run_cnnzoo(["serve", trained.best, "--unknown-threshold", "5", "--port", "1"], tmp_path))
    assert "[0, 2]" in line


@pytest.mark.slow
def test_a_transfer_run_fits_the_score_on_cached_features_that_the_checkpoint_reproduces(image_root, tmp_path):
    """With a backbone, the score is fitted through the feature cache (the frozen stages' output
    read from disk); the checkpoint, on images, must give the same validation scores."""
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    config = {
        "name": "transfer",
        "seed": 0,
        "data": {"root": str(image_root), "image_size": 32, "cache": "ram", "workers": 0},
        "model": {
            "layers": [
                {"backbone": {"name": "resnet18", "weights": str(weights)}},
                "gap",
                {"dense": {"out_features": "num_classes"}},
            ]
        },
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "unfreeze_at_epoch": 2, "unfreeze_stages": 1},
    }
    run = cnnzoo.train(config, out=tmp_path / "runs", quiet=True)
    entry = load_checkpoint(run / "best.pt")["meta"]["unknown"]
    assert entry["score"] == "knn" and entry["validation_images"] == 8
    model = cnnzoo.load(run / "best.pt")
    pixels = np.stack([model.preprocess(p) for p in sorted((image_root / "validation").rglob("*.png"))])
    scores = model.scored(pixels)[2]
    assert np.mean(scores <= entry["threshold"]) == pytest.approx(1.0)  # ceil(0.95 * 8) = 8 kept
