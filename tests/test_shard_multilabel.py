"""Multi-label WebDataset shards: label sets as other tools write them (a ``.json`` list, an object
with ``labels``, a ``.cls`` of several numbers) read without a ``dataset.json``, streamed as
multi-hot batches, bad label members skipped and named in one line each, and (slow) a set written
by ``cnnzoo data shards`` from a multi-label manifest trained and evaluated with mAP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cnnzoo.config import load_config
from cnnzoo.data import shards
from cnnzoo.data.shapes import write_multi_label_shapes
from cnnzoo.data.sources import load_data
from cnnzoo.errors import DataError

from support.cli import one_error_line, run_cnnzoo
from support.runs import metric_rows, tiny_config
from support.shard_sets import change_index, png, write_shard_set, write_tar

pytest.importorskip("webdataset")

CLASSES = ["cat", "dog", "fox"]


def label_sets(n: int, start: int = 0) -> list[list[int]]:
    return [[c for c in range(3) if (i >> c) & 1] for i in range(start, start + n)]  # every subset, the empty one too


def multi_label_set(root: Path, how: str) -> Path:
    """Train 16 and validation 8 samples whose label members state sets as ``how`` says."""
    for split, n, start in (("train", 16, 0), ("validation", 8, 16)):
        members = []
        for i, numbers in enumerate(label_sets(n, start), start):
            if how == "json list":
                label = ("json", json.dumps([CLASSES[c] for c in numbers]).encode())
            elif how == "json labels":
                label = ("json", json.dumps({"labels": numbers}).encode())
            else:  # an empty .cls is no label: an image of none of the classes says [] in a .json
                label = ("cls", " ".join(map(str, numbers)).encode()) if numbers else ("json", b"[]")
            members += [(f"s{i:04d}.png", png("ab"[i % 2], i)), (f"s{i:04d}.{label[0]}", label[1])]
        write_tar(root / split / f"{split}-000000.tar", members)
    return root


def spec_of(root: Path, **data):
    raw = tiny_config(root)
    raw["data"].update(data)
    return load_data(load_config(raw))


@pytest.mark.parametrize("how", ["json list", "json labels", "cls numbers"])
def test_label_sets_as_other_tools_write_them_are_read_without_an_index(tmp_path, how):
    spec = spec_of(multi_label_set(tmp_path, how))
    assert spec.multi_label and len(spec.train) == 16 and len(spec.val) == 8
    by_name = how == "json list"
    assert spec.classes == (sorted(CLASSES) if by_name else ["0", "1", "2"])
    settings = shards.StreamSettings(size=(16, 16), channels=3, batch_size=64)
    batches = list(shards.ShardStream(spec.val, spec.classes, settings, train=False))
    targets = batches[0][1]
    assert targets.shape == (8, 3) and targets.dtype.is_floating_point
    order = [spec.classes.index(c) for c in CLASSES] if by_name else [0, 1, 2]
    expected = [[1.0 if c in numbers else 0.0 for c in range(3)] for numbers in label_sets(8, 16)]
    assert targets[:, order].tolist() == expected  # validation streams in order: every set, as written
    assert spec.train.class_counts == [8, 8, 8]  # type: ignore[attr-defined]


def test_a_stream_of_label_sets_takes_equal_full_batches_on_every_process(tmp_path):
    spec = spec_of(multi_label_set(tmp_path, "json labels"))
    for rank in range(2):
        settings = shards.StreamSettings(size=(16, 16), channels=3, batch_size=3, shard=(rank, 2))
        batches = list(shards.ShardStream(spec.train, spec.classes, settings, train=True))
        assert len(batches) == 16 // (2 * 3) and all(y.shape == (3, 3) for _, y in batches)


@pytest.mark.parametrize(
    ("member", "said"),
    [
        (b"[0, 0]", "names a class twice"),
        (b'["cat\\n"]', "is not a class number"),
        (b"[0, true]", "true is not a class number"),
        (b'{"labels": 3}', "is not a list of classes"),
    ],
)
def test_a_bad_label_set_is_skipped_and_named_with_its_shard_and_member(tmp_path, capsys, member, said):
    root = multi_label_set(tmp_path, "json labels")
    shard = root / "validation" / "validation-000000.tar"
    write_tar(shard, [("bad.png", png("a", 99)), ("bad.json", member), ("ok.png", png("b", 98)), ("ok.json", b"[1]")])
    spec = spec_of(root)
    settings = shards.StreamSettings(size=(16, 16), channels=3, batch_size=4)
    stream = shards.ShardStream(spec.val, spec.classes, settings, train=False)
    got = [y for _, y in shards.StreamLoader(stream, workers=0, pin_memory=False)]
    assert sum(len(y) for y in got) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if "bad.png" in line or "bad." in line]
    assert len(lines) == 1 and str(shard) in lines[0] and said in lines[0], lines


def test_data_check_lists_a_bad_label_set_and_the_index_flag_is_checked(tmp_path):
    root = multi_label_set(tmp_path, "json labels")
    shard = root / "train" / "train-000000.tar"
    write_tar(shard, [("bad.png", png("a", 99)), ("bad.json", b"[2, 2]")] + [("ok.png", png("b", 1))])
    write_tar(root / "train" / "train-000001.tar", [("g.png", png("b", 1)), ("g.json", b"[0, 1, 2]")])
    done = run_cnnzoo(["data", "check", "--data", root, "--json"], tmp_path)
    report = json.loads(done.stdout)
    assert done.returncode == 1 and report["task"] == "multi"
    assert [u["file"] for u in report["unreadable"]][:1] == [f"{shard}: bad"]
    assert "names a class twice" in report["unreadable"][0]["reason"]
    assert report["unreadable"][1] == {"file": f"{shard}: ok", "reason": "no label member (.cls, .txt or .json)"}
    single = write_shard_set(tmp_path / "single")
    change_index(single, lambda index: index.update(multi_label="yes"))
    line = one_error_line(run_cnnzoo(["data", "check", "--data", single], tmp_path))
    assert "dataset.json: multi_label should be true or false" in line


def test_a_label_set_naming_a_class_training_lacks_is_one_line_naming_the_shard(tmp_path):
    root = multi_label_set(tmp_path, "json labels")
    shard = root / "validation" / "validation-000000.tar"
    write_tar(shard, [("odd.png", png("a", 99)), ("odd.json", b"[0, 7]")])
    line = one_error_line(run_cnnzoo(["data", "check", "--data", root], tmp_path))
    assert str(shard) in line and "label 7 is not one of the training classes" in line


def test_train_task_single_on_label_sets_is_one_line(tmp_path):
    root = multi_label_set(tmp_path, "json labels")
    with pytest.raises(DataError, match="carry label sets .multi-label., but train.task is single"):
        load_data(load_config(tiny_config(root)), task="single")


@pytest.mark.slow
def test_multi_label_shards_written_by_data_shards_train_and_evaluate_with_map(tmp_path):
    manifest = write_multi_label_shapes(tmp_path / "data", {"train": 96, "validation": 32}, size=16)
    done = run_cnnzoo(["data", "shards", manifest, tmp_path / "shards", "--shard-size", "24"], tmp_path)
    assert done.returncode == 0, done.stderr
    raw = tiny_config(tmp_path / "shards")
    raw["data"].pop("cache")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    trained = run_cnnzoo(["train", "-c", "c.yaml", "--runs", "runs"], tmp_path, timeout=600)
    assert trained.returncode == 0, trained.stderr
    assert "best val_map" in trained.stdout
    scored = run_cnnzoo(["evaluate", "runs/latest", "--data", tmp_path / "shards"], tmp_path, timeout=600)
    assert scored.returncode == 0, scored.stderr
    report = json.loads((tmp_path / "runs" / "latest" / "eval.json").read_text())
    rows = metric_rows(tmp_path / "runs" / "latest")
    assert report["num_images"] == 32 and report["task"] == "multi"
    # every validation sample once, as training scored it at the epoch best.pt holds
    assert report["map"] == pytest.approx(float(rows[report["epoch"] - 1]["val_map"]), abs=1e-6)
