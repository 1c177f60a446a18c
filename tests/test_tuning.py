"""``cnnzoo lr-find`` and ``cnnzoo sweep`` (issue #12), trained for real.

lr-find runs on the quickstart's generated shapes and its suggestion is then trained
with; sweeps run the tiny config, including a real Ctrl-C (SIGINT to this process)
in the middle of a sweep and the run that finishes it.
"""

from __future__ import annotations

import csv
import json
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import cnnzoo
from cnnzoo.engine import TrainingInterrupted
from cnnzoo.tuning import parse_grid, suggest_lr, sweep
from conftest import tiny_config
from helpers_predict import one_error_line, run_cnnzoo
from helpers_train import metric_rows

PROJECT = Path(__file__).resolve().parents[1]


def test_suggestion_is_the_steepest_fall_inside_the_valley():
    lrs = np.logspace(-7, 0, 200)
    x = np.log10(lrs)
    rng = np.random.default_rng(0)
    # flat, a fall centred at 1e-3, then divergence; plus noise that is steepest early on
    losses = 2.0 - 1.0 / (1 + np.exp(-(x + 3) * 3)) + np.where(x > -1, (x + 1) * 3, 0) + rng.normal(0, 0.004, 200)
    losses[:10] += np.linspace(0.3, 0, 10)
    lr, how = suggest_lr(list(lrs), list(losses), 0.1)
    assert how == "steepest descent of the loss"
    assert 10 ** -3.5 < lr < 10 ** -2.5
    flat, how = suggest_lr(list(lrs), [1.0 + 0.001 * np.sin(i) for i in range(200)], 0.1)
    assert flat == 0.1 and "never fell" in how


@pytest.mark.slow
def test_lr_find_on_the_quickstart_suggests_a_rate_that_trains(tmp_path):
    config = tmp_path / "quickstart.yaml"
    config.write_text((PROJECT / "configs" / "quickstart.yaml").read_text())
    done = run_cnnzoo(["lr-find", "-c", config, "--apply", "--out", tmp_path / "lr.png"], tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    line = next(l for l in done.stdout.splitlines() if l.startswith("suggested learning rate: "))
    suggested = float(line.split()[3])
    assert 0.003 / 10 <= suggested <= 0.003 * 10  # the shipped rate, within a factor of 10
    assert (tmp_path / "lr.png").stat().st_size > 10_000
    applied = tmp_path / "quickstart.lr.yaml"
    assert yaml.safe_load(applied.read_text())["train"]["lr"] == pytest.approx(suggested, rel=1e-2)
    assert yaml.safe_load(config.read_text())["train"]["lr"] == 0.003  # the original is untouched
    run = cnnzoo.train(str(applied), out=tmp_path / "runs", quiet=True)
    assert max(float(r["val_acc"]) for r in metric_rows(run)) >= 0.90


def test_grid_values_are_read_as_yaml_and_lists_stay_whole():
    grid = parse_grid(["train.lr=0.01,3e-3", "data.image_size=[16, 16],24", "train.optimizer=sgd,adam"])
    assert grid == {"train.lr": [0.01, 0.003], "data.image_size": [[16, 16], 24], "train.optimizer": ["sgd", "adam"]}


def sweep_config(tmp_path: Path, image_root: Path, epochs: int = 2) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(image_root, epochs=epochs)))
    return path


GRID = ["train.lr=0.02,0.005", "model.layers.0.conv.out_channels=4,8"]


@pytest.mark.slow
def test_sweep_runs_every_combination_and_ranks_them(image_root, tmp_path):
    config = sweep_config(tmp_path, image_root)
    result = sweep(config, GRID, runs_root=tmp_path / "runs")
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny-sweep").iterdir() if p.is_dir()) == ["1", "2", "3", "4"]
    accs = [r["best_val_acc"] for r in result.rows]
    assert accs == sorted(accs, reverse=True) and len(accs) == 4
    assert {(r["train.lr"], r["model.layers.0.conv.out_channels"]) for r in result.rows} == \
        {(0.02, 4), (0.02, 8), (0.005, 4), (0.005, 8)}
    for row in result.rows:  # the table says what each run folder holds
        saved = yaml.safe_load((Path(row["run"]) / "config.yaml").read_text())
        assert saved["train"]["lr"] == row["train.lr"]
        assert max(float(m["val_acc"]) for m in metric_rows(row["run"])) == pytest.approx(row["best_val_acc"])
    with open(result.table_csv, newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert result.table_md.read_text().count("\n") == 6 and result.plot.stat().st_size > 10_000
    again = sweep(config, GRID, runs_root=tmp_path / "runs")  # finished: nothing runs again
    assert [r["run"] for r in again.rows] == [r["run"] for r in result.rows]
    assert len([p for p in (tmp_path / "runs" / "tiny-sweep").iterdir() if p.is_dir()]) == 4


@pytest.mark.slow
def test_an_interrupted_sweep_continues_where_it_stopped(image_root, tmp_path):
    config = sweep_config(tmp_path, image_root, epochs=40)
    folder = tmp_path / "runs" / "tiny-sweep"
    main = threading.main_thread()

    def press_ctrl_c():  # a real SIGINT, once run 2 has written its second epoch
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            metrics = folder / "2" / "metrics.csv"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                signal.pthread_kill(main.ident, signal.SIGINT)
                return
            time.sleep(0.05)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    with pytest.raises(TrainingInterrupted):
        sweep(config, GRID, runs_root=tmp_path / "runs")
    state = json.loads(next(folder.glob("sweep-*.json")).read_text())
    assert [r["done"] for r in state["runs"]] == [True, False, False, False]
    assert state["runs"][1]["run"] == str(folder / "2")
    interrupted_epochs = len(metric_rows(folder / "2"))

    result = sweep(config, GRID, runs_root=tmp_path / "runs")
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["1", "2", "3", "4"]  # run 2 resumed, not redone
    assert [r["epoch"] for r in metric_rows(folder / "2")] == [str(e) for e in range(1, 41)]
    assert interrupted_epochs < 40 and len(result.rows) == 4


def test_trials_sample_the_grid(image_root, tmp_path):
    config = sweep_config(tmp_path, image_root, epochs=1)
    result = sweep(config, GRID, trials=2, runs_root=tmp_path / "runs")
    assert len(result.rows) == 2 and len({r["run"] for r in result.rows}) == 2


@pytest.mark.parametrize("grid, expected", [
    (["train.lr"], "--grid train.lr: expected key=v1,v2"),
    (["train.optimizer=sgd,nadam"], "train.optimizer: got 'nadam'"),
    (["train.lr=0.1", "train.lr=0.2"], "--grid train.lr: given twice"),
])
def test_bad_grids_are_one_line_before_anything_runs(image_root, tmp_path, grid, expected):
    config = sweep_config(tmp_path, image_root)
    args = ["sweep", "-c", config]
    for item in grid:
        args += ["--grid", item]
    done = run_cnnzoo(args, tmp_path)
    assert expected in one_error_line(done)
    assert not (tmp_path / "runs").exists()
