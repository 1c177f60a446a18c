"""A ``last.pt`` handed to ``--resume`` is a user's file like any other input: its resume fields
(the epoch, optimizer, schedule, best-epoch record, EMA and a mid-epoch position) are checked
before the run uses them (:mod:`cnnzoo.training.resume`). A real run stopped by SIGTERM inside an
epoch gives the file; each mutation of it is one :class:`cnnzoo.UserError` naming the file and the
field, never another exception, and the unmutated file resumes (so the refusals come from the
mutations)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from cnnzoo import UserError, train

from support.cli import cnnzoo_command, one_error_line, run_cnnzoo, subprocess_env
from support.images import make_image_tree

LAYERS = [{"conv": {"out_channels": 4, "kernel_size": 3}}, "relu", "pool", "flatten", {"dense": {"out_features": 2}}]
CONFIG = {
    "name": "mid",
    "seed": 7,
    "data": {"root": "images", "image_size": 16, "workers": 0},
    "model": {"layers": LAYERS},
    "train": {"epochs": 3, "batch_size": 4, "lr": 0.01, "checkpoint_every": 1, "mixup": 0.2, "ema": {"decay": 0.9}},
}


def _in_epoch(last: Path) -> dict | None:
    return torch.load(last, weights_only=True).get("in_epoch") if last.exists() else None


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A run folder whose last.pt was saved inside epoch 2 by SIGTERM, beside epoch 1's best.pt (the
    folder is copied per case)."""
    base = tmp_path_factory.mktemp("resume-hostile")
    make_image_tree(base / "images", train={"a": 30, "b": 30}, validation={"a": 4, "b": 4}, size=16)
    (base / "mid.yaml").write_text(yaml.safe_dump(CONFIG))
    last = base / "runs" / "mid" / "1" / "last.pt"
    for _ in range(3):  # a SIGTERM that lands in validation saves at the epoch's end: try again
        shutil.rmtree(base / "runs", ignore_errors=True)
        proc = subprocess.Popen(
            cnnzoo_command("train", "-c", "mid.yaml", "--runs", "runs", "-q"),
            cwd=base,
            env=subprocess_env(CNNZOO_HOME=str(base / "home")),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and (_in_epoch(last) or {}).get("epoch") != 2:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM, proc.stderr.read()
        if _in_epoch(last) is not None:
            return last.parent
    pytest.fail("SIGTERM never landed inside an epoch")


def _resume_copy(stopped_run: Path, tmp_path: Path, mutate: Any) -> Path:
    run = tmp_path / "runs" / "mid" / "1"
    shutil.copytree(stopped_run, run)
    state = torch.load(run / "last.pt", weights_only=True)
    mutate(state)
    torch.save(state, run / "last.pt")
    return run / "last.pt"


def _set(path: str, value: Any) -> Any:
    """A mutation that sets ``path`` (keys and list indexes, dotted) of the saved state to ``value``."""

    def mutate(state: dict) -> None:
        *parents, leaf = [int(p) if p.isdigit() else p for p in path.split(".")]
        for key in parents:
            state = state[key]
        state[leaf] = value

    return mutate


def _drop(path: str) -> Any:
    def mutate(state: dict) -> None:
        *parents, leaf = path.split(".")
        for key in parents:
            state = state[int(key) if key.isdigit() else key]
        del state[leaf]

    return mutate


CASES = [
    ("epoch", _set("epoch", "one"), "epoch"),
    ("epoch negative", _set("epoch", -3), "epoch"),
    ("optimizer", _set("optimizer", [1, 2]), "optimizer"),
    ("optimizer groups", _set("optimizer.param_groups", []), "optimizer"),
    ("optimizer state", _set("optimizer.state", {0: {"step": "x", "exp_avg": 1}}), "optimizer"),
    ("optimizer moment shape", _set("optimizer.state.0.exp_avg", torch.zeros(7)), "optimizer state 'exp_avg'"),
    ("scheduler", _set("scheduler", "cosine"), "scheduler"),
    ("trainer", _set("trainer", None), "trainer"),
    ("trainer value", _set("trainer.best_value", "high"), "trainer.best_value"),
    ("ema", _set("ema", {"weights": 5}), "ema"),
    ("ema updates", _set("ema.updates", -1), "ema"),
    ("ema weights of another model", _set("ema.weights", {"layer.weight": torch.zeros(1)}), "ema does not fit"),
    ("in_epoch", _set("in_epoch", [1]), "in_epoch"),
    ("in_epoch epoch", _set("in_epoch.epoch", 9), "in_epoch.epoch"),
    ("in_epoch step", _set("in_epoch.step", 10**9), "in_epoch.step"),
    ("in_epoch facts", _drop("in_epoch.facts"), "in_epoch.facts"),
    ("in_epoch ranks", _set("in_epoch.ranks", []), "in_epoch.ranks"),
    ("loader", _set("in_epoch.ranks.0.loader", {"batches": "all"}), "in_epoch.ranks[0].loader"),
    ("torch rng", _set("in_epoch.ranks.0.rng.torch", torch.zeros(3, dtype=torch.uint8)), "in_epoch.ranks[0].rng"),
    ("numpy rng", _set("in_epoch.ranks.0.rng.numpy", ["MT19937", [1, 2], 0, 0, 0.0]), "in_epoch.ranks[0].rng"),
    ("python rng", _drop("in_epoch.ranks.0.rng.python"), "in_epoch.ranks[0].rng"),
    ("mixer", _set("in_epoch.ranks.0.mixer", {"bit_generator": "nope"}), "in_epoch.ranks[0].mixer"),
    ("tally", _set("in_epoch.ranks.0.tally.loss_sum", "x"), "in_epoch.ranks[0].tally"),
    ("tally step", _set("in_epoch.ranks.0.tally.step", 0), "in_epoch.ranks[0].tally"),
]


@pytest.mark.parametrize("mutate, field", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_damaged_resume_field_is_one_error_naming_the_file_and_field(stopped_run, tmp_path, mutate, field):
    last = _resume_copy(stopped_run, tmp_path, mutate)
    saved = {name: (last.parent / name).read_bytes() for name in ("last.pt", "best.pt")}
    with pytest.raises(UserError) as refused:
        train(resume=last, out=tmp_path / "runs", quiet=True)
    message = str(refused.value)
    assert message.startswith(f"{last}: ") and field in message and "\n" not in message, message
    assert {name: (last.parent / name).read_bytes() for name in saved} == saved  # nothing saved is lost


def test_the_unmutated_file_resumes_inside_its_epoch_and_the_cli_refuses_in_one_line(stopped_run, tmp_path):
    last = _resume_copy(stopped_run, tmp_path, lambda state: None)
    assert train(resume=last, out=tmp_path / "runs", quiet=True) == last.parent
    assert _in_epoch(last) is None and torch.load(last, weights_only=True)["epoch"] == 3

    damaged = _resume_copy(stopped_run, tmp_path / "cli", _set("in_epoch.ranks", "all"))
    line = one_error_line(run_cnnzoo(["train", "--resume", damaged], tmp_path, CNNZOO_HOME=str(tmp_path / "home")))
    assert f"{damaged}: " in line and "in_epoch.ranks" in line
