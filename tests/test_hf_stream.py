"""Streamed Hugging Face datasets (``data.stream``) and label sets (``Sequence(ClassLabel)``):
datasets written in the test with ``save_to_disk`` (nothing from the Hub). The stream hands out the
non-streamed path's images per epoch, equal full batches on every process, resumes from its own
state, ``auto`` streams past the cache budget; (slow) single- and multi-label runs train, also on
two processes through torchrun."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from cnnzoo.config import load_config
from cnnzoo.data import cache, hf_stream, shards
from cnnzoo.data.loaders import ImageDataset
from cnnzoo.data.sources import build_loaders, load_data
from cnnzoo.errors import DataError

from support.cli import invoke_cnnzoo, one_error_line, run_cnnzoo
from support.images import draw
from support.runs import metric_rows, tiny_config

datasets = pytest.importorskip("datasets")

NAMES = ["disc", "bar", "dot"]


def tagged(n: int, seed: int, *, multi: bool):
    """``n`` pictures with a ``ClassLabel`` (disc, bar) or a ``Sequence(ClassLabel)`` of label sets."""
    label = datasets.Sequence(datasets.ClassLabel(names=NAMES)) if multi else datasets.ClassLabel(names=NAMES[:2])
    features = datasets.Features({"img": datasets.Image(), "tags": label})
    sets = [[i % 2] + ([2] if i % 3 == 0 else []) if i % 7 else [] for i in range(n)]
    return datasets.Dataset.from_dict(
        {
            "img": [draw("a" if i % 2 == 0 else "b", seed * 1000 + i, size=16) for i in range(n)],
            "tags": sets if multi else [i % 2 for i in range(n)],
        },
        features=features,
    )


def saved(tmp_path, *, multi: bool = False, train: int = 40, validation: int = 12):
    folder = tmp_path / ("multi" if multi else "single")
    parts = {"train": tagged(train, 1, multi=multi), "validation": tagged(validation, 2, multi=multi)}
    datasets.DatasetDict(parts).save_to_disk(str(folder))
    return folder


def config(root, **data):
    raw = tiny_config(root)
    raw["data"].update({"cache": "auto", **data})
    return load_config(raw)


def stream_of(spec, *, train: bool, rank: int = 0, world: int = 1, batch: int = 4):
    settings = shards.StreamSettings(size=spec.image_size, channels=3, batch_size=batch, shard=(rank, world))
    return hf_stream.HFStream(spec.train if train else spec.val, spec.classes, settings, train=train)


@pytest.mark.parametrize("multi", [False, True], ids=["one label", "label sets"])
def test_an_epoch_hands_out_the_non_streamed_paths_images_and_labels(tmp_path, multi):
    spec = load_data(config(saved(tmp_path, multi=multi)))
    assert spec.multi_label is multi
    train = stream_of(spec, train=True, batch=8)
    assert train.steps() == len(spec.train) // 8 == 5  # the cached path's full batches of 40 images
    val = list(stream_of(spec, train=False, batch=64))
    cached = ImageDataset(spec.val, spec.image_size, 3, multi_label_classes=3 if multi else None)
    images, targets = cached.__getitems__([(i, 0) for i in range(len(cached))])[:2]
    assert torch.equal(val[0][0], images) and torch.equal(val[0][1], targets)  # in order, the same pixels


def test_the_state_round_trip_resumes_at_the_next_unseen_batch(tmp_path):
    spec = load_data(config(saved(tmp_path)))
    whole = stream_of(spec, train=True)
    whole.set_epoch(2)
    expected = list(whole)
    first = stream_of(spec, train=True)
    first.set_epoch(2)
    taken = []
    for batch in first:
        taken.append(batch)
        if len(taken) == 3:
            break
    state = first.state_dict()
    assert state["epoch"] == 2 and state["batches"] == 3  # plain ints: a checkpoint read with weights_only holds them
    assert all(type(value) is int for value in state.values())
    again = stream_of(spec, train=True)
    again.set_epoch(2)
    again.load_state_dict(state)
    rest = list(again)
    assert len(taken) + len(rest) == len(expected) == 10
    for (x, y), (ex, ey) in zip(taken + rest, expected):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    with pytest.raises(DataError, match="saved state is not valid"):
        again.load_state_dict({"epoch": 2, "samples": 12, "batches": "3"})


@pytest.mark.parametrize("workers", [0, 2])
def test_every_process_takes_the_same_number_of_full_batches(tmp_path, workers):
    spec = load_data(config(saved(tmp_path, train=37)))
    lengths = []
    for rank in range(2):
        stream = stream_of(spec, train=True, rank=rank, world=2, batch=3)
        loader = shards.StreamLoader(stream, workers=workers, pin_memory=False)
        batches = list(loader)
        assert all(len(y) == 3 for _, y in batches)
        lengths.append((len(batches), len(loader)))
    assert lengths == [(37 // 6, 37 // 6)] * 2  # DDP hangs when these differ
    seen = []
    for rank in range(2):
        seen += [y for _, y in stream_of(spec, train=False, rank=rank, world=2, batch=5)]
    assert sum(len(y) for y in seen) == 12  # validation: every image once over both processes


def test_auto_streams_past_the_cache_budget_and_says_so(tmp_path, monkeypatch, capsys):
    root = saved(tmp_path)
    spec = load_data(config(root))
    assert not hf_stream.streams(config(root), spec)  # a few KB: cached
    assert hf_stream.streams(config(root, stream=True), spec)
    assert hf_stream.streams(config(root, cache="none"), spec)
    monkeypatch.setattr(cache, "_available_memory", lambda: 1)  # a budget smaller than one image
    monkeypatch.setattr(cache, "_free_disk", lambda folder: 1)
    capsys.readouterr()
    loaders = build_loaders(config(root), spec, augment=None, cuda=False)
    assert isinstance(loaders.train_set, hf_stream.HFStream) and len(loaders.train) == 5
    assert "data.stream: auto -> streamed: the decoded cache" in capsys.readouterr().out
    assert not hf_stream.streams(config(root, stream=False), spec)


def test_bad_label_sets_and_a_bad_stream_setting_are_one_line(tmp_path):
    root = saved(tmp_path, multi=True)
    run = invoke_cnnzoo(["data", "check", "--data", root, "--set", "data.stream=sometimes"], tmp_path)
    assert "data.stream" in one_error_line(run)
    bad = tmp_path / "bad"
    dataset = tagged(6, 3, multi=True)
    rows = dataset.to_dict()
    rows["tags"][4] = [1, 1]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=dataset.features)}).save_to_disk(str(bad))
    line = one_error_line(invoke_cnnzoo(["data", "check", "--data", bad], tmp_path))
    assert f"{bad}: row 4 of the train split's label set 'tags' has a class twice" in line
    info = bad / "train" / "dataset_info.json"
    data = json.loads(info.read_text())
    data["features"]["tags"]["feature"]["names"] = ["a", "a"]
    info.write_text(json.dumps(data))
    line = one_error_line(invoke_cnnzoo(["data", "check", "--data", bad], tmp_path))
    assert "ClassLabel 'tags': names a more than once" in line


def train_cli(tmp_path, root, *args, **data):
    """``cnnzoo train`` of the tiny config on ``root`` in this process (its output is what is checked)."""
    raw = tiny_config(root)
    raw["data"].update(data)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    done = invoke_cnnzoo(["train", "-c", "c.yaml", "--runs", "runs", *args], tmp_path)
    assert done.exit_code == 0, f"{done.output}\n{done.exception!r}"
    return done


@pytest.mark.slow
@pytest.mark.parametrize("multi", [False, True], ids=["one label", "label sets"])
def test_a_streamed_dataset_trains_as_many_images_per_epoch_as_the_cached_one(tmp_path, multi):
    root = saved(tmp_path, multi=multi)
    streamed = train_cli(tmp_path, root, stream=True)
    assert "streamed (data.stream): decoded in 0 loader workers each epoch, 5 steps of 8 per epoch" in streamed.stdout
    cached = train_cli(tmp_path, root, stream=False)
    assert "streamed" not in cached.stdout
    key = "val_map" if multi else "val_acc"
    for run in ("1", "2"):
        rows = metric_rows(tmp_path / "runs" / "tiny" / run)
        assert len(rows) == 2 and all(0 <= float(r[key]) <= 1 for r in rows)
    # the non-streamed path's epoch: the same 40 images in batches of 8
    spec = load_data(config(root, stream=False))
    assert len(build_loaders(config(root, stream=False), spec, augment=None, cuda=False).train) == 5


@pytest.mark.slow
def test_two_processes_through_torchrun_take_equal_steps_on_a_streamed_dataset(tmp_path):
    root = saved(tmp_path, train=37)
    raw = tiny_config(root, batch_size=3, ddp_timeout=60)
    raw["data"].update({"stream": True, "workers": 1})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    done = run_cnnzoo(["train", "-c", "c.yaml", "--nproc", "2", "--runs", "runs"], tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "6 steps of 3 per epoch on each of 2 processes" in done.stdout
    assert len(metric_rows(tmp_path / "runs" / "tiny" / "1")) == 2


def test_a_row_whose_image_cannot_be_read_is_skipped_and_named_in_one_line(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    root = tmp_path / "pq"
    root.mkdir()
    draw("a", 5, size=16).save(root / "beside.png")
    pq.write_table(tagged(40, 1, multi=False).data.table, root / "train.parquet")
    table = tagged(12, 2, multi=False).data.table
    images = table.column("img").to_pylist()
    images[3] = {"bytes": None, "path": "missing.png"}  # a local file that is not there: skipped
    images[5] = {"bytes": None, "path": "beside.png"}  # one beside the dataset: read
    column = pa.array(images, type=table.schema.field("img").type)
    pq.write_table(table.set_column(0, "img", column), root / "validation.parquet")
    spec = load_data(config(root))
    capsys.readouterr()
    got = [y for _, y in shards.StreamLoader(stream_of(spec, train=False, batch=4), workers=0, pin_memory=False)]
    assert sum(len(y) for y in got) == 11
    lines = [line for line in capsys.readouterr().err.splitlines() if "missing.png" in line]
    assert len(lines) == 1 and "validation rows" in lines[0] and "row 3" in lines[0], lines
    assert "FileNotFoundError" in lines[0]
