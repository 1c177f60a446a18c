"""``cnnzoo data issues``: planted problems found and ranked, the files it writes, its refusals.

The ranking is tested on arrays (clusters with a planted wrong label, a twin, a far point) and
end to end on a tiny image tree with a randomly initialised ResNet-18 (``weights: null``: no
download) whose features still tell the pictures apart: a wrong label, a resized JPEG copy and
the same image in train and validation, each found.
"""

from __future__ import annotations

import csv
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cnnzoo.errors import ConfigError, DataError
from cnnzoo.training import issues as issues_mod
from cnnzoo.training.issue_features import PooledImages

from support.cli import one_error_line, run_cnnzoo, run_script
from support.images import make_image_tree


def _clusters(n_per_class: int = 30, classes: int = 3, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2, size=(classes, dim))
    labels = np.repeat(np.arange(classes), n_per_class)
    points = centres[labels] + rng.normal(0, 1, size=(len(labels), dim))
    versions = np.stack([points, points + rng.normal(0, 0.1, size=points.shape)], axis=1)  # "its flip"
    return versions.astype(np.float32), labels


def _pooled(features: np.ndarray, labels: np.ndarray, splits: list[str] | None = None) -> PooledImages:
    return PooledImages(
        classes=[f"c{i}" for i in range(labels.max() + 1)],
        names=[f"img{i}.png" for i in range(len(labels))],
        labels=labels,
        splits=splits or ["train"] * len(labels),
        samples=[],
        features=features,
        backbone="test",
    )


def test_a_planted_wrong_label_ranks_first_with_the_true_class_suggested():
    features, labels = _clusters()
    labels = labels.copy()
    features[7] = features[labels == 0].mean(0)  # a typical image of class 0 ...
    labels[7] = 2  # ... labelled c2
    report = issues_mod.rank_issues(_pooled(features, labels), folds=3)
    first = [issue for issue in report.issues if issue.kind == "label"][0]
    assert (first.image, first.given_label, first.suggested_label) == ("img7.png", "c2", "c0")
    assert report.probabilities.shape == (len(labels), 3)
    assert np.allclose(report.probabilities.sum(1), 1)


def test_twins_are_duplicates_in_one_split_and_leaks_across_two_and_a_far_point_is_an_outlier():
    features, labels = _clusters()
    features[40] = features[5] * 1.01  # a rescaled copy of image 5: one direction
    features[50] = features[20] + 0.001
    features[89] = 80.0  # far from every cluster
    splits = ["train"] * 60 + ["validation"] * 30
    splits[50] = "validation"
    report = issues_mod.rank_issues(_pooled(features, labels, splits), folds=3)
    found = {(i.kind, i.image, i.other_image) for i in report.issues if i.kind in ("duplicate", "leak")}
    assert ("duplicate", "img40.png", "img5.png") in found
    assert ("leak", "img50.png", "img20.png") in found
    outliers = [i.image for i in report.issues if i.kind == "outlier"]
    assert outliers[0] == "img89.png"
    kinds = [i.kind for i in report.issues]
    assert kinds == sorted(kinds, key=issues_mod.KINDS.index)  # rows grouped in the order of KINDS


def test_outliers_need_a_far_point_not_a_share():
    _, knn = issues_mod.neighbours(_clusters()[0], similarity=0.999)
    assert len(issues_mod.outliers(knn)) == 0  # a clean set of clusters has none


def test_folds_are_checked_before_any_head(tmp_path):
    features, labels = _clusters(n_per_class=3)
    with pytest.raises(DataError, match="class 'c0' has only 3 images"):
        issues_mod.rank_issues(_pooled(features, labels), folds=4)


def test_without_cleanlab_the_one_line_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cleanlab", None)  # import cleanlab now raises ImportError
    with pytest.raises(ConfigError) as caught:
        issues_mod.require_cleanlab()
    assert str(caught.value) == issues_mod.CLEANLAB_MISSING
    assert "pip install 'cnnzoo[cleanlab]'" in str(caught.value)


# ----------------------------------------------------------------------------- end to end

TINY = {
    "name": "tiny_issues",
    "seed": 0,
    "data": {"image_size": 32, "cache": "ram", "workers": 0},
    "model": {"layers": [{"backbone": {"name": "resnet18", "weights": None}}, "gap", {"dense": {"out_features": 3}}]},
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """Three classes; a wrong label, a resized JPEG copy and a train image copied into validation."""
    base = tmp_path_factory.mktemp("issues")
    root = make_image_tree(base / "data", train={"a": 12, "b": 12, "c": 12}, validation={"a": 4, "b": 4, "c": 4})
    image = Image.open(root / "train/a/a_005.png").convert("RGB")
    image.resize((48, 48), Image.BICUBIC).save(root / "train/a/copy_a_005.jpg", quality=85)
    shutil.copy(root / "train/b/b_004.png", root / "validation/b/leak_b_004.png")
    shutil.move(root / "train/a/a_007.png", root / "train/c/wrong_a_007.png")
    (base / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return base


@pytest.fixture(scope="module")
def found(planted) -> tuple[issues_mod.IssuesReport, list[dict]]:
    report = issues_mod.data_issues(planted / "tiny.yaml", str(planted / "data"), folds=3, out=planted / "out")
    with open(planted / "out" / "issues.csv", newline="") as fh:
        return report, list(csv.DictReader(fh))


def test_the_planted_problems_are_found_on_images(found):
    report, rows = found
    labels = [r for r in rows if r["kind"] == "label"]
    assert labels[0]["image"].endswith("train/c/wrong_a_007.png")
    assert (labels[0]["given_label"], labels[0]["suggested_label"]) == ("c", "a")
    duplicates = [r["image"] for r in rows if r["kind"] == "duplicate"]
    assert any(image.endswith("train/a/copy_a_005.jpg") for image in duplicates)
    leak = [i for i in report.issues if i.kind == "leak"]
    assert {Path(leak[0].image).name, Path(leak[0].other_image).name} == {"leak_b_004.png", "b_004.png"}
    assert report.images == 50


def test_issues_csv_has_exactly_the_columns_and_known_kinds(found, planted):
    _, rows = found
    header = (planted / "out" / "issues.csv").read_text().splitlines()[0]
    assert header == "image,kind,given_label,suggested_label,score"
    assert {r["kind"] for r in rows} <= {"label", "duplicate", "leak", "outlier"}
    assert all(0 <= float(r["score"]) <= 1.0001 for r in rows if r["kind"] != "outlier")


def test_issues_html_is_one_file_with_embedded_thumbnails(found, planted):
    page = (planted / "out" / "issues.html").read_text()
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert page.count('src="data:image/png;base64,') >= 4  # the wrong label, both twins of two pairs
    assert not re.search(r"(src|href)=\"(?!data:)", page)  # nothing fetched from anywhere
    assert "wrong_a_007.png" in page and "twin:" in page


def test_the_command_prints_the_top_rows_and_the_counts_and_repeats_the_python_api(planted, found, tmp_path):
    """A backbone without pretrained weights is drawn from the config's seed, so the command, in
    another process with its own cache home, finds exactly what :func:`data_issues` found."""
    done = run_cnnzoo(
        ["data", "issues", "-c", planted / "tiny.yaml", "--data", planted / "data", "--folds", "3", "--out", "o"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^label\s+\S+\s+c\s+a\s+\S*wrong_a_007.png$", done.stdout, re.M)
    assert re.search(r"50 images: \d+ label, 1 leak, \d+ duplicate, \d+ outlier", done.stdout)
    assert (tmp_path / "o" / "issues.html").is_file()
    assert (tmp_path / "o" / "issues.csv").read_text() == (planted / "out" / "issues.csv").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--folds", "1"], r"--folds 1: .*at least 2 folds"),
        (["--folds", "20"], r"--folds 20: class '\w' has only \d+ images"),
        (["--out", "afile"], r"--out afile: a file is there"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(planted, tmp_path, args, message):
    (tmp_path / "afile").write_text("x")
    done = run_cnnzoo(["data", "issues", "-c", planted / "tiny.yaml", "--data", planted / "data", *args], tmp_path)
    assert re.search(message, one_error_line(done))
    assert not (tmp_path / "issues").exists()


def test_a_config_without_a_backbone_is_refused_saying_to_use_a_transfer_config(planted, tmp_path):
    layers = [{"conv": {"out_channels": 4, "kernel_size": 3}}, "gap", {"dense": {"out_features": 3}}]
    cfg = {**TINY, "model": {"layers": layers}}
    (tmp_path / "scratch.yaml").write_text(yaml.safe_dump(cfg))
    done = run_cnnzoo(["data", "issues", "-c", "scratch.yaml", "--data", planted / "data", "--out", "o"], tmp_path)
    line = one_error_line(done)
    assert "no backbone layer" in line and "transfer config" in line


@pytest.mark.slow
def test_the_label_benchmark_prints_both_figures(planted, tmp_path):
    folder = make_image_tree(tmp_path / "set", train={"a": 12, "b": 12, "c": 12}, validation={"a": 4, "b": 4, "c": 4})
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_label_issues.py"
    args = ["--folder", folder, "--config", planted / "tiny.yaml", "--share", "0.1", "--folds", "3"]
    out = run_script([script, *args], tmp_path)
    assert "5 of the labels flipped" in out
    assert re.search(r"^data issues \(\d+ label rows.*recall@N \d+\.\d% \(\d/5\)", out, re.M)
    assert re.search(r"^baseline .*precision@N \d+\.\d% \(\d/5\), recall@N", out, re.M)
