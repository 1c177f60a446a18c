"""Reading WebDataset shards that someone else wrote (issue #28, S1-S5): no shard location becomes
a command, ``dataset.json`` is validated like a config, label members that are not valid are
skipped and counted, damaged and compressed shards are named, a set in which no sample is usable
ends in one line instead of a hang, and ``data check`` reports what ``train`` refuses."""

from __future__ import annotations

import gzip
import json
import os
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cnnzoo.cli import app
from cnnzoo.config import load_config
from cnnzoo.data import shard_files, shard_index, shards, stream_skips
from cnnzoo.data.check import check_data, problems
from cnnzoo.data.sources import load_data
from cnnzoo.errors import DataError

from support.cli import one_error_line, run_cnnzoo
from support.runs import tiny_config
from support.shard_sets import change_index, png, replace_members, samples, write_shard_set, write_tar

pytest.importorskip("webdataset")

# a hang guard, not a speed figure (tests never assert wall time): generous for a loaded machine
HANG_SECONDS = 120


def check_cli(data: str | Path, cwd: Path | None = None):
    """``cnnzoo data check --data DATA --json`` in-process, run from ``cwd``."""
    here = os.getcwd()
    os.chdir(cwd or here)
    try:
        return CliRunner().invoke(app, ["data", "check", "--data", str(data), "--json"])
    finally:
        os.chdir(here)


def spec_of(root: Path | str):
    return load_data(load_config({"data": {"root": str(root), "image_size": 16}}))


def write_tiny_config(folder: Path) -> Path:
    raw = tiny_config(Path("unused"), epochs=1, batch_size=4)
    del raw["data"]["root"], raw["data"]["cache"]  # shards are streamed: a cache would be warned about
    (folder / "tiny.yaml").write_text(yaml.safe_dump(raw))
    return folder / "tiny.yaml"


# ----------------------------------------------------------------------------- S1: no path runs


def pipe_index(tmp_path: Path) -> tuple[Path, Path]:
    root = write_shard_set(tmp_path / "set")
    marker = tmp_path / "PWNED"

    def to_pipe(index):
        index["splits"]["train"]["shards"][0] = f"pipe:touch {marker}; cat train/train-000000.tar"

    change_index(root, to_pipe)
    return root, marker


def test_a_pipe_entry_in_the_index_is_refused_by_data_check_and_runs_nothing(tmp_path):
    root, marker = pipe_index(tmp_path)
    result = run_cnnzoo(["data", "check", "--data", "."], cwd=root)
    assert "is not a file under" in one_error_line(result) and "pipe:touch" in result.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_a_pipe_entry_in_the_index_is_refused_by_train_and_runs_nothing(tmp_path):
    root, marker = pipe_index(tmp_path)
    write_tiny_config(tmp_path)
    result = run_cnnzoo(["train", "-c", "../tiny.yaml", "--data", ".", "--runs", "../runs"], cwd=root)
    assert "is not a file under" in one_error_line(result)
    assert not marker.exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["pipe:touch PWNED;cat ", "s:1", "file:x", "[a]*"])
def test_a_folder_named_like_a_url_or_a_pattern_is_read_as_a_folder(tmp_path, name):
    """No index: the globbed shard paths start with the folder's name, which is a file name."""
    write_shard_set(tmp_path / name, index=False)
    result = check_cli(name, cwd=tmp_path)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["counts"] == {"train": [8, 8], "validation": [4, 4]} and report["unreadable"] == []
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pipe:touch PWNED;cat ", "s:1"])
def test_train_reads_a_folder_named_like_a_url_as_a_folder(tmp_path, name):
    write_shard_set(tmp_path / name, index=False)
    write_tiny_config(tmp_path)
    result = run_cnnzoo(["train", "-c", "tiny.yaml", "--data", name, "--runs", "runs"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "16 training and 8 validation images in 2 + 1 WebDataset shards" in result.stdout
    assert "damaged" not in result.stderr and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "entry",
    [
        "pipe:cat train/train-000000.tar",
        "http://example.com/train-000000.tar",
        "/etc/passwd",
        "../outside.tar",
        "train/../../outside.tar",
        "train/escape.tar",  # a symlink to ../outside.tar
        "train",  # a folder
        "x" * 300 + ".tar",  # a name too long for the file system
        "",
        7,
    ],
)
def test_an_index_entry_that_is_not_a_file_under_the_folder_is_refused(tmp_path, entry):
    root = write_shard_set(tmp_path / "set")
    write_tar(tmp_path / "outside.tar", samples(8))
    (root / "train" / "escape.tar").symlink_to(tmp_path / "outside.tar")
    change_index(root, lambda index: index["splits"]["train"]["shards"].__setitem__(0, entry))
    with pytest.raises(DataError, match="is not a file under"):
        shard_files.find_shards(str(root))


def test_shards_are_read_as_files_without_webdataset(tmp_path, monkeypatch):
    """webdataset's URL opener (gopen) is never reached: a shard named like a pipe is a file."""
    monkeypatch.setitem(sys.modules, "webdataset", None)
    write_tar(tmp_path / "pipe:touch PWNED;cat x.tar", samples(4))
    got = list(shard_files.iter_shard(str(tmp_path / "pipe:touch PWNED;cat x.tar")))
    assert [s["cls"] for s in got] == [b"0", b"1", b"0", b"1"] and not (tmp_path / "PWNED").exists()


# -------------------------------------------------------------------- S2: nothing decodes, no hang


def undecodable_set(root: Path, *, index: bool = True) -> Path:
    write_shard_set(root, index=index)
    for tar in (*root.glob("train/*.tar"), *root.glob("validation/*.tar")):
        replace_members(tar, lambda name, data: b"not an image" if name.endswith(".png") else data)
    return root


@pytest.mark.parametrize("workers", [0, 1])
def test_a_stream_in_which_no_image_decodes_ends_in_one_line(tmp_path, workers, capsys):
    spec = spec_of(undecodable_set(tmp_path / "set"))
    settings = shards.StreamSettings(size=(16, 16), channels=3, batch_size=4)
    stream = shards.ShardStream(spec.train, spec.classes, settings, train=True)
    start = time.perf_counter()
    with pytest.raises(DataError) as caught:
        list(shards.StreamLoader(stream, workers=workers, pin_memory=False))
    assert time.perf_counter() - start < HANG_SECONDS
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message and "Caught" not in message
    assert message.startswith("no usable sample in shard") and "UnidentifiedImageError" in message
    assert capsys.readouterr().err.count("\n") <= 2  # no flood: the one line says it


@pytest.mark.slow
def test_train_on_shards_whose_images_never_decode_stops_with_one_line(tmp_path):
    undecodable_set(tmp_path / "set")
    write_tiny_config(tmp_path)
    result = run_cnnzoo(["train", "-c", "tiny.yaml", "--data", "set", "--runs", "runs"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "warning: skipped" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # after the warning that 8 validation images are few
    assert last.startswith("cnnzoo: error: no usable sample in shards") and "UnidentifiedImageError" in last


def test_skipped_samples_are_named_a_few_times_per_shard_and_counted(tmp_path, capsys):
    root = write_shard_set(tmp_path / "set", train=(40,), validation=(8,))
    replace_members(
        root / "train" / "train-000000.tar", lambda n, d: b"x" if n.endswith(".png") and n[:5] > "s0002" else d
    )
    spec = spec_of(root)
    capsys.readouterr()
    settings = shards.StreamSettings(size=(16, 16), channels=3, batch_size=1)
    stream = shards.ShardStream(spec.train, spec.classes, settings, train=False)  # one pass over every sample
    assert sum(len(y) for _, y in shards.StreamLoader(stream, workers=0, pin_memory=False)) == 3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == stream_skips.NAMED_SKIPS + 1 and "skipped 37 samples of shard" in err[-1]


# --------------------------------------------------------------- S3: label members are validated


@pytest.mark.parametrize(
    "member, data, reason",
    [
        ("cls", b"abc", "is not a class number"),
        ("cls", b"1.0", "is not a class number"),
        ("cls", b"-1", "is not a class number"),
        ("cls", b"300000000", "is not a class number"),
        ("cls", b"\xff\xfe", "is not a class number"),
        ("cls", b"", "is not a class number"),
        ("txt", b"\xff\xfe", "is not UTF-8"),
        ("txt", b"  ", "is empty"),
        ("txt", b"a\x1b[2J", "control characters"),
        ("json", b"{", "not valid JSON"),
        ("json", b"[" * 100_000 + b"]" * 100_000, "larger than"),
        ("json", b"[" * 1000 + b"]" * 1000, "nested more than"),
        ("json", b'{"label": 1.5}', "is not a class number or name"),
        ("json", b'{"label": true}', "is not a class number or name"),
        ("json", b'{"label": [1]}', "is not a class number or name"),
        ("json", b"null", "is not a class number or name"),
        ("json", b"1" * 5000, "larger than"),
        ("json", b'{"label": -1}', "is not a class number or name"),
    ],
)
def test_a_label_member_that_is_not_valid_is_a_member_error(member, data, reason):
    with pytest.raises(shard_files.MemberError, match=reason):
        shard_files.label_of({"__key__": "k", member: data})


@pytest.mark.parametrize("member, data", [("cls", b" 1\n"), ("txt", b"b"), ("json", b'{"class": "b"}'), ("json", b"1")])
def test_valid_label_members_give_their_class(member, data):
    assert shard_files.class_of({"__key__": "k", member: data}, {"a": 0, "b": 1}) == 1


def test_samples_with_bad_labels_are_skipped_counted_and_reported_by_data_check(tmp_path, capsys):
    """No index: the scan counts only usable labels; -1 is never the last class, and data check
    names every skipped sample and exits 1."""
    root = write_shard_set(tmp_path / "set", index=False)
    bad = {"s0001.cls": b"-1", "s0003.cls": b"abc", "s0005.cls": b"\xff", "s0007.cls": b"300000000"}
    replace_members(root / "train" / "train-000000.tar", lambda name, data: bad.get(name, data))
    classes, found = shard_files.find_shards(str(root))
    assert classes == ["0", "1"] and found["train"].class_counts == [8, 4] and found["train"].counts == [4, 8]
    assert "skipped 4 samples of shard" in capsys.readouterr().err
    result = check_cli(root)
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["counts"]["train"] == [8, 4]
    assert sorted(u["file"].rsplit(": ", 1)[1] for u in report["unreadable"]) == ["s0001", "s0003", "s0005", "s0007"]


def test_a_label_only_validation_has_is_refused_like_a_manifest_row(tmp_path):
    root = write_shard_set(tmp_path / "set", index=False)
    replace_members(root / "validation" / "validation-000000.tar", lambda n, d: b"2" if n == "s0017.cls" else d)
    with pytest.raises(DataError, match=r"label 2 is not one of the training classes \(0, 1\)"):
        shard_files.find_shards(str(root))


def test_one_class_of_labels_is_refused(tmp_path):
    root = write_shard_set(tmp_path / "set", index=False)
    for tar in root.glob("*/*.tar"):
        replace_members(tar, lambda n, d: b"0" if n.endswith(".cls") else d)
    with pytest.raises(DataError, match="only 1 class .0.; a classifier needs at least two"):
        shard_files.find_shards(str(root))


# ------------------------------------------------------------- dataset.json validated like a config


def set_path(*keys):
    def change(index):
        *head, last = keys[:-1]
        target = index
        for key in head:
            target = target[key]
        target[last] = keys[-1]

    return change


@pytest.mark.parametrize(
    "change, expected",
    [
        (set_path("format", "other/1"), "format should be"),
        (set_path("classes", ["a", "a"]), "class 'a' is listed more than once"),
        (set_path("classes", ["a"]), r"only 1 class \(a\); a classifier needs at least two"),
        (set_path("classes", []), "only 0 classes"),
        (set_path("classes", [{"a": 1}, None]), "classes should be a list of class names"),
        (set_path("classes", ["a", ""]), "is empty or holds control characters"),
        (set_path("classes", [str(i) for i in range(1_000_001)]), "1,000,001 classes; at most 1,000,000"),
        (set_path("splits", "train", "counts", [-1, 17]), "counts: should be a list of 2 whole numbers"),
        (set_path("splits", "train", "counts", [True, 15]), "counts: should be a list of 2 whole numbers"),
        (set_path("splits", "train", "counts", [8.0, 8]), "counts: should be a list of 2 whole numbers"),
        (set_path("splits", "train", "counts", [8]), "counts: should be a list of 2 whole numbers"),
        (set_path("splits", "train", "class_counts", [1_000_000_000, 1]), "class_counts: should be a list of 2"),
        (set_path("splits", "train", "class_counts", [1e300, 1]), "class_counts: should be a list of 2"),
        (set_path("splits", "train", "class_counts", [8, 8, 0]), "class_counts: should be a list of 2"),
        (set_path("splits", "train", "class_counts", [9, 8]), "counts add up to 16 and class_counts to 17"),
        (set_path("splits", "train", "counts", [60_000_000, 60_000_000]), "a split holds at most 100,000,000"),
        (set_path("splits", "train", "shards", []), "shards: should be a list of 1 to"),
        (set_path("splits", "validation", None), "should be a mapping of shards, counts and class_counts"),
        (set_path("splits", "extra", {}), "splits.extra: not a split cnnzoo reads"),
        (lambda index: index["splits"].pop("validation"), "needs train and validation shard sets"),
        (set_path("splits", "train", "shards", ["train/train-000000.tar"] * 2), "listed more than once"),
    ],
)
def test_a_bad_index_is_one_line(tmp_path, change, expected):
    root = write_shard_set(tmp_path / "set")
    change_index(root, change)
    start = time.perf_counter()
    with pytest.raises(DataError, match=expected):
        shard_files.find_shards(str(root))
    assert time.perf_counter() - start < HANG_SECONDS


def test_a_class_only_validation_has_is_refused(tmp_path):
    root = write_shard_set(tmp_path / "set")

    def only_in_validation(index):
        index["classes"].append("c")
        index["splits"]["train"]["class_counts"].append(0)
        index["splits"]["validation"]["class_counts"] = [3, 4, 1]

    change_index(root, only_in_validation)
    with pytest.raises(DataError, match="splits.validation has samples of class 'c', which no training sample has"):
        shard_files.find_shards(str(root))


@pytest.mark.parametrize(
    "text, expected",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested more than 16 deep"),
        (b'{"format": "cnnzoo-shards/1", "classes": ["a", "\xff"]}', "can't decode"),
        (b"{", "Expecting property name"),
        (b"", "Expecting value"),
    ],
)
def test_an_index_that_is_not_json_is_one_line(tmp_path, text, expected):
    root = write_shard_set(tmp_path / "set")
    (root / "dataset.json").write_bytes(text)
    with pytest.raises(DataError, match=f"not a cnnzoo shard index .*{expected}"):
        shard_files.find_shards(str(root))


def test_an_index_over_the_size_bound_is_not_parsed(tmp_path, monkeypatch):
    monkeypatch.setattr(shard_index, "MAX_INDEX_BYTES", 1000)
    root = write_shard_set(tmp_path / "set")
    change_index(root, lambda index: index.update(padding="x" * 1000))
    with pytest.raises(DataError, match="larger than 1,000 bytes"):
        shard_files.find_shards(str(root))


def test_a_bad_index_is_one_line_from_data_check_as_from_train(tmp_path):
    root = write_shard_set(tmp_path / "set")
    change_index(root, set_path("classes", ["a", "a"]))
    assert "listed more than once" in one_error_line(check_cli(root))


# ----------------------------------------------------------------------------- S4: damaged shards


def damage(tar: Path, how: str) -> None:
    whole = tar.read_bytes()
    tar.write_bytes(
        {
            "garbage": os.urandom(len(whole)),
            "empty file": b"",
            "empty tar": b"\0" * 1024,
            "cut": whole[: len(whole) // 2],
            "gzip": gzip.compress(whole),
        }[how]
    )


@pytest.mark.parametrize("how", ["garbage", "empty file", "empty tar", "cut", "gzip"])
def test_data_check_names_a_damaged_shard_and_exits_1(tmp_path, how):
    root = write_shard_set(tmp_path / "set")
    damage(root / "train" / "train-000001.tar", how)
    report = check_data(load_config({"data": {"root": str(root), "image_size": 16}}))
    assert problems(report) >= 1
    named = [u for u in report["unreadable"] if u["file"] == str(root / "train" / "train-000001.tar")]
    assert len(named) == 1 and "of 8" in named[0]["reason"], report["unreadable"]
    assert sum(report["counts"]["train"]) < 16  # what was read, not the index's 16
    if how == "gzip":
        assert "gzip-compressed; cnnzoo reads plain (uncompressed) tar shards" in named[0]["reason"]


@pytest.mark.parametrize("how", ["garbage", "empty file", "empty tar", "gzip"])
@pytest.mark.parametrize("workers", [0, 1])
def test_training_shards_that_are_all_damaged_end_in_one_line(tmp_path, how, workers):
    root = write_shard_set(tmp_path / "set")
    for tar in root.glob("train/*.tar"):
        damage(tar, how)
    spec = spec_of(root)
    settings = shards.StreamSettings(size=(16, 16), channels=3, batch_size=4)
    stream = shards.ShardStream(spec.train, spec.classes, settings, train=True)
    with pytest.raises(DataError) as caught:
        list(shards.StreamLoader(stream, workers=workers, pin_memory=False))
    assert "\n" not in str(caught.value) and str(caught.value).startswith("no usable sample in shards")


@pytest.mark.parametrize("how", ["garbage", "empty file", "empty tar"])
def test_without_an_index_a_damaged_training_set_is_one_line(tmp_path, how):
    root = write_shard_set(tmp_path / "set", train=(8,), index=False)
    damage(root / "train" / "train-000000.tar", how)
    with pytest.raises(DataError, match="the training shards hold no sample with a usable label"):
        shard_files.find_shards(str(root))


def test_a_sample_over_the_size_bound_is_skipped_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(shard_files, "MAX_SAMPLE_BYTES", 5000)
    big = [("big.png", png("a", 0, size=64) + b"\0" * 6000), ("big.cls", b"0")]
    tar = write_tar(tmp_path / "t.tar", samples(2) + big + samples(2, start=2))
    got = list(shard_files.iter_shard(str(tar)))
    assert [s["__key__"] for s in got] == ["s0000", "s0001", "big", "s0002", "s0003"]
    assert "png" not in got[2] and "the sample is over" in got[2][shard_files.SKIPPED]
    with pytest.raises(shard_files.MemberError, match="over"):
        shard_files.image_of(got[2])


def test_a_gzip_shard_is_not_inflated(tmp_path):
    """18 MB of gzip that inflates to 4 GiB was read into memory; now the magic bytes refuse it."""
    tar = tmp_path / "z.tar"
    with gzip.open(tar, "wb") as f:
        f.write(b"\0" * (64 * 2**20))  # 64 MiB of zeros: a 64 KB file
    reasons: list[str] = []
    # the reason is the magic-bytes check's, given before any inflating: no clock needed
    assert list(shard_files.iter_shard(str(tar), on_damage=lambda _, reason: reasons.append(reason))) == []
    assert reasons == ["gzip-compressed; cnnzoo reads plain (uncompressed) tar shards"]


def test_a_shard_that_is_a_fifo_is_not_opened(tmp_path):
    root = write_shard_set(tmp_path / "set", index=False)
    os.mkfifo(root / "train" / "waiting.tar")
    classes, found = shard_files.find_shards(str(root))
    assert all("waiting" not in p for p in found["train"].shards)
