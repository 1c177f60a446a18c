"""``cnnzoo tune`` (issue #33 item 4): Optuna studies that workers share, pruned trials, the outputs,
and the one-line refusals. Every trial trains the tiny config for real; the studies live in real
Optuna journal files and SQLite databases."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import cnnzoo
from cnnzoo.cli import app
from cnnzoo.errors import UserError
from cnnzoo.training.events import StopTraining
from cnnzoo.training.tune import journal_path
from cnnzoo.training.tune_space import parse_space

from support.cli import cnnzoo_command, one_error_line, run_cnnzoo, subprocess_env
from support.runs import metric_rows, tiny_config

optuna = pytest.importorskip("optuna")

SPACE = {"train.lr": {"log": [0.003, 0.05]}, "train.batch_size": [4, 8]}


def tune_config(tmp_path: Path, image_root: Path, space: dict | None = SPACE, epochs: int = 2) -> Path:
    cfg = tiny_config(image_root, epochs=epochs)
    if space is not None:
        cfg["tune"] = space
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def study_of(log: Path, name: str = "tiny"):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(log)))
    return optuna.load_study(study_name=name, storage=storage)


def test_the_space_reads_ranges_logs_ints_and_lists():
    dims = parse_space(
        {
            "train.lr": {"log": [1e-4, 1e-2]},
            "train.weight_decay": {"float": [0.0, 0.1], "step": 0.05},
            "train.epochs": {"int": [2, 8]},
            "data.augment.trivialaugment": [True, False],
        },
        "c.yaml: tune",
    )
    assert [(d.key, d.kind, d.log) for d in dims] == [
        ("train.lr", "float", True),
        ("train.weight_decay", "float", False),
        ("train.epochs", "int", False),
        ("data.augment.trivialaugment", "choice", False),
    ]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    values = {d.key: d.suggest(trial) for d in dims}
    assert 1e-4 <= values["train.lr"] <= 1e-2
    assert values["train.weight_decay"] in (0.0, 0.05, 0.1)
    assert isinstance(values["train.epochs"], int) and 2 <= values["train.epochs"] <= 8
    assert values["data.augment.trivialaugment"] in (True, False)


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ([0.1, 0.2], "expected a mapping of config keys"),
        ({"train.lr": {"log": [0.0, 0.1]}}, "a log scale needs low > 0"),
        ({"train.lr": {"log": [0.1, 0.01]}}, "low 0.1 must be below high 0.01"),
        ({"train.lr": {"uniform": [0.1, 0.2]}}, "expected one of log, float, int"),
        ({"train.lr": []}, "an empty list"),
        ({"train.epochs": {"int": [1.5, 4]}}, "whole numbers"),
        ({"train.lr": {"float": [0.1, "x"]}}, "expected [low, high] numbers"),
    ],
)
def test_a_space_that_does_not_parse_is_one_line_naming_the_key(space, expected):
    with pytest.raises(UserError, match="c.yaml: tune") as caught:
        parse_space(space, "c.yaml: tune")
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"train.lrr": [0.1, 0.2]}, "train.lrr"),
        ({"train.lr": {"float": [-1.0, 0.1]}}, "train.lr=-1.0 is not a valid config value"),
        ({"train.optimizer": ["adamw", "lion?"]}, "train.optimizer"),
    ],
)
def test_a_key_or_value_the_config_refuses_is_one_line_before_any_trial(
    image_root, tmp_path, monkeypatch, space, expected
):
    config = tune_config(tmp_path, image_root, space)
    monkeypatch.chdir(tmp_path)  # where a trial would write runs/
    line = one_error_line(CliRunner().invoke(app, ["tune", "-c", str(config), "--trials", "1"]))
    assert expected in line and "tune" in line
    assert not (tmp_path / "runs").exists()


def test_bad_command_lines_are_one_line(image_root, tmp_path, monkeypatch):
    """Each refusal in-process (the same error path); one real ``cnnzoo`` process shows that the
    installed command keeps the contract (one stderr line, exit code 2) too."""
    config = tune_config(tmp_path, image_root)
    (tmp_path / "plain").mkdir()
    no_space = tune_config(tmp_path / "plain", image_root, None)
    bad_yaml = tmp_path / "space.yaml"
    bad_yaml.write_text("tune: {train.lr: [0.1,\n")
    cases = [
        (["--storage", "redis://localhost/0"], "unknown storage"),
        (["--storage", "journal:///"], "name a file"),
        (["--storage", "sqlite:////no/such/folder/study.db"], "cannot open the study's database"),
        (["--storage", "postgresql://user:secret@127.0.0.1:1/db"], "--storage postgresql://127.0.0.1:1/db"),
        (["--pruner", "asha"], "--pruner asha: choose one of median, hyperband, none"),
        (["--space", tmp_path / "missing.yaml"], "no such file"),
        (["--space", bad_yaml], "YAML syntax error"),
    ]
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for extra, expected in cases:
        line = one_error_line(runner.invoke(app, ["tune", "-c", str(config), "--trials", "1", *map(str, extra)]))
        assert expected in line, (extra, line)
        assert "secret" not in line
    line = one_error_line(run_cnnzoo(["tune", "-c", no_space, "--trials", "1"], tmp_path))
    assert "no search space" in line and "--space" in line
    assert not (tmp_path / "runs").exists()


def test_journal_urls_are_relative_with_three_slashes_and_absolute_with_four():
    assert journal_path("journal:///study.log") == Path("study.log")
    assert journal_path("journal:////abs/study.log") == Path("/abs/study.log")


@pytest.mark.slow
def test_two_workers_share_one_study_and_finish_exactly_their_shares(image_root, tmp_path):
    config = tune_config(tmp_path, image_root)
    log = tmp_path / "common" / "study.log"
    command = cnnzoo_command("tune", "-c", config, "--trials", "2", "-q", "--storage", f"journal:///{log}")
    workers = [
        subprocess.Popen(command, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[1].decode()[-2000:] for o in outputs]
    trials = study_of(log).get_trials()
    finished = [t for t in trials if t.state.is_finished()]
    assert len(trials) == len(finished) == 4  # 2 each
    assert {t.user_attrs["pid"] for t in trials} == {w.pid for w in workers}  # both took part
    runs = {t.user_attrs["run"] for t in trials}
    assert len(runs) == 4 and all((Path(r) / "metrics.csv").is_file() for r in runs)
    folder = tmp_path / "runs" / "tiny-tune"
    table = (folder / "trials.csv").read_text().splitlines()
    assert len(table) == 5
    assert set(table[0].split(",")[:5]) == {"trial", "state", "value", "train.lr", "train.batch_size"}
    best = min((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: -t.value)
    best_yaml = yaml.safe_load((folder / "best.yaml").read_text())
    assert best_yaml["train"]["lr"] == pytest.approx(best.params["train.lr"])
    assert best_yaml["train"]["batch_size"] == best.params["train.batch_size"]
    assert "tune" not in best_yaml
    assert (folder / "trials.png").stat().st_size > 5_000
    assert (tmp_path / "runs" / "latest").resolve() == Path(best.user_attrs["run"]).resolve()


@pytest.mark.slow
def test_a_killed_workers_trial_is_marked_failed_and_run_again(image_root, tmp_path):
    config = tune_config(tmp_path, image_root, {"train.lr": [0.01, 0.02]}, epochs=400)
    log = tmp_path / "study.log"
    worker = subprocess.Popen(
        cnnzoo_command("tune", "-c", config, "--trials", "1", "-q", "--storage", "journal:///study.log"),
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # until its trial has reported an epoch
        if log.exists():
            running = [t for t in study_of(log).get_trials() if t.intermediate_values]
            if running:
                break
        time.sleep(0.5)
    else:
        pytest.fail("the worker's trial never reported an epoch")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    killed = running[0]
    assert killed.state.name == "RUNNING"
    done = run_cnnzoo(
        ["tune", "-c", config, "--trials", "1", "--epochs", "2", "--storage", "journal:///study.log"], tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert f"trial {killed.number} was left running by a worker that is gone" in done.stderr
    trials = study_of(log).get_trials()
    assert trials[killed.number].state.name == "FAIL"
    retry = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert retry[0].params == killed.params


@pytest.mark.slow
def test_a_callback_can_stop_a_run_after_an_epoch(image_root, tmp_path):
    class StopAtTwo:
        def epoch_end(self, end):
            if end.epoch == 2:
                raise StopTraining("enough")

        def close(self):
            self.closed = True

    stopper = StopAtTwo()
    config = tune_config(tmp_path, image_root, None, epochs=5)
    run = cnnzoo.train(str(config), out=tmp_path / "runs", quiet=True, callbacks=[stopper])
    assert [int(r["epoch"]) for r in metric_rows(run)] == [1, 2]
    assert stopper.closed and (run / "best.pt").is_file()


@pytest.mark.slow
def test_pruned_trials_stop_early_and_are_counted_as_finished(image_root, tmp_path):
    # lr 1e-6 cannot learn in 6 epochs; once 3 trials have finished, the median pruner stops the others
    space = {"train.lr": [0.03, 0.02, 1.0e-6]}
    config = tune_config(tmp_path, image_root, space, epochs=6)
    result = cnnzoo.tune(config, trials=6, runs_root=tmp_path / "runs", sampler="random", seed=1, quiet=True)
    assert result.finished == 6
    pruned = [r for r in result.rows if r["state"] == "PRUNED"]
    assert pruned, result.rows
    assert all(r["epochs"] < 6 for r in pruned)
    assert any(r["train.lr"] == 1.0e-6 for r in pruned)


@pytest.mark.slow
def test_a_study_is_joined_not_redone_and_sqlite_works(image_root, tmp_path):
    config = tune_config(tmp_path, image_root, {"train.lr": [0.01, 0.02]}, epochs=1)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = cnnzoo.tune(config, trials=1, storage=url, runs_root=tmp_path / "runs", quiet=True)
    second = cnnzoo.tune(config, trials=2, storage=url, runs_root=tmp_path / "runs", quiet=True)
    assert (first.finished, second.finished) == (1, 3)
    assert len(second.rows) == 3 and second.best_yaml is not None
