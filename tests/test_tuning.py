"""``cnnzoo lr-find`` and ``cnnzoo sweep`` (issue #12), trained for real.

lr-find runs on the quickstart's generated shapes and its suggestion is then trained
with; sweeps run the tiny config, including a real Ctrl-C (SIGINT to this process)
in the middle of a sweep and the run that finishes it.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import cnnzoo
from cnnzoo.training.lr_find import suggest_lr
from cnnzoo.training.run import TrainingInterrupted
from cnnzoo.training.sweep import parse_grid, sweep

from support.cli import one_error_line, run_cnnzoo
from support.runs import ctrl_c_raises, metric_rows, tiny_config

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
    assert 10**-3.5 < lr < 10**-2.5
    flat, how = suggest_lr(list(lrs), [1.0 + 0.001 * np.sin(i) for i in range(200)], 0.1)
    assert flat == 0.1 and "never fell" in how


@pytest.mark.slow
def test_lr_find_on_the_quickstart_suggests_a_rate_that_trains(tmp_path):
    config = tmp_path / "quickstart.yaml"
    config.write_text((PROJECT / "configs" / "quickstart.yaml").read_text())
    done = run_cnnzoo(["lr-find", "-c", config, "--apply", "--out", tmp_path / "lr.png"], tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    line = next(out for out in done.stdout.splitlines() if out.startswith("suggested learning rate: "))
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
    assert {(r["train.lr"], r["model.layers.0.conv.out_channels"]) for r in result.rows} == {
        (0.02, 4),
        (0.02, 8),
        (0.005, 4),
        (0.005, 8),
    }
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
    # 12 epochs: run 2 is stopped after its second, 10 epochs before it could end by itself (the
    # watcher polls every 50 ms); each run trains them all, so more epochs only cost time
    config = sweep_config(tmp_path, image_root, epochs=12)
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

    with ctrl_c_raises(), pytest.raises(TrainingInterrupted):
        threading.Thread(target=press_ctrl_c, daemon=True).start()
        sweep(config, GRID, runs_root=tmp_path / "runs")
    state = json.loads(next(folder.glob("sweep-*.json")).read_text())
    assert [r["done"] for r in state["runs"]] == [True, False, False, False]
    assert state["runs"][1]["run"] == str(folder / "2")
    interrupted_epochs = len(metric_rows(folder / "2"))

    result = sweep(config, GRID, runs_root=tmp_path / "runs")
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["1", "2", "3", "4"]  # run 2 resumed, not redone
    assert [r["epoch"] for r in metric_rows(folder / "2")] == [str(e) for e in range(1, 13)]
    assert interrupted_epochs < 12 and len(result.rows) == 4


@pytest.mark.slow
def test_trials_sample_the_grid(image_root, tmp_path):
    config = sweep_config(tmp_path, image_root, epochs=1)
    result = sweep(config, GRID, trials=2, runs_root=tmp_path / "runs")
    assert len(result.rows) == 2 and len({r["run"] for r in result.rows}) == 2


@pytest.mark.parametrize(
    "grid, expected",
    [
        (["train.lr"], "--grid train.lr: expected key=v1,v2"),
        (["train.optimizer=sgd,nadam"], "train.optimizer: got 'nadam'"),
        (["train.lr=0.1", "train.lr=0.2"], "--grid train.lr: given twice"),
    ],
)
def test_bad_grids_are_one_line_before_anything_runs(image_root, tmp_path, monkeypatch, grid, expected):
    config = sweep_config(tmp_path, image_root)
    args = ["sweep", "-c", config]
    for item in grid:
        args += ["--grid", item]
    monkeypatch.chdir(tmp_path)  # where the default runs/ would go
    assert expected in one_error_line(cli(*args))
    assert not (tmp_path / "runs").exists()


# ============================================================================ issue 22 (items 2, 7, 10) and 23 (13, 14)


def cli(*args):
    from typer.testing import CliRunner

    from cnnzoo.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def config_without_data_root(tmp_path: Path, train_section: str = "") -> Path:
    """The tiny network with no data.root (the --data shortcut gives it) and the given `train:` text."""
    config = tiny_config(Path("unused"))
    del config["data"]["root"]
    del config["train"]
    path = tmp_path / "configs" / "tiny.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(config, sort_keys=False) + "train:\n" + train_section)
    return path


FAST_LR_FIND = ["--steps", "12", "--end", "0.01"]


@pytest.mark.slow
def test_lr_find_takes_the_shortcuts_and_apply_writes_beside_the_plot_not_into_configs(image_root, tmp_path):
    config = config_without_data_root(tmp_path)  # `train:` with nothing under it
    shipped = sorted(p.name for p in config.parent.iterdir())
    done = cli(
        "lr-find",
        "-c",
        config,
        "--data",
        image_root,
        "--batch-size",
        4,
        "--epochs",
        3,
        "--set",
        "train.optimizer=sgd",
        "--unset",
        "data.workers",
        "--runs",
        tmp_path / "runs",
        "--apply",
        *FAST_LR_FIND,
    )
    assert done.exit_code == 0, (done.stderr, done.exception)
    assert sorted(p.name for p in config.parent.iterdir()) == shipped  # nothing lands in configs/
    applied = tmp_path / "runs" / "lr-find" / "tiny.lr.yaml"
    assert f"wrote {applied}; train with it: cnnzoo train -c {applied}" in done.stdout
    assert (tmp_path / "runs" / "lr-find" / "tiny.png").is_file()
    raw = yaml.safe_load(applied.read_text())
    suggested = float(next(out for out in done.stdout.splitlines() if out.startswith("suggested")).split()[3])
    assert raw["train"] == {
        "lr": pytest.approx(suggested, rel=1e-2),
        "batch_size": 4,
        "epochs": 3,
        "optimizer": "sgd",
    } and raw["data"]["root"] == str(image_root)
    assert "workers" not in raw["data"]
    cfg = cnnzoo.load_config(applied)  # the copy is a config that trains as lr-find ran it
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.data.root) == (4, 3, str(image_root))


@pytest.mark.slow
def test_apply_keeps_paths_that_were_relative_to_the_config_file(image_root, tmp_path, monkeypatch):
    # a config file's relative paths are read from its folder; the copy lives under runs/lr-find/,
    # so it must carry them in a form that still finds the data from there and from anywhere
    config = config_without_data_root(tmp_path, "  batch_size: 4\n")
    raw = yaml.safe_load(config.read_text())
    raw["data"]["root"] = os.path.relpath(image_root, config.parent)
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    done = cli("lr-find", "-c", config, "--apply", *FAST_LR_FIND)
    assert done.exit_code == 0, (done.stderr, done.exception)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    applied = tmp_path / "runs" / "lr-find" / "tiny.lr.yaml"
    assert cnnzoo.load_config(applied).data.root == str(image_root)


@pytest.mark.slow
def test_lr_find_out_names_the_file_it_writes(image_root, tmp_path):
    config = config_without_data_root(tmp_path, "  batch_size: 4\n")
    folder = tmp_path / "plots"  # no suffix: a folder
    done = cli("lr-find", "-c", config, "--data", image_root, "--out", folder, *FAST_LR_FIND)
    assert done.exit_code == 0, (done.stderr, done.exception)
    assert (folder / "tiny.png").is_file() and not (tmp_path / "plots.png").exists()
    assert done.stdout.rstrip().endswith(f"loss curve: {folder / 'tiny.png'}")
    line = one_error_line(cli("lr-find", "-c", config, "--data", image_root, "--out", tmp_path / "curve.txt"))
    assert "--out" in line and ".png" in line


@pytest.mark.slow
def test_sweep_takes_the_shortcuts_escapes_formulas_and_latest_is_the_best_run(image_root, tmp_path):
    config = config_without_data_root(tmp_path, "  epochs: 5\n  batch_size: 8\n")
    runs = tmp_path / "runs"
    done = cli(
        "sweep",
        "-c",
        config,
        "--data",
        image_root,
        "--epochs",
        1,
        "--runs",
        runs,
        "-q",
        "--grid",
        "train.lr=0.0001,0.05",
        "--grid",
        "data.cache_dir==1+1,+SUM(1)",
    )
    assert done.exit_code == 0, (done.stderr, done.exception)
    table = next((runs / "tiny-sweep").glob("sweep-*.csv"))
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["data.cache_dir"] for r in rows} == {"'=1+1", "'+SUM(1)"}
    assert not any(cell.startswith(("=", "+", "-", "@")) for r in rows for cell in r.values())
    best = Path(rows[0]["run"])
    assert (runs / "latest").resolve() == best.resolve() and (best / "best.pt").is_file()
    assert f"{runs / 'latest'} -> the best run, {best}" in done.stdout
    saved = yaml.safe_load((best / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 1 and saved["data"]["root"] == str(image_root.resolve())


def test_a_huge_grid_is_refused_at_once_and_trials_sample_it_without_listing_it():
    from cnnzoo.training.sweep import _combinations

    grid = {f"k{i}": list(range(10)) for i in range(6)}  # 10^6 combinations
    with pytest.raises(cnnzoo.UserError, match=r"10 x 10 x 10 x 10 x 10 x 10 = 1,000,000 combinations.*--trials K"):
        _combinations(grid, None, 0)
    picked = _combinations(grid, 3, seed=7)
    assert len(picked) == 3 and picked == _combinations(grid, 3, seed=7)
    small = {"a": [1, 2, 3], "b": ["x", "y"], "c": [0.1, 0.2]}  # the same draw as from the listed grid
    import itertools
    import random

    listed = [dict(zip(small, v)) for v in itertools.product(*small.values())]
    assert _combinations(small, None, 0) == listed
    assert _combinations(small, 5, seed=3) == random.Random(3).sample(listed, 5)


@pytest.mark.parametrize("value", ["[0.1", "{a: 1", "&a [*a", "'open", "@x"])
def test_a_bad_grid_value_is_one_line(image_root, tmp_path, value):
    config = sweep_config(tmp_path, image_root)
    line = one_error_line(cli("sweep", "-c", config, "--grid", f"train.lr=0.1,{value}", "--runs", tmp_path / "r"))
    assert "--grid train.lr: a value is not valid YAML" in line
    assert not (tmp_path / "r").exists()


def test_csv_cells_are_safe_in_a_spreadsheet_and_markdown_cells_stay_in_their_column():
    from cnnzoo.files import spreadsheet_safe
    from cnnzoo.training.sweep import markdown_table

    assert [spreadsheet_safe(v) for v in ["=1+1", "+1", "-x", "@A1", "\tx", "plain", -0.5, 3]] == [
        "'=1+1",
        "'+1",
        "'-x",
        "'@A1",
        "'\tx",
        "plain",
        -0.5,
        3,
    ]
    table = markdown_table([{"k": "a|b\nc", "best_val_acc": 0.5}], ["k", "best_val_acc"])
    assert table.splitlines()[2] == "| a\\|b c | 50.00% |"


def _damage(state_path: Path, how: str) -> None:
    state = json.loads(state_path.read_text())
    if how == "truncated":
        state_path.write_text(state_path.read_text()[:40])
    elif how == "not utf-8":
        state_path.write_bytes(b"\xff\xfe{}")
    elif how == "a list":
        state_path.write_text("[]")
    elif how == "runs is a number":
        state_path.write_text(json.dumps({**state, "runs": 5}))
    elif how == "one run too many":
        state_path.write_text(json.dumps({**state, "runs": state["runs"] + state["runs"][:1]}))
    elif how == "other values":
        state["runs"][0]["values"] = {"train.lr": "=cmd"}
        state_path.write_text(json.dumps(state))
    elif how == "run outside the sweep":
        state["runs"][1].update(run="/etc", done=False)
        state_path.write_text(json.dumps(state))
    elif how == "NaN seconds":
        state_path.write_text(json.dumps(state).replace('"seconds": ', '"seconds": NaN, "x": ', 1))
    elif how == "done is a string":
        state["runs"][0]["done"] = "yes"
        state_path.write_text(json.dumps(state))
    elif how == "a FIFO":
        state_path.unlink()
        os.mkfifo(state_path)
    elif how == "a folder":
        state_path.unlink()
        state_path.mkdir()
    elif how == "deep nesting":
        state_path.write_text("[" * 100_000 + "]" * 100_000)


DAMAGE = [
    "truncated",
    "not utf-8",
    "a list",
    "runs is a number",
    "one run too many",
    "other values",
    "run outside the sweep",
    "NaN seconds",
    "done is a string",
    "a FIFO",
    "a folder",
    "deep nesting",
]


@pytest.mark.slow
def test_a_damaged_sweep_state_is_one_line_and_restart_starts_over(image_root, tmp_path):
    config = sweep_config(tmp_path, image_root, epochs=1)
    runs = tmp_path / "runs"
    grid = ["--grid", "train.lr=0.02,0.005"]
    assert cli("sweep", "-c", config, *grid, "--runs", runs, "-q").exit_code == 0
    state_path = next((runs / "tiny-sweep").glob("sweep-*.json"))
    pristine = state_path.read_bytes()
    for how in DAMAGE:
        if state_path.is_dir():
            state_path.rmdir()
        else:
            state_path.unlink()
        state_path.write_bytes(pristine)
        _damage(state_path, how)
        line = one_error_line(cli("sweep", "-c", config, *grid, "--runs", runs, "-q"))
        assert f"{state_path}: damaged sweep state" in line and "--restart" in line, (how, line)
    assert sorted(p.name for p in (runs / "tiny-sweep").iterdir() if p.is_dir() and p.name.isdigit()) == ["1", "2"]
    done = cli("sweep", "-c", config, *grid, "--runs", runs, "-q", "--restart")
    assert done.exit_code == 0, (done.stderr, done.exception)
    assert sorted(p.name for p in (runs / "tiny-sweep").iterdir() if p.name.isdigit()) == ["1", "2", "3", "4"]


@pytest.mark.slow
def test_a_finished_run_whose_folder_is_gone_is_run_again(image_root, tmp_path, capsys):
    import shutil

    config = sweep_config(tmp_path, image_root, epochs=1)
    first = sweep(config, ["train.lr=0.02,0.005"], runs_root=tmp_path / "runs")
    gone = Path(first.rows[0]["run"])
    shutil.rmtree(gone)
    again = sweep(config, ["train.lr=0.02,0.005"], runs_root=tmp_path / "runs")
    assert "has no metrics.csv any more; running it again" in capsys.readouterr().err
    assert len(again.rows) == 2 and all((Path(r["run"]) / "metrics.csv").is_file() for r in again.rows)


@pytest.mark.slow
def test_the_sweep_table_names_the_epoch_best_pt_holds(image_root, tmp_path):
    """The table's best epoch is the one best.pt holds, by training's own rule (an epoch that ties on
    val_acc with a lower val_loss takes over), not the first epoch with the highest accuracy."""
    from cnnzoo.checkpoint import load_checkpoint

    config = sweep_config(tmp_path, image_root, epochs=6)
    result = sweep(config, ["train.lr=0.03,0.02"], runs_root=tmp_path / "runs")
    first_highest = []
    for row in result.rows:
        best = load_checkpoint(Path(row["run"]) / "best.pt")
        assert (row["best_epoch"], row["best_val_acc"]) == (best["epoch"], pytest.approx(best["metrics"]["val_acc"]))
        accs = [float(r["val_acc"]) for r in metric_rows(row["run"])]
        first_highest.append(accs.index(max(accs)) + 1)
    assert first_highest != [row["best_epoch"] for row in result.rows]  # a tie was broken: the case that disagreed
