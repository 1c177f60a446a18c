"""``--data DIR`` finds the manifest a Kaggle-style folder holds beside ``images/`` (issue 30 item 6),
and a file given where a folder is expected is named as a file (item 5). Torch-free: the data layer's
detection, ``data check`` and its one-line refusals."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from cnnzoo.cli import app
from cnnzoo.data import manifest
from cnnzoo.errors import DataError

from support.cli import one_error_line
from support.images import write_kaggle_layout

COUNTS = {"shirt": 5, "shoes": 5, "pants": 5}


def cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def kaggle(tmp_path):
    folder = tmp_path / "clothes"
    write_kaggle_layout(folder, COUNTS)
    return folder


def test_data_check_reads_the_manifest_beside_images(kaggle):
    result = cli("data", "check", "--data", kaggle, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert sorted(report["classes"]) == sorted(COUNTS)
    assert sum(report["counts"]["train"]) + sum(report["counts"]["validation"]) == 15
    # the folder and its manifest are one data set: the same report
    named = json.loads(cli("data", "check", "--data", kaggle / "images.csv", "--json").stdout)
    assert named["counts"] == report["counts"]


@pytest.mark.parametrize("name", ["labels.csv", "data.parquet", "rows.jsonl", "table.tsv"])
def test_every_manifest_kind_is_found(kaggle, name):
    (kaggle / "images.csv").rename(kaggle / name)  # found by its suffix; read as that kind later
    assert manifest.folder_manifest(kaggle) == kaggle / name


def test_several_manifests_are_named_with_how_to_pick_one(kaggle):
    shutil.copy(kaggle / "images.csv", kaggle / "labels.csv")
    line = one_error_line(cli("data", "check", "--data", kaggle))
    assert line == (
        f"cnnzoo: error: {kaggle}: 2 manifests beside images/ (images.csv, labels.csv); name the one to read, "
        f"e.g. --data {kaggle / 'images.csv'} (data.root)"
    )
    assert cli("data", "check", "--data", kaggle / "labels.csv").exit_code == 0


def test_a_train_manifest_and_its_split_siblings_are_one_data_set(kaggle):
    (kaggle / "images.csv").rename(kaggle / "train.csv")
    write_kaggle_layout(kaggle, {"shirt": 2, "shoes": 2, "pants": 2}, seed=1, name="validation.csv")
    assert manifest.folder_manifest(kaggle) == kaggle / "train.csv"
    report = json.loads(cli("data", "check", "--data", kaggle, "--json").stdout)
    assert sum(report["counts"]["validation"]) == 6


def test_a_kaggle_manifest_and_its_test_sibling_are_one_data_set(kaggle):
    """images.csv with test.csv beside images/ (the trial's layout): test.csv is the test split."""
    write_kaggle_layout(kaggle, {"shirt": 2, "shoes": 2, "pants": 2}, seed=1, name="test.csv")
    assert manifest.folder_manifest(kaggle) == kaggle / "images.csv"
    assert manifest.split_files(kaggle / "images.csv") == {"test": kaggle / "test.csv"}
    assert manifest.split_files(kaggle / "test.csv") == {}  # a split file has no siblings of its own
    report = json.loads(cli("data", "check", "--data", kaggle, "--json").stdout)
    assert sum(report["counts"]["test"]) == 6


def test_images_without_a_manifest_say_where_one_goes(tmp_path, kaggle):
    (kaggle / "images.csv").unlink()
    line = one_error_line(cli("data", "check", "--data", kaggle))
    assert "only one class folder (images)" in line
    assert f"put a manifest beside it (images.csv with image and label columns) and give --data {kaggle}" in line
    with pytest.raises(DataError, match="holding no manifest beside an images/ folder"):
        manifest.manifest_file(kaggle)


def test_a_folder_of_class_folders_is_not_taken_for_a_manifest(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "notes.csv").write_text("a,b\n")
    assert manifest.folder_manifest(tmp_path) is None  # no images/ folder: class folders, as before


def test_a_file_where_a_folder_is_expected_is_named_as_a_file(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not data")
    line = one_error_line(cli("data", "check", "--data", notes))
    assert f"data.root {notes}: a file, not a folder" in line and ".csv" in line
    assert "folder not found" not in line
