"""WebDataset shards: written from a source (``cnnzoo data shards``), found by folder, index or
brace pattern, streamed with the same number of steps on every process and worker, damaged
members skipped and named; two gloo processes training on them through the real launcher."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

import cnnzoo
from cnnzoo.config import load_config
from cnnzoo.data import shard_export, shard_files, shards
from cnnzoo.data.sources import load_data
from cnnzoo.errors import DataError

from support.cli import run_cnnzoo
from support.images import draw, make_image_tree
from support.runs import metric_rows, tiny_config

pytest.importorskip("webdataset")


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> Path:
    """34 training images in 7 shards of 5 (the last holds 4) and 11 validation images in 3."""
    base = tmp_path_factory.mktemp("shards")
    make_image_tree(base / "images", train={"a": 21, "b": 13}, validation={"a": 7, "b": 4})
    cfg = load_config({"data": {"root": str(base / "images"), "image_size": 16}})
    shard_export.write_source(cfg, base / "out", shard_size=5)
    return base / "out"


def spec_of(root, **data):
    raw = tiny_config(Path(root))
    raw["data"].update(data)
    return load_data(load_config(raw))


def streamed(spec, *, rank: int, world: int, workers: int, train: bool, batch: int = 4):
    settings = shards.StreamSettings(size=spec.image_size, channels=3, batch_size=batch, shard=(rank, world))
    stream = shards.ShardStream(spec.train if train else spec.val, spec.classes, settings, train=train)
    stream.set_epoch(3)
    loader = shards.StreamLoader(stream, workers=workers, pin_memory=False)
    return list(loader), len(loader), stream


def test_the_written_index_and_a_scan_of_the_tars_agree(shard_set, tmp_path):
    index = json.loads((shard_set / "dataset.json").read_text())
    assert index["classes"] == ["a", "b"]
    assert index["splits"]["train"]["counts"] == [5, 5, 5, 5, 5, 5, 4]
    assert index["splits"]["train"]["class_counts"] == [21, 13]
    copy = tmp_path / "copy"  # the same tars without dataset.json: counted from their .cls members
    for split in ("train", "validation"):
        (copy / split).mkdir(parents=True)
        for tar in (shard_set / split).iterdir():
            (copy / split / tar.name).write_bytes(tar.read_bytes())
    classes, found = shard_files.find_shards(str(copy))
    assert classes == ["0", "1"] and found["train"].class_counts == [21, 13] and found["validation"].counts == [5, 5, 1]
    pattern = str(copy / "train" / "train-{000000..000006}.tar")
    assert spec_of(pattern).train.shard_counts == [5, 5, 5, 5, 5, 5, 4]  # validation-... found beside it


@pytest.mark.parametrize("world, workers", [(2, 2), (3, 1), (2, 3)])
def test_every_process_takes_the_same_number_of_full_batches(shard_set, world, workers):
    """7 shards over 4, 3 and 6 readers (split by shard, by shard, and by sample): never divisible."""
    spec = spec_of(shard_set)
    runs = [streamed(spec, rank=r, world=world, workers=workers, train=True) for r in range(world)]
    steps = 34 // (world * 4)
    assert [len(batches) for batches, _, _ in runs] == [steps] * world  # DDP hangs when these differ
    assert [length for _, length, _ in runs] == [steps] * world
    assert all(images.shape == (4, 3, 16, 16) and images.dtype == torch.uint8 for b, _, _ in runs for images, _ in b)


@pytest.mark.parametrize("world, workers", [(1, 0), (2, 2), (3, 1)])
def test_validation_reads_every_sample_once(shard_set, world, workers):
    spec = spec_of(shard_set)
    labels = []
    for rank in range(world):
        batches, length, _ = streamed(spec, rank=rank, world=world, workers=workers, train=False)
        assert len(batches) == length
        labels += [int(v) for _, y in batches for v in y]
    assert sorted(labels) == [0] * 7 + [1] * 4


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def png(kind: str, seed: int) -> bytes:
    buffer = io.BytesIO()
    draw(kind, seed).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_corrupt_member_and_a_broken_off_shard_are_skipped_and_named(tmp_path, capsys):
    for split in ("train", "validation"):
        (tmp_path / split).mkdir()
    good = [(f"k{i}.png", png("a" if i % 2 else "b", i)) for i in range(4)]
    labels = [(f"k{i}.txt", b"a" if i % 2 else b"b") for i in range(4)]
    members = [m for pair in zip(good, labels) for m in pair]
    write_tar(
        tmp_path / "train" / "t0.tar", members[:4] + [("bad.jpg", b"not a jpeg"), ("bad.txt", b"a")] + members[4:]
    )
    write_tar(tmp_path / "validation" / "v0.tar", members)
    whole = (tmp_path / "validation" / "v0.tar").read_bytes()
    write_tar(tmp_path / "train" / "t1.tar", members)
    (tmp_path / "train" / "t1.tar").write_bytes(whole[: len(whole) // 2 + 100])  # cut in the middle of a member
    spec = spec_of(tmp_path)
    assert spec.classes == ["a", "b"]
    capsys.readouterr()
    batches, _, _ = streamed(spec, rank=0, world=1, workers=0, train=False, batch=64)
    assert sum(len(y) for _, y in batches) == 4  # validation's four
    settings = shards.StreamSettings(size=(16, 16), channels=3, batch_size=2)
    stream = shards.ShardStream(spec.train, spec.classes, settings, train=False)
    got = sum(len(y) for _, y in shards.StreamLoader(stream, workers=0, pin_memory=False))
    err = capsys.readouterr().err
    assert f"skipped {tmp_path / 'train' / 't0.tar'}: bad.jpg" in err and "UnidentifiedImageError" in err
    assert f"skipped the rest of shard {tmp_path / 'train' / 't1.tar'}: it is damaged" in err
    assert 4 <= got < 8  # t0's four good ones, and what t1 held before the cut


def test_without_webdataset_a_shard_source_is_one_line(shard_set, monkeypatch):
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(DataError, match=r"need the webdataset library: pip install 'cnnzoo\[wds\]'"):
        shard_files.find_shards(str(shard_set / "train" / "train-{000000..000001}.tar"))


def test_writing_into_a_folder_that_holds_files_is_refused(shard_set, image_root):
    cfg = load_config({"data": {"root": str(image_root), "image_size": 16}})
    with pytest.raises(DataError, match="already exists and is not empty"):
        shard_export.write_source(cfg, shard_set)


@pytest.mark.slow
def test_two_gloo_processes_train_on_shards_that_do_not_divide(shard_set, tmp_path):
    """Batch 3 on 2 processes: 34 // 6 = 5 steps each from 7 shards (4 readers with 2 workers);
    a process that ran short would leave the other waiting until ddp_timeout ended the job."""
    raw = tiny_config(shard_set, batch_size=3)
    raw["data"].update({"workers": 2, "cache": "auto", "augment": {"random_resized_crop": [0.5, 1.0], "hflip": True}})
    raw["train"]["ddp_timeout"] = 60
    del raw["data"]["cache"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    done = run_cnnzoo(["train", "-c", "c.yaml", "--nproc", "2", "--runs", "runs"], tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "streamed (data.cache: auto -> none)" in done.stdout
    assert "5 steps of 3 per epoch on each of 2 processes" in done.stdout
    run = tmp_path / "runs" / "tiny" / "1"
    rows = metric_rows(run)
    report = cnnzoo.evaluate(run / "last.pt", split="validation", progress=False)
    assert report["num_images"] == 11
    assert report["accuracy"] == pytest.approx(float(rows[-1]["val_acc"]), abs=1e-6)


def test_data_check_reads_every_member_of_the_shards(shard_set):
    from cnnzoo.data.check import check_data

    report = check_data(load_config({"data": {"root": str(shard_set), "image_size": 16}}))
    assert report["counts"] == {"train": [21, 13], "validation": [7, 4]}
    assert report["unreadable"] == [] and report["sizes"]["distinct"] == 1
