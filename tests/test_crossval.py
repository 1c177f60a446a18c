"""k-fold cross-validation (``train --folds K``, issue #31): fold i of K as the split (data.folds,
data.fold), the fold runs, cv.json, oof.csv, the final model, evaluate of a fold's model, the
feature cache shared by the folds, and the options it refuses in one line."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cnnzoo.cli import app
from cnnzoo.config import load_config
from cnnzoo.data import sources
from cnnzoo.errors import ConfigError, DataError
from cnnzoo.training.run import train

from support.cli import one_error_line, run_script
from support.images import make_image_tree
from support.runs import tiny_config


def _tree(base: Path) -> Path:
    """12 + 4 images of a and b, and a test split that must stay out of the folds."""
    return make_image_tree(base / "images", test={"a": 3, "b": 3})


def _oof(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "oof.csv", newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- the split


def test_fold_i_of_k_holds_out_each_image_once_and_leaves_the_test_split_out(tmp_path):
    root = _tree(tmp_path)
    held = []
    for fold in (1, 2, 3):
        cfg = load_config(tiny_config(root), ["data.folds=3", f"data.fold={fold}"])
        spec = sources.load_data(cfg)
        assert len(spec.train) + len(spec.val) == 32 and len(spec.test) == 6
        assert not set(spec.train.files()) & set(spec.val.files())
        assert sorted(spec.val.labels).count(0) in (5, 6)  # stratified: a third of each class's 16
        assert spec.split_rule["folds"] == 3 and spec.split_rule["fold"] == fold
        held += spec.val.files()
    assert len(held) == len(set(held)) == 32
    assert not set(held) & set(spec.test.files())
    whole = sources.load_data(load_config(tiny_config(root), ["data.folds=3", "data.fold=all"]))
    assert sorted(whole.train.files()) == sorted(whole.val.files()) == sorted(held)


@pytest.mark.parametrize(
    ("sets", "words"),
    [
        (["data.folds=3", "data.fold=4"], "data.fold: got 4, but data.folds is 3"),
        (["data.folds=1", "data.fold=1"], "data.folds: got 1"),
        (["data.folds=3", "data.fold=0"], "data.fold: got 0"),
    ],
)
def test_fold_keys_are_checked_with_the_config(tmp_path, sets, words):
    with pytest.raises(ConfigError, match=words):
        load_config(tiny_config(tmp_path), sets)


@pytest.mark.parametrize(
    ("sets", "words"),
    [(["data.fold=2"], "data.fold: is set without data.folds"), (["data.folds=3"], "data.folds: is set without")],
)
def test_one_fold_key_without_the_other_is_refused_with_the_data(tmp_path, sets, words):
    with pytest.raises(DataError, match=words):
        sources.load_data(load_config(tiny_config(_tree(tmp_path)), sets))


def test_more_folds_than_a_class_has_images_is_one_line_naming_the_class(tmp_path):
    root = make_image_tree(tmp_path / "images", train={"a": 12, "b": 3}, validation={"a": 4, "b": 1})
    with pytest.raises(DataError, match="data.folds 5: class 'b' has only 4 images"):
        sources.load_data(load_config(tiny_config(root), ["data.folds=5", "data.fold=1"]))


# ----------------------------------------------------------------------------- refusals


def _cli(args: list, tmp_path: Path, **env: str):
    config = tmp_path / "tiny.yaml"
    if not config.exists():
        config.write_text(yaml.safe_dump(tiny_config(_tree(tmp_path))))
    return CliRunner().invoke(app, [str(a) for a in args], env=env or None)


@pytest.mark.parametrize(
    ("extra", "env", "words"),
    [
        (["--folds", "1"], {}, "--folds 1: k-fold needs at least 2 folds"),
        (["--folds", "3", "--resume", "runs/x/1/last.pt"], {}, "--folds: a k-fold run cannot be resumed"),
        (["--folds", "3", "--nproc", "2"], {}, "--folds: k-fold trains one process at a time"),
        (["--folds", "3"], {"WORLD_SIZE": "2"}, "--folds: k-fold trains one process at a time"),
        (["--no-final"], {}, "--no-final: goes with --folds K"),
        (["--folds", "17"], {}, "--folds 17: class 'a' has only 16 images"),
        (["--folds", "3", "--set", "data.folds=3", "--set", "data.fold=1"], {}, "the config already picks fold 1 of 3"),
    ],
)
def test_train_refuses_what_folds_does_not_go_with_in_one_line(tmp_path, extra, env, words):
    line = one_error_line(
        _cli(["train", "-c", tmp_path / "tiny.yaml", "--runs", tmp_path / "runs", *extra], tmp_path, **env)
    )
    assert words in line
    assert not (tmp_path / "runs").exists()


def test_sweep_refuses_folds_in_one_line(tmp_path):
    line = one_error_line(
        _cli(["sweep", "-c", tmp_path / "tiny.yaml", "--grid", "train.lr=0.1,0.01", "--folds", "3"], tmp_path)
    )
    assert "a sweep compares its trials on one validation split" in line


def test_shards_cannot_be_pooled_into_folds():
    shard = sources.ShardSamples(name="train", labels=[0], shards=["x.tar"], shard_counts=[1])
    with pytest.raises(DataError, match="data.folds: WebDataset shards are streamed"):
        shard.joined(shard, "labelled")


# ----------------------------------------------------------------------------- a k-fold run


@pytest.fixture(scope="module")
def kfold(tmp_path_factory) -> Path:
    """``train(..., folds=3)`` of the tiny network for one epoch, with the final model."""
    base = tmp_path_factory.mktemp("kfold")
    root = _tree(base)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNZOO_HOME", str(base / "home"))
        mp.chdir(base)
        return Path(train(tiny_config(root, epochs=1), out=base / "runs", quiet=True, folds=3))


def test_a_kfold_run_writes_each_fold_as_a_run_and_the_final_model(kfold):
    for fold in (1, 2, 3):
        folder = kfold / f"fold-{fold}"
        assert {"config.yaml", "metrics.csv", "best.pt", "last.pt"} <= {p.name for p in folder.iterdir()}
        saved = yaml.safe_load((folder / "config.yaml").read_text())["data"]
        assert (saved["folds"], saved["fold"]) == (3, fold)
    assert (kfold / "best.pt").is_file()
    assert yaml.safe_load((kfold / "config.yaml").read_text())["data"]["fold"] == "all"
    assert (kfold.parent.parent / "latest").resolve() == kfold.resolve()


def test_cv_json_holds_each_metric_mean_std_and_the_folds_best_epochs(kfold):
    cv = json.loads((kfold / "cv.json").read_text())
    assert cv["folds"] == 3 and cv["images"] == 32 and cv["runs"] == ["fold-1", "fold-2", "fold-3"]
    for name in ("val_acc", "val_loss"):
        values = cv["metrics"][name]["per_fold"]
        assert len(values) == 3
        assert cv["metrics"][name]["mean"] == pytest.approx(np.mean(values))
        assert cv["metrics"][name]["std"] == pytest.approx(np.std(values, ddof=1))
    for fold, acc in enumerate(cv["metrics"]["val_acc"]["per_fold"], 1):
        with open(kfold / f"fold-{fold}" / "metrics.csv", newline="") as f:
            assert float(next(csv.DictReader(f))["val_acc"]) == pytest.approx(acc, abs=1e-6)


def test_oof_csv_has_every_labelled_image_once_with_probabilities_from_its_own_fold(kfold):
    rows = _oof(kfold)
    images = [r["image"] for r in rows]
    assert len(images) == len(set(images)) == 32
    assert not any("/test/" in image for image in images)
    assert list(rows[0])[:3] == ["image", "label", "fold"] and list(rows[0])[3:] == ["a", "b"]
    for row in rows:
        assert float(row["a"]) + float(row["b"]) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == Path(row["image"]).parent.name
    for fold in (1, 2, 3):
        spec = sources.load_data(load_config(kfold / f"fold-{fold}" / "config.yaml"))
        assert sorted(spec.val.files()) == sorted(r["image"] for r in rows if r["fold"] == str(fold))


def test_evaluate_of_a_folds_model_scores_its_held_out_images(kfold):
    rows = [r for r in _oof(kfold) if r["fold"] == "2"]
    result = CliRunner().invoke(app, ["evaluate", str(kfold / "fold-2" / "best.pt"), "--split", "validation", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["num_images"] == len(rows)
    agreeing = [max(("a", "b"), key=lambda c: float(r[c])) == r["label"] for r in rows]
    assert report["accuracy"] == pytest.approx(np.mean(agreeing))


@pytest.mark.slow
def test_no_final_leaves_the_folds_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = make_image_tree(tmp_path / "images", train={"a": 4, "b": 4}, validation={"a": 2, "b": 2})
    run_dir = Path(train(tiny_config(root, epochs=1), out=tmp_path / "runs", quiet=True, folds=2, final=False))
    assert sorted(p.name for p in run_dir.iterdir()) == ["cv.json", "fold-1", "fold-2", "oof.csv"]
    assert not os.path.lexists(tmp_path / "runs" / "latest")
    assert len(_oof(run_dir)) == 12


@pytest.mark.slow
def test_the_folds_of_a_transfer_config_share_one_feature_cache(tmp_path, isolated_home, monkeypatch, capsys):
    import torch
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(make_image_tree(tmp_path / "images"), epochs=1)
    cfg["model"]["layers"] = [{"backbone": {"name": "resnet18", "weights": str(weights)}}, "gap", {"dense": {}}]
    cfg["model"]["layers"][-1]["dense"] = {"out_features": "num_classes"}
    cfg["data"].update(image_size=32, feature_cache="disk")
    train(cfg, out=tmp_path / "runs", folds=3)
    log = capsys.readouterr().out
    files = sorted(p.name.split("-")[1] for p in (isolated_home / "cache").glob("features-*.npy"))
    assert files == ["train"]  # one cache of the pooled images for 3 folds and the final model
    computed = [line for line in log.splitlines() if line.startswith("feature cache train") and "img/s" in line]
    reused = [line for line in log.splitlines() if line.startswith("feature cache train") and "reused" in line]
    assert len(computed) == 1 and len(reused) == 3
    assert log.count("feature cache validation: the training store's unflipped version") == 4
    assert (
        log.count("cache labelled: 32 images decoded") == 1
        and log.count("cache labelled: 32 images, 0 MB, reused") == 3
    )


@pytest.mark.slow
def test_bench_folds_prints_the_cost_ratio_and_the_fold_spread(image_root, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(image_root, epochs=1)))
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_folds.py"
    args = [script, "--config", config, "--data", image_root, "--per-class", 9, "--folds", 3]
    out = run_script(args, tmp_path)
    assert "images: 18 (2 classes, up to 9 each)" in out
    assert "ratio k-fold / (3 x one cold run):" in out
    assert "val_acc per fold:" in out and "binomial standard error" in out


@pytest.mark.slow
def test_a_folds_training_on_the_shared_feature_cache_is_the_training_on_images(tmp_path, monkeypatch):
    """The fold's rows index the pool's store rightly: cached and uncached training agree."""
    import torch
    import torchvision

    from support.runs import metric_rows

    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    monkeypatch.chdir(tmp_path)
    root = make_image_tree(tmp_path / "images")

    def run(feature_cache: str) -> Path:
        cfg = tiny_config(root, epochs=2)
        backbone = {"name": "resnet18", "weights": str(weights), "freeze": 1}
        cfg["model"]["layers"] = [{"backbone": backbone}, "gap", {"dense": {"out_features": "num_classes"}}]
        cfg["data"].update(image_size=32, feature_cache=feature_cache, folds=3, fold=2)
        return train(cfg, out=tmp_path / feature_cache, quiet=True)

    for a, b in zip(metric_rows(run("ram")), metric_rows(run("none"))):
        assert a["train_acc"] == b["train_acc"] and a["val_acc"] == b["val_acc"]
        for key in ("train_loss", "val_loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-4)


@pytest.mark.slow
def test_a_multi_label_kfold_run_stratifies_by_labels_and_writes_per_label_probabilities(tmp_path, monkeypatch):
    from test_multilabel import write_tags

    monkeypatch.chdir(tmp_path)
    tags = ["a", "a b", "b", "a b", "a", "", "a b", "a"] * 3
    run_dir = Path(
        train(tiny_config(write_tags(tmp_path, tags), epochs=1), out=tmp_path / "runs", folds=3, final=False)
    )
    rows = _oof(run_dir)
    assert len(rows) == 24 and len({r["image"] for r in rows}) == 24
    for fold in ("1", "2", "3"):  # every label in every fold, in its share
        held = [r for r in rows if r["fold"] == fold]
        assert [sum(label in r["label"].split() for r in held) for label in ("a", "b")] in (
            [5, 3],
            [5, 4],
            [6, 3],
            [6, 4],
        )
    probabilities = [float(r[c]) for r in rows for c in ("a", "b")]
    assert all(0 < p < 1 for p in probabilities)
    assert any(abs(float(r["a"]) + float(r["b"]) - 1) > 1e-3 for r in rows)  # per label, not a softmax
    assert "val_map" in json.loads((run_dir / "cv.json").read_text())["metrics"]
