"""Exact mid-epoch resume (issue #33 item 2): ``train.checkpoint_every`` and SIGTERM write a ``last.pt``
inside an epoch, and a run killed there resumes at its next unseen batch.

The end-to-end tests run ``cnnzoo train`` as a subprocess, SIGKILL it at a step chosen by a seeded
random once ``last.pt`` holds that step, resume it with ``--resume RUN/last.pt``, and compare the
final checkpoints with an uninterrupted run's bit for bit (every tensor of the weights, the
optimizer, the weight average) and metrics.csv row for row: folders with augmentation, MixUp and
CutMix, a manifest decoded in loader workers, WebDataset shards streamed by two workers, a saved
Hugging Face dataset, and two processes through torchrun. Nothing is mocked.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from cnnzoo.config import load_config
from cnnzoo.data.loaders import EpochBatches
from cnnzoo.data.shards import ShardStream, StreamSettings
from cnnzoo.data.sources import load_data

from support.cli import cnnzoo_command, invoke_cnnzoo, one_error_line, run_cnnzoo, subprocess_env
from support.images import make_image_tree, write_kaggle_layout
from support.runs import TIMING, metric_rows
from support.shard_sets import write_shard_set

LAYERS = [
    {"conv": {"out_channels": 4, "kernel_size": 3, "padding": 1}},
    "batchnorm",
    "relu",
    "pool",
    "flatten",
    {"dropout": {"p": 0.3}},  # draws from torch's global generator: its state must be resumed too
    {"dense": {"out_features": "num_classes"}},
]
RECIPE = {"epochs": 3, "batch_size": 4, "lr": 0.01, "scheduler": "cosine", "optimizer": "adamw"}
ENV = {"OMP_NUM_THREADS": "1"}  # both runs of a comparison use the same threads


def write_config(folder: Path, data: dict[str, Any], **train: Any) -> Path:
    config = {
        "name": "mid",
        "seed": 7,
        "data": {"image_size": 16, "workers": 0, **data},
        "model": {"layers": LAYERS},
        "train": {**RECIPE, **train},
    }
    path = folder / "mid.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train_cli(folder: Path, *args: Any, timeout: float = 300) -> subprocess.CompletedProcess:
    done = run_cnnzoo(["train", *args], folder, timeout=timeout, CNNZOO_HOME=str(folder / "home"), **ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return done


def train_in_process(folder: Path, *args: Any) -> str:
    """The uninterrupted reference run: ``cnnzoo train args`` through the CLI in this process (no
    signal, no process boundary to test there), in ``folder``, on one torch thread as the
    subprocesses' OMP_NUM_THREADS=1 gives them; its stdout."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = invoke_cnnzoo(["train", *args], folder, CNNZOO_HOME=str(folder / "home"), **ENV)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.stdout


def position(last: Path) -> tuple[int, int] | None:
    """(epoch, step) of a last.pt saved inside an epoch; None for one saved at an epoch's end."""
    state = torch.load(last, weights_only=True)
    held = state.get("in_epoch")
    return (held["epoch"], held["step"]) if held else None


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (torchrun starts its workers in sessions of their own), from /proc."""
    tree, i = [pid], 0
    while i < len(tree):
        for children in Path(f"/proc/{tree[i]}/task").glob("*/children"):
            try:
                tree += [int(child) for child in children.read_text().split()]
            except OSError:
                pass
        i += 1
    return tree


def signal_tree(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def start_training(folder: Path, args: list[Any]) -> subprocess.Popen:
    """``cnnzoo train args`` started in ``folder`` with its own cache home; stderr kept."""
    return subprocess.Popen(
        cnnzoo_command("train", *args),
        cwd=folder,
        env=subprocess_env(CNNZOO_HOME=str(folder / "home"), **ENV),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def train_and_kill(folder: Path, args: list[Any], *, kill_at: int) -> Path:
    """Start ``cnnzoo train args``; once last.pt has held ``kill_at`` + 1 positions inside an epoch,
    stop the process group (SIGSTOP) and, when last.pt still holds a position inside an epoch,
    SIGKILL it (else go on to the next one). Returns the run folder."""
    proc = start_training(folder, args)
    seen: set[tuple[int, int]] = set()
    stamps: dict[Path, int] = {}
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            for last in (folder / "runs").glob("*/*/last.pt"):
                stamp = last.stat().st_mtime_ns
                if stamps.get(last) == stamp:
                    continue
                stamps[last] = stamp
                held = position(last)
                if held is not None:
                    seen.add(held)
                if len(seen) > kill_at:
                    tree = process_tree(proc.pid)
                    signal_tree(tree, signal.SIGSTOP)
                    time.sleep(0.05)  # stopped now: last.pt stays as it is
                    if position(last) is None:  # an epoch ended meanwhile: kill at the next position
                        signal_tree(tree, signal.SIGCONT)
                        continue
                    signal_tree(tree, signal.SIGKILL)
                    proc.wait()
                    return last.parent
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            signal_tree(process_tree(proc.pid), signal.SIGKILL)
            proc.wait()
    pytest.fail(f"the run ended before last.pt held {kill_at + 1} positions inside an epoch: {proc.stderr.read()}")


def assert_same_tensors(a: Any, b: Any, where: str) -> None:
    """Every tensor equal bit for bit (torch.equal), every other value equal, in nested dicts and lists."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_runs(resumed: Path, whole: Path) -> None:
    for name in ("last.pt", "best.pt"):
        got, want = (torch.load(run / name, weights_only=True) for run in (resumed, whole))
        for key in ("model_state", "optimizer", "scheduler", "ema", "epoch", "trainer"):
            if key in want:
                assert_same_tensors(got[key], want[key], f"{name}:{key}")
    drop = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert drop(metric_rows(resumed)) == drop(metric_rows(whole))


def train_whole(folder: Path, *extra: str) -> Path:
    """The uninterrupted run of mid.yaml into ``folder/whole``: in this process, or through torchrun
    (a real ``cnnzoo train --nproc`` subprocess) when ``extra`` asks for processes. Its run folder."""
    args = ["-c", "mid.yaml", "--runs", "whole", "-q", *extra]
    said = train_cli(folder, *args).stdout if "--nproc" in extra else train_in_process(folder, *args)
    return folder / said.strip().splitlines()[-1]


def kill_mid_epoch(folder: Path, *extra: str, seed: int, checkpoints: int) -> Path:
    """A run of mid.yaml killed at the (seeded) random-th mid-epoch checkpoint of its first ``checkpoints``."""
    kill_at = random.Random(seed).randrange(checkpoints)
    return train_and_kill(folder, ["-c", "mid.yaml", "--runs", "runs", *extra], kill_at=kill_at)


def resumed_equals_whole(folder: Path, run: Path, whole: Path, *extra: str) -> None:
    done = train_cli(folder, "--resume", run / "last.pt", *extra)
    assert "resuming inside epoch" in done.stdout
    assert_same_runs(run, whole)


def killed_and_resumed_equals_whole(folder: Path, *extra: str, seed: int, checkpoints: int) -> Path:
    """The uninterrupted run, then one killed at the (seeded) random-th mid-epoch checkpoint of
    its first ``checkpoints`` and resumed; the two compared. Returns the resumed run."""
    whole = train_whole(folder, *extra)
    run = kill_mid_epoch(folder, *extra, seed=seed, checkpoints=checkpoints)
    resumed_equals_whole(folder, run, whole, *extra)
    return run


@pytest.fixture(scope="module")
def folder_killed(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Folders with augmentation, MixUp, CutMix and EMA: (the folder, the uninterrupted run, a run
    killed inside an epoch), for the exact resume and the refusals of other data. Neither test
    changes the killed run: the resume continues a copy of it."""
    folder = tmp_path_factory.mktemp("folder")
    make_image_tree(folder / "images", train={"a": 20, "b": 20}, validation={"a": 4, "b": 4}, size=16)
    write_config(
        folder,
        {"root": "images", "augment": {"hflip": 0.5, "shear": 5.0, "zoom": 0.1}},
        mixup=0.2,
        cutmix=1.0,
        ema={"decay": 0.9},
        checkpoint_every=2,
    )
    whole = train_whole(folder)
    return folder, whole, kill_mid_epoch(folder, seed=1, checkpoints=8)


@pytest.mark.slow
def test_a_folder_with_augmentation_mixup_cutmix_and_ema_resumes_bit_for_bit(folder_killed, tmp_path):
    folder, whole, killed = folder_killed
    run = tmp_path / "runs" / "mid" / "1"
    shutil.copytree(killed, run)
    resumed_equals_whole(folder, run, whole)


@pytest.mark.slow
def test_a_manifest_decoded_in_loader_workers_with_accumulation_resumes_bit_for_bit(tmp_path):
    write_kaggle_layout(tmp_path / "clothes", {"shirt": 18, "shoes": 18}, size=16)
    write_config(
        tmp_path,
        {"root": "clothes", "cache": "none", "workers": 2, "augment": {"hflip": 0.5, "rotation": 10.0}},
        accumulate=2,
        checkpoint_every=1,
    )
    killed_and_resumed_equals_whole(tmp_path, seed=2, checkpoints=6)


@pytest.mark.slow
def test_shards_streamed_by_two_workers_resume_bit_for_bit(tmp_path):
    write_shard_set(tmp_path / "shards", train=(12, 10, 9, 11), validation=(8,))
    write_config(tmp_path, {"root": "shards", "workers": 2, "augment": {"hflip": 0.5}}, checkpoint_every=1)
    killed_and_resumed_equals_whole(tmp_path, seed=3, checkpoints=12)


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["decoded", "streamed"])
def test_a_saved_hugging_face_dataset_resumes_bit_for_bit(tmp_path, stream):
    datasets = pytest.importorskip("datasets")
    from support.images import draw

    def split(n: int, seed: int):
        return datasets.Dataset.from_dict(
            {"img": [draw("ab"[i % 2], seed * 1000 + i, 16) for i in range(n)], "label": [i % 2 for i in range(n)]},
            features=datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}),
        )

    datasets.DatasetDict({"train": split(36, 1), "validation": split(8, 2)}).save_to_disk(str(tmp_path / "hf"))
    data = {"root": "hf", "augment": {"vflip": 0.5}, "stream": stream, **({"workers": 2} if stream else {})}
    write_config(tmp_path, data, mixup=0.4, checkpoint_every=3)
    killed_and_resumed_equals_whole(tmp_path, seed=4, checkpoints=4)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
@pytest.mark.parametrize("source", ["folder", "shards"])
def test_two_processes_through_torchrun_resume_bit_for_bit(tmp_path, source):
    if source == "folder":
        make_image_tree(tmp_path / "data", train={"a": 21, "b": 19}, validation={"a": 4, "b": 4}, size=16)
        data = {"root": "data", "augment": {"hflip": 0.5}}
    else:
        write_shard_set(tmp_path / "data", train=(10, 10, 10, 10), validation=(8,))
        data = {"root": "data", "augment": {"hflip": 0.5}}
    write_config(tmp_path, data, cutmix=1.0, checkpoint_every=1)
    killed_and_resumed_equals_whole(tmp_path, "--nproc", "2", seed=5, checkpoints=4)


def stop_with_sigterm(folder: Path, args: list[Any], *, after: float) -> str:
    """Start ``cnnzoo train args``, send SIGTERM ``after`` seconds after its run folder's last.pt
    first appears or changes, and return what it said on stderr (it must stop with 128 + 15)."""
    proc = start_training(folder, args)
    last = folder / "runs" / "mid" / "1" / "last.pt"
    before = last.stat().st_mtime_ns if last.exists() else None
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if last.exists() and last.stat().st_mtime_ns != before:
            time.sleep(after)
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.005)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    return stderr


@pytest.mark.slow
def test_sigterm_saves_at_the_next_step_and_the_resume_is_exact(tmp_path):
    """No train.checkpoint_every: SIGTERM (a spot machine's notice) alone writes last.pt, at the next
    step boundary (or, during validation, at the epoch's end); stopped until once inside an epoch."""
    make_image_tree(tmp_path / "images", train={"a": 30, "b": 30}, validation={"a": 4, "b": 4}, size=16)
    write_config(tmp_path, {"root": "images", "augment": {"hflip": 0.5}}, mixup=0.2)
    whole = train_whole(tmp_path)
    run = tmp_path / "runs" / "mid" / "1"
    args: list[Any] = ["-c", "mid.yaml", "--runs", "runs"]
    for attempt in range(4):
        said = stop_with_sigterm(tmp_path, args, after=0.05 * attempt)
        args = ["--resume", run / "last.pt"]
        held = position(run / "last.pt")
        if held is not None:
            assert f"stopped by SIGTERM; last.pt holds epoch {held[0]} up to step {held[1]} of 15" in said
            break
        assert "stopped by SIGTERM; last.pt holds epoch" in said  # during validation: the epoch's end
    else:
        pytest.fail("SIGTERM never landed inside an epoch")
    train_cli(tmp_path, "--resume", run / "last.pt")
    assert_same_runs(run, whole)


def refused_resume(folder: Path, *args: Any) -> str:
    """``cnnzoo train --resume ...`` in this process (a refusal is a line, not process behaviour): the line."""
    return one_error_line(invoke_cnnzoo(["train", "--resume", *args], folder, CNNZOO_HOME=str(folder / "home")))


@pytest.mark.slow
def test_a_position_saved_for_other_data_is_refused_in_one_line(folder_killed):
    folder, _, run = folder_killed
    epoch = position(run / "last.pt")[0]
    line = refused_resume(folder, run / "last.pt", "--set", "train.batch_size=5")
    assert "40 training samples, 10 batches, 1 processes" in line and "40 training samples, 8 batches" in line

    extra = folder / "images" / "train" / "a" / "extra.png"
    shutil.copy(folder / "images" / "train" / "a" / "a_000.png", extra)
    try:
        line = refused_resume(folder, run / "last.pt")
    finally:
        extra.unlink()
    assert f"{run / 'last.pt'}: saved inside epoch {epoch}" in line and "41 training samples" in line
    assert "the data or its batching changed" in line
    assert position(run / "last.pt")[0] == epoch  # refused: the run is as it was


def test_checkpoint_every_must_be_a_positive_whole_number(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"data": {"root": "nowhere"}}))
    for value, said in (("0", "got 0"), ("-2", "got -2"), ("2.5", "got 2.5"), ("often", "got 'often'")):
        args = ["-c", "c.yaml", "--set", f"train.checkpoint_every={value}"]
        line = one_error_line(invoke_cnnzoo(["train", *args], tmp_path))
        assert "train.checkpoint_every" in line and said in line, line


# ============================================================================ the positions, in process


def test_the_sampler_skips_the_batches_a_resumed_epoch_saw():
    labels = torch.arange(30) % 3
    whole = EpochBatches(labels, 4, shuffle=True, seed=3)
    whole.set_epoch(2)
    resumed = EpochBatches(labels, 4, shuffle=True, seed=3)
    resumed.set_epoch(2)
    resumed.start_at(5)
    assert list(resumed) == list(whole)[5:]  # the same images and batch seeds
    assert list(resumed) == list(whole)  # once only: the next pass is whole


@pytest.mark.parametrize("workers", [0, 2])
def test_a_shard_stream_goes_on_from_its_saved_state(tmp_path, workers):
    write_shard_set(tmp_path / "shards", train=(9, 7, 8), validation=(4,))
    cfg = load_config({"data": {"root": str(tmp_path / "shards"), "image_size": 16}})
    spec = load_data(cfg)
    settings = StreamSettings(size=(16, 16), channels=3, batch_size=3, seed=1)
    from cnnzoo.data.shards import StreamLoader

    def loader() -> StreamLoader:
        stream = ShardStream(spec.train, spec.classes, settings, train=True)
        stream.set_epoch(4)
        return StreamLoader(stream, workers=workers, pin_memory=False)

    whole = [batch for batch in loader()]
    first = loader()
    taken = iter(first)
    head = [next(taken) for _ in range(3)]
    state = first.state_dict()
    del taken
    again = loader()
    again.load_state_dict(state)
    tail = list(again)
    assert len(head) + len(tail) == len(whole) == 8
    for got, want in zip(head + tail, whole):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_a_stream_read_in_the_training_process_leaves_torchs_generator_alone(tmp_path):
    """Its augmentation draws are seeded per batch and swapped in only while an image is augmented:
    the training's own draws (dropout) between two batches are then the same however the epoch's
    batches were reached (a run resumed mid-epoch sets the generator after its first batch)."""
    from cnnzoo.data.shards import StreamLoader

    write_shard_set(tmp_path / "shards", train=(9, 7), validation=(4,))
    spec = load_data(load_config({"data": {"root": str(tmp_path / "shards"), "image_size": 16}}))
    flip = lambda image: image.flip(-1) if torch.rand(()) < 0.5 else image  # noqa: E731
    settings = StreamSettings(size=(16, 16), channels=3, batch_size=4, seed=1, augment=flip)
    stream = ShardStream(spec.train, spec.classes, settings, train=True)
    stream.set_epoch(1)
    batches = iter(StreamLoader(stream, workers=0, pin_memory=False))
    next(batches)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    next(batches)
    assert torch.equal(torch.get_rng_state(), before)
