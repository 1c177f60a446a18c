"""``cnnzoo data shards``, the writing side: the output folder appears whole or not at all (a real
process killed with SIGKILL while it writes), an OUT that holds anything is refused and ``--force``
replaces only a shard set cnnzoo wrote, OUT paths that cannot be a folder are one line, and what a
shard cannot hold honestly (several labels, none, a file from outside the source's folder, a file
that is not an image) never reaches a tar."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnzoo.cli import app
from cnnzoo.data import shard_files, shard_output

from support.cli import cnnzoo_command, one_error_line, subprocess_env
from support.images import draw, make_image_tree

pytest.importorskip("webdataset")

NO_PROCESS = 1 << 22  # Linux's largest pid_max: no process ever has this id


def shards(*args) -> object:
    return CliRunner().invoke(app, ["data", "shards", *map(str, args)])


def check(data: Path) -> object:
    return CliRunner().invoke(app, ["data", "check", "--data", str(data)])


def members(out: Path) -> dict[str, list[str]]:
    """Each split's member names, over its tars."""
    found = {}
    for split in sorted(p.name for p in out.iterdir() if p.is_dir()):
        names = []
        for tar in sorted((out / split).glob("*.tar")):
            with tarfile.open(tar) as f:
                names += f.getnames()
        found[split] = names
    return found


def manifest_set(folder: Path, rows: list[str], *, header: str = "image,label", images: int = 6) -> Path:
    """``folder/data.csv`` with ``rows`` after six images of each class a and b (``imgs/a0.png``, ...)."""
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    lines = [header]
    for kind in ("a", "b"):
        for i in range(images):
            draw(kind, i, size=12).save(folder / "imgs" / f"{kind}{i}.png")
            lines.append(f"imgs/{kind}{i}.png,{kind}")
    (folder / "data.csv").write_text("\n".join([*lines, *rows]) + "\n")
    return folder / "data.csv"


def test_a_kill_while_data_shards_writes_leaves_no_output_and_a_hidden_folder_no_reader_takes(tmp_path):
    """SIGKILL once the hidden folder holds a tar: no OUT (data check on it fails, and on the hidden
    folder too); the next run removes the killed writer's folder and writes a whole set."""
    make_image_tree(tmp_path / "imgs", train={"a": 150, "b": 150}, validation={"a": 20, "b": 20}, size=8)
    out = tmp_path / "out"
    command = cnnzoo_command("data", "shards", tmp_path / "imgs", out, "--shard-size", "1")
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    written = lambda: [*tmp_path.glob(".out.partial-*/train/*.tar"), *out.glob("train/*.tar")]  # noqa: E731
    while not written() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "finished before the kill: make the data set larger"
    assert not os.path.lexists(out)
    (staging,) = tmp_path.glob(".out.partial-*")
    assert list(staging.glob("train/*.tar"))
    assert check(out).exit_code != 0
    one_error_line(check(staging))  # its index says "incomplete"

    done = shards(tmp_path / "imgs", out, "--shard-size", "100")
    assert done.exit_code == 0, done.output
    assert not list(tmp_path.glob(".out.partial-*"))  # the killed writer's folder was recognised and removed
    index = json.loads((out / "dataset.json").read_text())
    assert index["splits"]["train"]["counts"] == [100, 100, 100] and index["splits"]["validation"]["counts"] == [40]
    assert check(out).exit_code == 0


def test_a_hidden_folder_beside_out_is_removed_only_when_cnnzoo_marked_it_and_its_writer_is_gone(tmp_path):
    out = tmp_path / "out"
    gone, alive, unmarked = (tmp_path / f".out.partial-{n}" for n in ("gone", "alive", "unmarked"))
    for folder, pid in ((gone, NO_PROCESS), (alive, os.getpid())):
        (folder / "train").mkdir(parents=True)
        (folder / "train" / "train-000000.tar").write_bytes(b"")
        record = {"written_by": "cnnzoo data shards", "host": socket.gethostname(), "pid": pid}
        (folder / shard_output.MARKER).write_text(json.dumps(record))
    unmarked.mkdir()
    (unmarked / "notes.txt").write_text("precious")
    assert shard_output.remove_stale(out, "dataset.json") == [gone]
    assert alive.is_dir() and (unmarked / "notes.txt").read_text() == "precious"
    (alive / shard_output.MARKER).write_text(json.dumps({"host": socket.gethostname(), "pid": NO_PROCESS}))
    (alive / "notes.txt").write_text("not cnnzoo's")  # marked, writer gone, but holds a file cnnzoo never writes
    assert shard_output.remove_stale(out, "dataset.json") == [] and (alive / "notes.txt").exists()


def test_a_non_empty_out_is_refused_and_force_replaces_only_a_shard_set_cnnzoo_wrote(tmp_path):
    make_image_tree(tmp_path / "imgs", train={"a": 6, "b": 6}, validation={"a": 2, "b": 2}, size=8)
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    assert shards(tmp_path / "imgs", out, "--shard-size", "4").exit_code == 0
    assert len(list((out / "train").glob("*.tar"))) == 3
    line = one_error_line(shards(tmp_path / "imgs", out))
    assert "already exists and is not empty" in line and "--force" in line
    assert shards(tmp_path / "imgs", out, "--force").exit_code == 0  # its own set: replaced
    assert len(list((out / "train").glob("*.tar"))) == 1 and not list(tmp_path.glob(".out.*"))

    (out / "notes.txt").write_text("precious")
    line = one_error_line(shards(tmp_path / "imgs", out, "--force"))
    assert "not replaced, even with --force" in line and "notes.txt" in line
    photos = tmp_path / "photos"
    (photos / "train").mkdir(parents=True)
    (photos / "train" / "holiday.jpg").write_bytes(b"mine")
    line = one_error_line(shards(tmp_path / "imgs", photos, "--force"))
    assert "not a shard set cnnzoo wrote" in line
    assert (out / "notes.txt").read_text() == "precious" and (photos / "train" / "holiday.jpg").read_bytes() == b"mine"
    assert not list(tmp_path.glob(".*.partial-*"))


@pytest.mark.parametrize("where", ["file", "under a file", "proc", "dangling link"])
def test_an_out_path_that_cannot_be_a_folder_is_one_line(tmp_path, where):
    make_image_tree(tmp_path / "imgs", train={"a": 3, "b": 3}, validation={"a": 1, "b": 1}, size=8)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    out = {
        "file": tmp_path / "afile",
        "under a file": tmp_path / "afile" / "sub",
        "proc": Path("/proc/cnnzoo-no-such-folder"),
        "dangling link": tmp_path / "dangling",
    }[where]
    line = one_error_line(shards(tmp_path / "imgs", out))
    assert str(out) in line
    assert (tmp_path / "afile").read_text() == "x" and not (tmp_path / "nowhere").exists()


def test_an_out_named_like_a_pipe_is_a_folder_name(tmp_path, monkeypatch):
    make_image_tree(tmp_path / "imgs", train={"a": 3, "b": 3}, validation={"a": 1, "b": 1}, size=8)
    monkeypatch.chdir(tmp_path)
    assert shards("imgs", "pipe:touch PWNED;x").exit_code == 0
    assert not (tmp_path / "PWNED").exists()
    assert len(members(tmp_path / "pipe:touch PWNED;x")["train"]) == 12


def test_images_without_an_extension_are_stored_under_their_format_and_other_files_are_skipped(tmp_path, capsys):
    csv = manifest_set(tmp_path, ["bare_png,a", "bare_jpeg,b", "imgs/notes.bin,a"])
    draw("a", 50, size=12).save(tmp_path / "bare_png", format="PNG")
    draw("b", 51, size=12).save(tmp_path / "bare_jpeg", format="JPEG")
    (tmp_path / "imgs" / "notes.bin").write_bytes(os.urandom(500))
    result = shards(csv, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "file that cannot be read as an image (first: " in result.stderr and "notes.bin" in result.stderr
    names = [n for split in members(tmp_path / "out").values() for n in split]
    suffixes = sorted(n.rsplit(".", 1)[1] for n in names)
    assert suffixes == ["cls"] * 14 + ["jpg"] + ["png"] * 13  # 14 images; the random bytes are not among them
    index = json.loads((tmp_path / "out" / "dataset.json").read_text())
    for part in index["splits"].values():
        assert sum(part["class_counts"]) == sum(part["counts"])
    assert sum(sum(part["counts"]) for part in index["splits"].values()) == 14
    assert check(tmp_path / "out").exit_code == 0


@pytest.mark.parametrize(
    "header, rows",
    [("image,tags", ["imgs/m0.png,a b"]), ("image,tags", ["imgs/m0.png,a b", "imgs/m1.png,"])],
    ids=["several labels", "an empty label"],
)
def test_multi_label_data_is_written_with_each_images_label_set_and_read_back_the_same(tmp_path, header, rows):
    csv = manifest_set(tmp_path, rows, header=header)
    for i in range(2):
        draw("b", 50 + i, size=12).save(tmp_path / "imgs" / f"m{i}.png")
    assert shards(csv, tmp_path / "out").exit_code == 0
    index = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert index["multi_label"] is True and index["classes"] == ["a", "b"]
    classes, found = shard_files.find_shards(str(tmp_path / "out"))
    read: dict[bytes, list[str]] = {}
    for part in found.values():
        assert part.multi_label
        for path in part.shards:
            for sample in shard_files.iter_shard(path):
                numbers = shard_files.class_set_of(sample, {c: i for i, c in enumerate(classes)})
                assert sorted(sample) == ["__key__", "__url__", "json", "png"]  # the set in a .json member
                read[sample["png"]] = [classes[n] for n in numbers]
    expected: dict[bytes, list[str]] = {}
    for line in csv.read_text().splitlines()[1:]:
        image, tags = line.split(",")
        expected[(tmp_path / image).read_bytes()] = sorted(tags.split())
    assert read == expected
    assert check(tmp_path / "out").exit_code == 0


@pytest.mark.parametrize("how", ["dot-dot", "absolute", "link"])
def test_a_file_outside_the_manifests_folder_is_never_copied(tmp_path, how):
    secret = tmp_path / "secret_outside.png"
    draw("a", 9, size=12).save(secret)  # an image, even: what matters is where it is
    data = tmp_path / "deep" / "data"
    data.mkdir(parents=True)
    (data / "imgs").mkdir()
    (data / "imgs" / "link.png").symlink_to(secret)
    row = {"dot-dot": "../../secret_outside.png", "absolute": str(secret), "link": "imgs/link.png"}[how]
    csv = manifest_set(data, [f"{row},a"])
    line = one_error_line(shards(csv, tmp_path / "out"))
    assert "outside the source's folder" in line and str(data) in line and row.rsplit("/", 1)[-1] in line
    assert not os.path.lexists(tmp_path / "out") and not list(tmp_path.glob(".out.*"))


def test_a_split_with_no_readable_image_is_one_line_and_leaves_nothing_behind(tmp_path):
    make_image_tree(tmp_path / "imgs", train={"a": 3, "b": 3}, validation={"a": 1, "b": 1}, size=8)
    for image in (tmp_path / "imgs" / "validation").glob("*/*.png"):
        image.write_bytes(b"not a png")
    line = one_error_line(shards(tmp_path / "imgs", tmp_path / "out"))
    assert "validation split: none of its 2 files can be read as an image" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]  # the training tars went with the hidden folder
