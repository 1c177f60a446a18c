"""``cnnzoo data check``: images per class and split, missing, unreadable and duplicate files,
sizes, imbalance and classes missing from a split, for class folders and manifests."""

from __future__ import annotations

import json
import shutil

from cnnzoo.config import load_config
from cnnzoo.data.check import check_data, format_check, problems

from support.cli import one_error_line, run_cnnzoo
from support.images import make_image_tree, write_kaggle_layout


def folder_config(root) -> object:
    return load_config({"data": {"root": str(root), "image_size": 16}})


def test_a_folder_with_every_kind_of_problem_is_reported(tmp_path):
    root = make_image_tree(tmp_path / "d", train={"a": 6, "b": 3, "c": 2}, validation={"a": 2, "b": 2})
    leaked = root / "validation" / "a" / "leak.png"
    shutil.copy(root / "train" / "b" / "b_000.png", leaked)  # the same picture in both splits
    (root / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    report = check_data(folder_config(root))
    assert report["classes"] == ["a", "b", "c"]
    assert report["counts"] == {"train": [7, 3, 2], "validation": [3, 2, 0]}
    assert [u["file"] for u in report["unreadable"]] == [str(root / "train" / "a" / "broken.png")]
    assert report["duplicates"] == [
        {"files": [str(root / "train" / "b" / "b_000.png"), str(leaked)], "splits": ["train", "validation"]}
    ]
    assert report["one_split_only"] == {"c": ["train"]}
    assert report["imbalance"] == 3.5 and report["sizes"]["median"] == [24, 24]
    assert problems(report) == 1
    text = format_check(report)
    assert "duplicates (same bytes): 1 group(s), 1 across splits" in text and "c (only train)" in text
    assert "unreadable: 1 (" in text and "broken.png" in text


def test_a_manifest_with_missing_rows_names_them_and_exits_1(tmp_path):
    csv_path = write_kaggle_layout(tmp_path, {"x": 5, "y": 5})
    with open(csv_path, "a") as f:
        f.write("gone-1,1,x,False\ngone-2,1,y,False\n")
    result = run_cnnzoo(["data", "check", "--data", csv_path, "--json"], cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["missing"] == [f"{csv_path} row 12 (gone-1)", f"{csv_path} row 13 (gone-2)"]
    assert sum(map(sum, report["counts"].values())) == 10


def test_clean_data_exits_0_and_a_bare_call_is_one_line(image_root, tmp_path):
    result = run_cnnzoo(["data", "check", "--data", image_root], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "missing: none" in result.stdout and "duplicates (same bytes): none" in result.stdout
    assert "give a config" in one_error_line(run_cnnzoo(["data", "check"], cwd=tmp_path))
