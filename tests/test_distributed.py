"""Several processes (issue #10): DDP on CPU with gloo, through ``cnnzoo train --nproc 2``.

The end-to-end tests start the real launcher (torchrun inside ``cnnzoo train``) as a
subprocess and train a small BatchNorm CNN on generated images, so sharding, reduced
validation, rank-0 writes, resume with another process count and a dying process are
all exercised as a user meets them. Unit tests cover the sharded batch order, the
schedule's rescaling on resume and the console's rank rule.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import cnnzoo
from cnnzoo.config import load_config
from cnnzoo.console import Console
from cnnzoo.data.loaders import EpochBatches
from cnnzoo.training.recipe import LRSchedule, OptimizerSettings, ScheduleSettings, make_optimizer

from support.cli import cnnzoo_command, run_cnnzoo
from support.images import make_image_tree
from support.runs import metric_rows

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="this torch build has no gloo backend",
)


# ============================================================================ sharded batches


@pytest.mark.parametrize("n, world, batch", [(23, 2, 4), (10, 3, 2), (2, 3, 4), (64, 4, 8)])
def test_training_shards_take_equal_steps_and_cover_every_image(n, world, batch):
    labels = torch.arange(n) % 3
    shards = [EpochBatches(labels, batch, shuffle=True, seed=5, shard=(rank, world)) for rank in range(world)]
    for s in shards:
        s.set_epoch(7)
    batches = [list(s) for s in shards]
    assert len({len(b) for b in batches}) == 1  # DDP hangs when ranks take different step counts
    assert [len(s) for s in shards] == [len(b) for b in batches]
    taken = [i for b in batches for chunk in b for i, _ in chunk]
    assert set(taken) == set(range(n))
    single = EpochBatches(labels, batch, shuffle=True, seed=5)
    single.set_epoch(7)
    order = [i for chunk in single for i, _ in chunk]
    # every rank reads every world-th image of the single process's order
    assert [i for chunk in batches[0] for i, _ in chunk][: len(order[::world])] == order[::world][: len(taken) // world]


def test_validation_shards_count_every_image_once():
    labels = torch.arange(11) % 2
    seen = []
    for rank in range(3):
        sampler = EpochBatches(labels, 2, shuffle=False, seed=0, shard=(rank, 3))
        chunks = list(sampler)
        assert len(chunks) == len(sampler)
        seen += [i for chunk in chunks for i, _ in chunk]
    assert sorted(seen) == list(range(11))


def test_shard_order_depends_on_seed_and_epoch_only():
    labels = torch.arange(40) % 4

    def order(seed, epoch, rank):
        s = EpochBatches(labels, 8, shuffle=True, seed=seed, shard=(rank, 2))
        s.set_epoch(epoch)
        return [i for chunk in s for i, _ in chunk]

    assert order(1, 3, 0) == order(1, 3, 0)
    assert order(1, 3, 0) != order(1, 4, 0) and order(1, 3, 0) != order(2, 3, 0)
    assert set(order(1, 3, 0)).isdisjoint(order(1, 3, 1))


def test_schedule_resumes_at_the_same_point_with_another_step_count():
    t = load_config({"train": {"epochs": 6, "lr": 0.1, "scheduler": "one-cycle"}}).train
    model = torch.nn.Linear(2, 2)

    def schedule_after(steps_per_epoch, epochs):
        opt = make_optimizer(model, OptimizerSettings.of(t))
        schedule = LRSchedule(opt, ScheduleSettings.of(t), steps_per_epoch)
        for _ in range(epochs * steps_per_epoch):
            opt.step()
            schedule.step_batch()
        return opt, schedule

    opt, one_process = schedule_after(10, 3)  # 3 epochs of 10 steps in one process
    opt2 = make_optimizer(model, OptimizerSettings.of(t))
    resumed = LRSchedule(opt2, ScheduleSettings.of(t), 5)  # resumed where each of 2 processes takes 5 steps an epoch
    opt2.load_state_dict(opt.state_dict())
    resumed.load_state_dict(one_process.state_dict())
    assert resumed.step_count == 15
    for _ in range(5):  # epoch 4
        opt2.step(), resumed.step_batch()
    _, uninterrupted = schedule_after(5, 4)  # 4 epochs of 5 steps from the start
    assert resumed.lr == pytest.approx(uninterrupted.lr, rel=1e-9)
    assert resumed.lr != pytest.approx(schedule_after(5, 3)[1].lr, rel=1e-3)  # it did move on


def test_console_speaks_on_rank_0_only_and_quiet_keeps_warnings(capsys):
    console = Console()
    console.log("a line")
    with console.scoped(quiet=True):
        console.log("hidden")
        console.warn("still said")
    console.rank = 1
    console.log("rank 1 line")
    console.warn("rank 1 warning")
    out, err = capsys.readouterr()
    assert out == "a line\n"
    assert err == "warning: still said\n"


# ============================================================================ two processes, end to end


def ddp_config(root: Path, **train) -> dict:
    return {
        "name": "ddp",
        "seed": 0,
        "data": {"root": str(root), "image_size": 16, "workers": 0},  # cache auto: one shared file
        "model": {
            "layers": [
                {"conv": {"out_channels": 6, "kernel_size": 3, "padding": 1}},
                "batchnorm",
                "relu",
                "pool",
                "flatten",
                {"dense": {"out_features": "num_classes"}},
            ]
        },
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "scheduler": "one-cycle", **train},
    }


@pytest.fixture(scope="module")
def ddp_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    # 21 and 13: shards of unequal size, so padding and the reduction are both exercised
    make_image_tree(folder / "images", train={"a": 21, "b": 13}, validation={"a": 7, "b": 4})
    (folder / "ddp.yaml").write_text(yaml.safe_dump(ddp_config(folder / "images")))
    return folder


def _launch(folder: Path, *args: str) -> subprocess.Popen:
    """``cnnzoo args`` started in the DDP folder (its own CNNZOO_HOME), its output piped."""
    env = {**os.environ, "CNNZOO_HOME": str(folder / "home")}
    return subprocess.Popen(
        cnnzoo_command(*args), cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run_cli(folder: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``cnnzoo args`` in the DDP folder, with its own CNNZOO_HOME (the cache the processes share)."""
    return run_cnnzoo(args, folder, timeout=timeout, CNNZOO_HOME=str(folder / "home"))


@pytest.mark.slow
def test_two_processes_train_write_once_and_match_evaluation(ddp_folder):
    done = run_cli(ddp_folder, "train", "-c", "ddp.yaml", "--nproc", "2", "--runs", "runs")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    runs = sorted((ddp_folder / "runs" / "ddp").iterdir())
    assert [r.name for r in runs] == ["1"]  # one run folder, not one per process
    run = runs[0]
    for epoch in (1, 2):  # every line once: only rank 0 prints
        assert done.stdout.count(f"epoch   {epoch}/2") == 1, done.stdout
    assert done.stdout.count("run folder:") == 1
    assert done.stdout.count("calibration: temperature") == 1  # fitted and written by rank 0 alone
    assert torch.load(run / "best.pt", weights_only=True)["meta"]["calibration"]["images"] == 11
    assert "2 processes" in done.stdout and "auto -> disk" in done.stdout
    assert len(list((ddp_folder / "home" / "cache").glob("train-*.npy"))) == 1  # the image cache, built once
    rows = metric_rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]

    # validation was reduced over both processes' shards: it equals one process scoring every image
    last = torch.load(run / "last.pt", weights_only=True)
    report = cnnzoo.evaluate(run / "last.pt", split="validation", progress=False)
    assert report["num_images"] == 11
    assert report["accuracy"] == pytest.approx(float(rows[-1]["val_acc"]), abs=1e-6)
    assert report["loss"] == pytest.approx(float(rows[-1]["val_loss"]), rel=1e-4)
    assert set(last["model_state"]) == {k for k in last["model_state"] if not k.startswith("module.")}

    # resumed in one process, then in two again: the same run folder, continued
    with pytest.MonkeyPatch.context() as mp:  # one process: this one, as `cnnzoo train --resume` runs it
        mp.setenv("CNNZOO_HOME", str(ddp_folder / "home"))
        mp.chdir(ddp_folder)
        cnnzoo.train(resume=run / "last.pt", overrides=["train.epochs=3"], quiet=True)
    two = run_cli(ddp_folder, "train", "--resume", str(run / "last.pt"), "--set", "train.epochs=4", "--nproc", "2")
    assert two.returncode == 0, two.stderr
    assert "resuming at epoch 4 of 4" in two.stdout
    assert [r["epoch"] for r in metric_rows(run)] == ["1", "2", "3", "4"]
    assert [r.name for r in (ddp_folder / "runs" / "ddp").iterdir()] == ["1"]
    report = cnnzoo.evaluate(run / "last.pt", split="validation", progress=False)
    assert report["accuracy"] == pytest.approx(float(metric_rows(run)[-1]["val_acc"]), abs=1e-6)


@pytest.mark.slow
def test_a_bad_setting_is_one_line_once(ddp_folder):
    done = run_cli(ddp_folder, "train", "-c", "ddp.yaml", "--nproc", "2", "--set", "train.optimiser=sgd")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "cnnzoo: error: ddp.yaml: train.optimiser: unknown key; did you mean train.optimizer?"
    ]
    # found only once the processes run: still one line (rank 0's), exit code 2
    done = run_cli(ddp_folder, "train", "-c", "ddp.yaml", "--nproc", "2", "--data", "no_such_folder")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnzoo: error: ") and "no_such_folder" in lines[0], lines


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the worker processes")
def test_a_process_that_dies_ends_the_job_with_a_clear_message(ddp_folder):
    launcher = _launch(
        ddp_folder, "train", "-c", "ddp.yaml", "--nproc", "2", "--runs", "dying", "--set", "train.epochs=500"
    )
    try:
        metrics = ddp_folder / "dying" / "latest" / "metrics.csv"
        deadline = time.monotonic() + 120
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):  # two epochs done
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
            time.sleep(0.2)
        workers = _children(launcher.pid)
        assert len(workers) == 2
        os.kill(max(workers), signal.SIGKILL)  # the second worker started: rank 1
        out, err = launcher.communicate(timeout=60)  # a hang fails here
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 1
    assert "process 1 of 2 was killed by signal SIGKILL" in err, err
    assert "Traceback" not in err
    assert "--resume" in err
    held = torch.load(ddp_folder / "dying" / "latest" / "last.pt", weights_only=True)  # intact
    assert held["epoch"] >= 2


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the worker processes")
def test_a_job_that_fails_before_its_run_folder_offers_no_older_run(ddp_folder, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv("CNNZOO_HOME", str(ddp_folder / "home"))  # the older run: made in-process, one epoch
    cnnzoo.train(str(ddp_folder / "ddp.yaml"), ["train.epochs=1"], out=runs, quiet=True)
    assert (runs / "latest" / "last.pt").is_file()
    launcher = _launch(ddp_folder, "train", "-c", "ddp.yaml", "--nproc", "2", "--runs", str(runs))
    try:
        deadline = time.monotonic() + 120
        while len(workers := _children(launcher.pid)) < 2:  # killed while they still import torch
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
            time.sleep(0.02)
        os.kill(max(workers), signal.SIGKILL)
        out, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 1, err
    assert "was killed by signal SIGKILL" in err and "before this job made its run folder (nothing to resume)" in err
    assert "--resume" not in err and "Traceback" not in err
    assert [p.name for p in (runs / "ddp").iterdir()] == ["1"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the worker processes")
def test_a_stopped_process_ends_the_job_soon_after_ddp_timeout(ddp_folder):
    """A process that stops answering (SIGSTOP) fails the others' collectives after train.ddp_timeout,
    and the job ends with one line (torchrun then waits distributed.SHUTDOWN_GRACE_S, not its default
    30 s, before SIGKILL: the time it took is printed, as tests never assert wall time)."""
    command = "train -c ddp.yaml --nproc 2 --runs stopping --set train.epochs=500 --set train.ddp_timeout=10"
    launcher = _launch(ddp_folder, *command.split())
    stopped = None
    try:
        metrics = ddp_folder / "stopping" / "latest" / "metrics.csv"
        deadline = time.monotonic() + 120
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):  # one epoch done
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
            time.sleep(0.2)
        stopped = max(_children(launcher.pid))
        os.kill(stopped, signal.SIGSTOP)
        stopped_at = time.monotonic()
        out, err = launcher.communicate(timeout=120)  # a hang fails here
        waited = time.monotonic() - stopped_at  # printed, not asserted: tests never assert wall time
    finally:
        if launcher.poll() is None:
            launcher.kill()
        if stopped is not None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(stopped, sig)
                except ProcessLookupError:
                    pass
    print(f"a stopped process: the job ended {waited:.1f} s after SIGSTOP (train.ddp_timeout 10 s)")
    assert launcher.returncode == 1, err
    assert "another process of this run stopped answering" in err and "Traceback" not in err


# ============================================================================ TensorBoard


@pytest.mark.slow
def test_tensorboard_logger_writes_scalars_and_the_confusion_matrix(ddp_folder, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = cnnzoo.train(
        ddp_config(ddp_folder / "images", loggers=["csv", "tensorboard"], epochs=3), out=tmp_path / "runs", quiet=True
    )
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    rows = metric_rows(run)
    assert "lr/head" in events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("lr/head")] == [1, 2, 3]
    assert [round(e.value, 6) for e in events.Scalars("accuracy/validation")] == [float(r["val_acc"]) for r in rows]
    assert [round(e.value, 6) for e in events.Scalars("loss/train")] == [float(r["train_loss"]) for r in rows]
    assert [p.name for p in (run / "tensorboard").iterdir() if p.is_dir()] == []  # one TensorBoard run per run
    images = events.Images("validation/confusion_matrix")
    assert [e.step for e in images] == [1, 2, 3]
    assert images[0].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"


def test_tensorboard_missing_is_one_config_error(monkeypatch, tmp_path, image_root):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what `import tensorboard` meets when not installed
    from cnnzoo.errors import ConfigError

    with pytest.raises(
        ConfigError,
        match=r"train.loggers: tensorboard needs the tensorboard package; "
        r"pip install 'cnnzoo\[tensorboard\]'",
    ):
        cnnzoo.train(ddp_config(image_root, loggers=["tensorboard"]), out=tmp_path / "runs", quiet=True)
    assert not (tmp_path / "runs").exists()  # refused before a run folder is made


def test_unknown_logger_is_refused():
    from cnnzoo.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"train.loggers: got \['csv', 'wandb'\] \(list\), expected a list of csv \| tensorboard"
    ):
        load_config({"train": {"loggers": ["csv", "wandb"]}})
