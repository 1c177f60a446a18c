"""Training end to end (issue #3): run folders, checkpoints, determinism, resume, recipes, Ctrl-C.

Every run here trains for real (tiny CNN, 16x16 generated images, 1-4 epochs) through
``cnnzoo.training.run.train``; nothing in cnnzoo is mocked.
"""

from __future__ import annotations

import math
import os
import pickle
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from PIL import Image

import cnnzoo
from cnnzoo.checkpoint import FORMAT, load_checkpoint, save_atomic
from cnnzoo.config import load_config
from cnnzoo.data.cache import decode_all
from cnnzoo.data.loaders import ImageDataset, make_loader
from cnnzoo.data.sources import load_data
from cnnzoo.errors import ConfigError, UserError
from cnnzoo.model.layers import build_from_infos, build_from_records, trace_layers
from cnnzoo.runtime import device as device_mod
from cnnzoo.runtime.device import Feed
from cnnzoo.training.callbacks import HistoryPlot
from cnnzoo.training.loop import Stepper, train_one_epoch
from cnnzoo.training.recipe import (
    Criterion,
    LRSchedule,
    OptimizerSettings,
    ScheduleSettings,
    loss_kind,
    make_optimizer,
)
from cnnzoo.training.run import TrainingInterrupted, train

from support.cli import cnnzoo_command
from support.images import make_image_tree
from support.runs import HEADER, TIMING, ctrl_c_raises, files_under, metric_rows, tiny_config, tiny_layers


def write_images(root: Path, train_per_class: int = 12, val_per_class: int = 4) -> Path:
    """The same pictures as the image_root fixture's, any count."""
    n, m = train_per_class, val_per_class
    return make_image_tree(root, train={"a": n, "b": n}, validation={"a": m, "b": m})


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Two identical runs of the tiny config (2 epochs, lr overridden) made from a relative data.root."""
    folder = tmp_path_factory.mktemp("train-base")
    write_images(folder / "images")
    config = tiny_config(Path("images"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNZOO_HOME", str(folder / "home"))
        mp.chdir(folder)
        first = train(config, ["train.lr=0.02"], out=folder / "runs", quiet=True)
        second = train(config, ["train.lr=0.02"], out=folder / "runs", quiet=True)
    return SimpleNamespace(folder=folder, root=folder / "images", runs=folder / "runs", first=first, second=second)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    """6 + 6 training and 2 + 2 validation images: 3 batches of 4 per epoch."""
    return write_images(tmp_path_factory.mktemp("small") / "images", 6, 2)


# ============================================================================ the run folder


def test_run_folder_layout(base):
    assert base.first == base.runs / "tiny" / "1"
    assert base.second == base.runs / "tiny" / "2"
    latest = base.runs / "latest"
    assert latest.is_symlink()
    assert latest.resolve() == base.second.resolve()
    assert not os.path.isabs(os.readlink(latest))  # relative: the runs folder can move
    for run in (base.first, base.second):
        assert files_under(run) == ["best.pt", "config.yaml", "history.png", "last.pt", "metrics.csv"]
    assert sorted(p.name for p in base.runs.iterdir()) == ["latest", "tiny"]


def test_config_yaml_is_fully_resolved(base):
    saved = yaml.safe_load((base.first / "config.yaml").read_text())
    assert saved["model"]["input"] == [3, 16, 16]
    assert saved["model"]["num_classes"] == 2
    assert saved["data"]["root"] == str(base.root.resolve())  # given as "images", saved absolute
    assert os.path.isabs(saved["data"]["root"])
    assert saved["train"]["lr"] == 0.02  # the override
    assert saved["train"]["epochs"] == 2 and saved["name"] == "tiny" and saved["seed"] == 0
    assert saved["train"]["optimizer"] == "adam" and saved["train"]["scheduler"] == "none"  # defaults written
    assert set(saved["data"]["augment"]) >= {"hflip", "rotation", "color_jitter"}
    cfg = load_config(base.first / "config.yaml")  # the saved config is itself a valid config
    assert cfg.model.num_classes == 2 and cfg.train.lr == 0.02


def test_setup_leaves_the_config_as_written_and_holds_the_facts_apart(image_root, monkeypatch):
    """The class count, input shape, name and absolute data folder are the run's facts (RunFacts),
    filled into the saved copy only; the config keeps what the user wrote."""
    from cnnzoo.config import dump_config
    from cnnzoo.training.setup import build_setup

    monkeypatch.chdir(image_root.parent)
    cfg = load_config(tiny_config(Path(image_root.name)))
    cfg.name = None
    written = dump_config(cfg)
    setup = build_setup(cfg, torch.device("cpu"))
    assert dump_config(cfg) == written  # nothing written back
    facts = setup.facts
    assert (facts.name, facts.classes, facts.input_shape) == ("run", ["a", "b"], [3, 16, 16])
    saved = facts.saved_config(cfg)
    assert (saved.name, saved.model.num_classes, saved.model.input) == ("run", 2, [3, 16, 16])
    assert saved.data.root == str(image_root.resolve()) and cfg.data.root == image_root.name
    assert (saved.data.channels, saved.data.image_size) == (3, [16, 16])


def test_metrics_csv_and_history_png(base):
    text = (base.first / "metrics.csv").read_text()
    assert text.splitlines()[0] == HEADER
    rows = metric_rows(base.first, timing=True)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for row in rows:
        assert float(row["lr"]) == pytest.approx(0.02)
        for key in ("train_loss", "val_loss", "seconds", "images_per_s"):
            assert math.isfinite(float(row[key])) and float(row[key]) > 0
        for key in ("train_acc", "val_acc", "data_wait"):
            assert 0 <= float(row[key]) <= 1
    png = base.first / "history.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as img:
        img.verify()
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


def test_checkpoints_load_safely_and_hold_everything(base):
    best = torch.load(base.first / "best.pt", weights_only=True)
    last = torch.load(base.first / "last.pt", weights_only=True)
    for ckpt in (best, last):
        meta = ckpt["meta"]
        assert meta["classes"] == ["a", "b"]
        assert meta["image_size"] == [16, 16] and meta["channels"] == 3
        assert len(meta["mean"]) == 3 and len(meta["std"]) == 3
        assert ckpt["format"] == FORMAT
        assert ckpt["config"]["model"]["num_classes"] == 2
        assert isinstance(ckpt["layers"], list) and ckpt["layers"]
        model = build_from_records(ckpt["layers"])
        model.load_state_dict(ckpt["model_state"])  # rebuilds without the config
    assert last["epoch"] == 2
    assert best["epoch"] in (1, 2)
    for key in ("optimizer", "scheduler", "trainer"):
        assert key in last and key not in best
    assert "rng" not in last  # every epoch reseeds from (seed, epoch): a saved RNG state would never be read
    assert last["trainer"]["best_epoch"] == best["epoch"]
    assert last["optimizer"]["state"]  # Adam moments were saved
    assert float(best["metrics"]["val_acc"]) == pytest.approx(last["trainer"]["best_value"])
    assert load_checkpoint(base.first)["epoch"] == best["epoch"]  # a folder means its best.pt


# ============================================================================ determinism


def test_same_config_and_seed_give_identical_metrics(base):
    first, second = metric_rows(base.first, timing=True), metric_rows(base.second, timing=True)
    assert list(first[0]) == HEADER.split(",")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(first) == strip(second)
    states = [torch.load(run / "last.pt", weights_only=True)["model_state"] for run in (base.first, base.second)]
    assert list(states[0]) == list(states[1])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_different_seed_gives_different_metrics(base, tmp_path):
    config = tiny_config(base.root, epochs=1)
    config["seed"] = 1
    run = train(config, ["train.lr=0.02"], out=tmp_path / "runs", quiet=True)
    assert metric_rows(run)[0] != metric_rows(base.first)[0]


def test_augmented_runs_are_identical_for_any_worker_count(base, image_root, tmp_path):
    runs = []
    for workers in (0, 1):
        config = tiny_config(image_root, lr=0.02)
        config["data"].update(
            workers=workers,
            augment={
                "hflip": 0.5,
                "rotation": 15.0,
                "translate": 0.1,
                "random_resized_crop": [0.7, 1.0],
                "color_jitter": {"brightness": 0.3},
            },
        )
        runs.append(train(config, out=tmp_path / "runs", quiet=True))
    assert metric_rows(runs[0]) == metric_rows(runs[1])
    # same pictures and recipe as the base run, without augmentation: augmentation really ran
    assert [r["train_loss"] for r in metric_rows(runs[0])] != [r["train_loss"] for r in metric_rows(base.first)]


# ============================================================================ resume

EXTEND_CASES = [
    pytest.param(
        {"scheduler": "none", "optimizer": "sgd", "nesterov": True, "momentum": 0.9},
        {"hflip": 0.5, "rotation": 10.0},
        3,
        2,
        3,
        id="none-sgd-nesterov-augment",
    ),
    pytest.param(
        {"scheduler": "step", "step_size": 1, "gamma": 0.5, "optimizer": "adam"}, None, 3, 2, 3, id="step-adam"
    ),
    # early stopping: min_delta 10 means val_loss never improves after epoch 1, so with
    # patience 2 both runs stop after epoch 3 of 4, the resumed one in its first epoch
    pytest.param(
        {
            "scheduler": "reduce-on-plateau",
            "plateau_patience": 0,
            "gamma": 0.5,
            "optimizer": "adamw",
            "monitor": "val_loss",
            "patience": 2,
            "min_delta": 10.0,
        },
        {"vflip": 0.5, "zoom": 0.1},
        4,
        2,
        3,
        id="plateau-adamw-augment-early-stop",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("recipe, augment, epochs, split, expected_rows", EXTEND_CASES)
def test_resume_continues_exactly(small_root, tmp_path, recipe, augment, epochs, split, expected_rows):
    def config(n):
        c = tiny_config(small_root, epochs=n, batch_size=4, **recipe)
        c["model"]["layers"] = tiny_layers(dropout=0.3)
        if augment:
            c["data"]["augment"] = augment
        return c

    whole = train(config(epochs), out=tmp_path / "whole", quiet=True)
    part = train(config(split), out=tmp_path / "parts", quiet=True)
    assert len(metric_rows(part)) == split
    resumed = train(resume=part / "last.pt", overrides=[f"train.epochs={epochs}"], out=tmp_path / "ignored", quiet=True)
    assert resumed == part  # the same run folder, continued
    assert not (tmp_path / "ignored").exists()
    assert sorted(p.name for p in (tmp_path / "parts" / "tiny").iterdir()) == ["1"]
    assert len(metric_rows(whole)) == expected_rows
    assert metric_rows(resumed) == metric_rows(whole)
    assert torch.load(resumed / "last.pt", weights_only=True)["epoch"] == expected_rows
    assert (
        torch.load(resumed / "best.pt", weights_only=True)["epoch"]
        == torch.load(whole / "best.pt", weights_only=True)["epoch"]
    )  # ties are broken the same way
    assert yaml.safe_load((resumed / "config.yaml").read_text())["train"]["epochs"] == epochs


def epoch_finished(run: Path) -> bool:
    """metrics.csv has a row and history.png exists: the epoch's last.pt has been written."""
    try:
        return (run / "history.png").exists() and len((run / "metrics.csv").read_text().splitlines()) >= 2
    except OSError:
        return False


def train_with_real_ctrl_c(config: dict, out: Path) -> Path:
    """Send this process a real SIGINT once the run has finished an epoch; return the run folder."""
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for run in out.glob("*/*"):
                if epoch_finished(run):
                    os.kill(os.getpid(), signal.SIGINT)
                    return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    with ctrl_c_raises():
        watcher.start()
        try:
            with pytest.raises(TrainingInterrupted) as info:
                train(config, out=out, quiet=True)
        finally:
            stop.set()
            watcher.join()
    message = str(info.value)
    assert "--resume" in message and "last.pt" in message
    return info.value.run_dir


INTERRUPT_CASES = [
    pytest.param(
        {"scheduler": "cosine", "warmup_epochs": 1.0, "optimizer": "adamw", "weight_decay": 0.01},
        id="cosine-warmup-adamw",
    ),
    pytest.param(
        {"scheduler": "one-cycle", "optimizer": "sgd", "momentum": 0.9, "nesterov": True}, id="one-cycle-sgd-nesterov"
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", INTERRUPT_CASES)
def test_resume_after_ctrl_c_matches_uninterrupted_run(small_root, tmp_path, recipe):
    """Schedules whose shape depends on train.epochs: interrupt for real instead of changing epochs."""
    config = tiny_config(small_root, epochs=3, batch_size=4, **recipe)
    config["model"]["layers"] = tiny_layers(dropout=0.3)
    config["data"]["augment"] = {"hflip": 0.5, "shear": 5.0}
    whole = train(config, out=tmp_path / "whole", quiet=True)
    interrupted = train_with_real_ctrl_c(config, tmp_path / "parts")
    held = torch.load(interrupted / "last.pt", weights_only=True)["epoch"]
    assert 1 <= held < 3
    resumed = train(resume=interrupted / "last.pt", out=tmp_path / "parts", quiet=True)
    assert resumed == interrupted
    assert metric_rows(resumed) == metric_rows(whole)
    assert len(metric_rows(whole)) == 3


@pytest.mark.slow
def test_resume_one_cycle_with_more_epochs_is_handled(small_root, tmp_path):
    part = train(
        tiny_config(small_root, epochs=1, batch_size=4, scheduler="one-cycle"), out=tmp_path / "runs", quiet=True
    )
    try:
        train(resume=part / "last.pt", overrides=["train.epochs=2"], quiet=True)
    except UserError:
        return  # a clear refusal is fine
    assert len(metric_rows(part)) == 2


def test_resume_from_best_pt_is_a_user_error(base):
    before = (base.first / "metrics.csv").read_bytes()
    with pytest.raises(UserError, match="last.pt"):
        train(resume=base.first / "best.pt", quiet=True)
    assert (base.first / "metrics.csv").read_bytes() == before


# ============================================================================ recipes

OPTIMIZERS = ["sgd", "adam", "adamw", "rmsprop"]
SCHEDULERS = ["none", "step", "cosine", "one-cycle", "reduce-on-plateau"]


@pytest.fixture(scope="module")
def one_batch_loader(small_root):
    """12 cached training images, one batch per epoch, through the real dataset and sampler."""
    spec = load_data(load_config({"data": {"root": str(small_root), "image_size": 16}}))
    decoded = decode_all(spec.train, (16, 16), 3, kind="ram", cache_dir=None, workers=0)
    dataset = ImageDataset(spec.train, (16, 16), 3, decoded=decoded)
    return make_loader(dataset, 12, shuffle=True, seed=0, workers=0), spec


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_scheduler_and_loss_trains(one_batch_loader, tmp_path, optimizer, scheduler):
    loader, spec = one_batch_loader
    norm = device_mod.norm_tensors(spec.mean, spec.std, torch.device("cpu"))
    for loss, outputs in (("cross_entropy", "num_classes"), ("bce", 1)):
        t = load_config(
            {
                "train": {
                    "optimizer": optimizer,
                    "scheduler": scheduler,
                    "loss": loss,
                    "epochs": 2,
                    "lr": 0.01,
                    "step_size": 1,
                    "plateau_patience": 0,
                    "monitor": "val_loss",
                    "warmup_epochs": 1.0 if scheduler in ("cosine", "none") else 0.0,
                }
            }
        ).train
        torch.manual_seed(0)
        infos = trace_layers(tiny_layers(outputs), [3, 16, 16], 2)
        model = build_from_infos(infos)
        kind = loss_kind(t.loss, infos[-1].output_shape[0], 2)
        assert kind == loss
        assert loss_kind("auto", infos[-1].output_shape[0], 2) == kind  # auto picks by the head
        criterion = Criterion(kind, None, 0.0)
        opt = make_optimizer(model, OptimizerSettings.of(t))
        schedule = LRSchedule(opt, ScheduleSettings.of(t), len(loader))
        before = [p.detach().clone() for p in model.parameters()]
        for epoch in range(1, t.epochs + 1):
            loader.batch_sampler.set_epoch(epoch)
            stats = train_one_epoch(
                model,
                loader,
                criterion=criterion,
                stepper=Stepper(model, opt, schedule),
                feed=Feed(device=torch.device("cpu"), norm=norm),
                desc="test",
            )
            assert math.isfinite(stats["train_loss"]) and stats["train_loss"] > 0, (loss, epoch)
            schedule.step_epoch(stats["train_loss"])
        assert schedule.step_count == t.epochs * len(loader)
        assert math.isfinite(schedule.lr) and schedule.lr >= 0
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters())), loss


@pytest.mark.parametrize(
    "train_options, data_options",
    [
        ({"label_smoothing": 0.1, "grad_clip": 0.5, "class_weights": "balanced"}, {}),
        ({"class_weights": {"a": 2.0}}, {"sampler": "balanced"}),
    ],
)
def test_loss_and_sampler_options_train(base, image_root, tmp_path, train_options, data_options):
    config = tiny_config(image_root, epochs=1, lr=0.02, **train_options)
    config["data"].update(data_options)
    run = train(config, out=tmp_path / "runs", quiet=True)
    rows = metric_rows(run)
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train_loss"]))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    for key, value in train_options.items():
        assert saved["train"][key] == value
    # the same pictures and recipe without the options (the base run) trains differently
    assert rows[0]["train_loss"] != metric_rows(base.first)[0]["train_loss"]


def test_class_weights_with_unknown_class_is_a_config_error(image_root, tmp_path):
    with pytest.raises(ConfigError) as info:
        train(tiny_config(image_root, class_weights={"a": 2.0, "zebra": 3.0}), out=tmp_path / "runs", quiet=True)
    assert "train.class_weights.zebra" in str(info.value) and "a, b" in str(info.value)


@pytest.mark.slow
def test_bce_with_one_output_trains_and_predicts(image_root, tmp_path):
    config = tiny_config(image_root, epochs=2, loss="bce", lr=0.02)
    config["model"]["layers"] = tiny_layers(1)
    run = train(config, out=tmp_path / "runs", quiet=True)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["meta"]["loss"] == "bce" and ckpt["meta"]["outputs"] == 1
    model = cnnzoo.load(run / "best.pt", device="cpu")
    images = sorted((image_root / "validation").rglob("*.png"))
    records = model.predict([str(p) for p in images], top_k=2, unknown=False)  # the class, as validation counts
    assert len(records) == len(images) == 8
    for record in records:
        assert record["label"] in ("a", "b")
        assert [t["label"] for t in record["top_k"]] in (["a", "b"], ["b", "a"])
        assert sum(t["probability"] for t in record["top_k"]) == pytest.approx(1.0)
    correct = sum(r["label"] == Path(r["image"]).parent.name for r in records) / len(records)
    assert correct == pytest.approx(float(ckpt["metrics"]["val_acc"]))  # same pixels, same answers


def test_bce_with_three_classes_is_a_config_error(tmp_path):
    root = make_image_tree(
        tmp_path / "three", train={"a": 2, "b": 2, "c": 2}, validation={"a": 1, "b": 1, "c": 1}, size=16
    )
    config = tiny_config(root, loss="bce")  # a head per class: bce refused
    with pytest.raises(ConfigError) as info:
        train(config, out=tmp_path / "runs", quiet=True)
    assert "train.loss" in str(info.value) and "3 classes" in str(info.value)
    config["model"]["layers"] = tiny_layers(1)  # one output cannot tell three classes apart
    with pytest.raises(UserError, match="1 outputs but there are 3 classes"):
        train(config, out=tmp_path / "runs", quiet=True)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_early_stopping_stops_and_says_so(image_root, tmp_path, capsys):
    # val_acc can never rise by more than min_delta=1.0, so only epoch 1 "improves"
    config = tiny_config(image_root, epochs=5, patience=1, min_delta=1.0)
    run = train(config, out=tmp_path / "runs", quiet=False)
    out = capsys.readouterr().out
    rows = metric_rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert "early stopping" in out and "not improved for 1 epochs" in out
    # epoch 2 ties epoch 1's accuracy with a lower loss: it takes best.pt, but is no progress
    assert rows[0]["val_acc"] == rows[1]["val_acc"] and float(rows[1]["val_loss"]) < float(rows[0]["val_loss"])
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == 2
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2


def test_monitor_auto_watches_val_map_on_multi_label_data_and_stays_auto_in_the_config():
    from cnnzoo.training.loop import BestEpoch
    from cnnzoo.training.setup import check_task_settings

    t = load_config({"train": {}}).train
    check_task_settings(t, multi_label=True)
    assert t.monitor == "auto"
    assert BestEpoch.of(t, multi_label=True).monitor == "val_map" and BestEpoch.of(t).monitor == "val_acc"


# ============================================================================ loggers


@pytest.mark.slow
def test_a_logger_registered_in_the_table_is_opened_and_told_of_every_epoch(image_root, tmp_path, monkeypatch):
    """Adding a logger is a class, one line in LOGGERS and its name among train.loggers' values;
    this one lives here, and a real run of one epoch opens it, tells it the epoch and closes it."""
    from typing import Literal

    from cnnzoo.config import schema
    from cnnzoo.training import loggers
    from cnnzoo.training.events import EpochEnd, RunStart

    seen: list = []

    class ToyLogger:
        def __init__(self, run: RunStart, lr: float):
            seen.append(("open", run.run_dir.name, run.classes, run.resumed_at, lr))

        @classmethod
        def require(cls) -> None:
            seen.append("require")

        @classmethod
        def open(cls, run: RunStart, t) -> ToyLogger:
            return cls(run, t.lr)  # the one setting it reads

        def epoch_end(self, end: EpochEnd) -> None:
            seen.append(("epoch", end.epoch, round(end.row["val_acc"], 6)))

        def close(self) -> None:
            seen.append("close")

    monkeypatch.setitem(loggers.LOGGERS, "toy", ToyLogger)
    monkeypatch.setattr(schema, "LoggerName", Literal["csv", "tensorboard", "mlflow", "toy"])
    run = train(tiny_config(image_root, epochs=1, loggers=["csv", "toy"]), out=tmp_path / "runs", quiet=True)
    val_acc = round(float(metric_rows(run)[0]["val_acc"]), 6)
    assert seen == ["require", ("open", "1", ["a", "b"], None, 0.01), ("epoch", 1, val_acc), "close"]


def test_every_logger_name_the_config_takes_is_in_the_table():
    from typing import get_args

    from cnnzoo.config.schema import LoggerName
    from cnnzoo.training.loggers import ALWAYS_KEPT, LOGGERS

    assert set(get_args(LoggerName)) == {ALWAYS_KEPT, *LOGGERS}
    assert list(LOGGERS)[-1] == "mlflow"  # last: it uploads history.png once drawn for the last time


def _best_after(monitor: str, epochs: list[tuple[float, float]], min_delta: float = 0.0) -> tuple[int, list[bool]]:
    from cnnzoo.training.loop import BestEpoch

    best = BestEpoch(monitor, min_delta=min_delta)
    moved = [best.update({"val_acc": acc, "val_loss": loss}, epoch) for epoch, (acc, loss) in enumerate(epochs, 1)]
    return best.epoch, moved


def test_best_epoch_breaks_ties_by_the_other_figure_and_prefers_the_later_epoch():
    # (val_acc, val_loss): 36 validation images, accuracy stuck at 35/36 from epoch 2 on
    epochs = [(0.90, 0.50), (0.972, 0.40), (0.972, 0.30), (0.972, 0.35), (0.95, 0.10), (0.972, 0.30)]
    assert _best_after("val_acc", epochs) == (6, [True, True, True, False, False, True])
    # monitoring the loss, an equal loss goes to the higher accuracy, then the later epoch
    assert _best_after("val_loss", [(0.8, 0.3), (0.9, 0.3), (0.85, 0.3), (0.9, 0.3), (0.5, 0.2)])[0] == 5
    assert _best_after("val_loss", [(0.8, 0.3), (0.9, 0.3), (0.85, 0.3), (0.9, 0.3)])[0] == 4
    # a gain within min_delta is no progress, but with a lower loss it is the better checkpoint
    assert _best_after("val_acc", [(0.90, 0.5), (0.905, 0.4), (0.905, 0.45)], min_delta=0.01)[0] == 2


@pytest.mark.slow
def test_best_pt_on_a_tied_accuracy_is_the_epoch_with_the_lower_loss(image_root, tmp_path, capsys):
    run = train(tiny_config(image_root, epochs=6), out=tmp_path / "runs", quiet=True)
    rows = metric_rows(run)
    top = max(float(r["val_acc"]) for r in rows)
    tied = [r for r in rows if float(r["val_acc"]) == top]
    assert len(tied) >= 2  # 8 validation images: the tiny network reaches 100% and stays there
    expected = min(tied, key=lambda r: (float(r["val_loss"]), -int(r["epoch"])))
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["epoch"] == int(expected["epoch"]) and best["epoch"] != int(tied[0]["epoch"])
    assert (
        "warning: the validation split has 8 images: one image moves val_acc by 12.5 points, so epochs "
        "often tie (ties go to the lower val_loss)"
    ) in capsys.readouterr().err


def test_cuda_device_on_a_cpu_machine_is_a_config_error(image_root, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="train.device"):
        train(tiny_config(image_root, device="cuda"), out=tmp_path / "runs", quiet=True)
    with pytest.raises(ConfigError, match="train.device"):
        train(tiny_config(image_root), device="cuda:0", out=tmp_path / "runs", quiet=True)
    assert not (tmp_path / "runs").exists()


# ============================================================================ atomic checkpoints


def test_save_atomic_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_atomic({"w": torch.arange(5)}, path)
    save_atomic({"w": torch.arange(7)}, path)
    assert files_under(tmp_path) == ["ckpt.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(7))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's 0600


def test_save_atomic_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_atomic({"w": torch.arange(5)}, path)
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):  # pickle says AttributeError for a local lambda
        save_atomic({"w": torch.zeros(1000), "bad": lambda: 0}, path)  # cannot pickle a lambda
    assert path.read_bytes() == before
    assert files_under(tmp_path) == ["ckpt.pt"]
    with pytest.raises((pickle.PicklingError, AttributeError)):  # pickle says AttributeError for a local lambda
        save_atomic({"bad": lambda: 0}, tmp_path / "new.pt")
    assert files_under(tmp_path) == ["ckpt.pt"]


# ============================================================================ Ctrl-C


@pytest.mark.slow
def test_ctrl_c_saves_last_pt_and_resume_finishes(image_root, tmp_path, isolated_home):
    config = tiny_config(image_root, epochs=500, scheduler="reduce-on-plateau")
    config["name"] = "long"
    config_path = tmp_path / "long.yaml"
    config_path.write_text(yaml.safe_dump(config))
    runs = tmp_path / "runs"
    env = {**os.environ, "CNNZOO_HOME": str(isolated_home)}
    proc = subprocess.Popen(
        cnnzoo_command("train", "--config", config_path, "--out", runs, "-q"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # as from a terminal, even when this test runs in a background job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    run = runs / "long" / "1"
    try:
        deadline = time.monotonic() + 180
        while not epoch_finished(run):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "--resume" in err and "last.pt" in err
    assert "Traceback" not in err
    last = torch.load(run / "last.pt", weights_only=True)
    held = last["epoch"]
    assert held >= 1 and "optimizer" in last
    assert len(metric_rows(run)) >= held
    assert not [name for name in files_under(run) if name.startswith(".")]  # save_atomic cleaned up

    resumed = train(resume=run / "last.pt", overrides=[f"train.epochs={held + 1}"], quiet=True)
    assert resumed == run
    assert [int(r["epoch"]) for r in metric_rows(run)] == list(range(1, held + 2))
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == held + 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The image_root fixture's pictures and an uninterrupted 3-epoch run of the tiny config on them:
    the reference both Ctrl-C cases compare with (trained once)."""
    folder = tmp_path_factory.mktemp("three-epochs")
    root = write_images(folder / "images")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNZOO_HOME", str(folder / "home"))
        whole = train(tiny_config(root, epochs=3), out=folder / "whole", quiet=True)
    return SimpleNamespace(root=root, whole=whole)


@pytest.mark.slow
@pytest.mark.parametrize("at", ["metrics", "checkpoints"])
def test_ctrl_c_at_any_epoch_end_step_resumes_with_every_metrics_row(trained, tmp_path, monkeypatch, at):
    """Ctrl-C pressed as epoch 2's metrics.csv or its checkpoints are written: the resumed run
    still has one row per epoch, equal to an uninterrupted run's."""
    from cnnzoo.training import callbacks as loggers

    image_root, whole = trained.root, trained.whole
    target = loggers.MetricsCSV if at == "metrics" else loggers.Checkpoints
    original = target.epoch_end

    def epoch_end(self, end):
        if end.epoch == 2:
            raise KeyboardInterrupt
        return original(self, end)

    monkeypatch.setattr(target, "epoch_end", epoch_end)
    with pytest.raises(TrainingInterrupted) as info:
        train(tiny_config(image_root, epochs=3), out=tmp_path / "cut", quiet=True)
    monkeypatch.setattr(target, "epoch_end", original)
    run = train(resume=info.value.run_dir / "last.pt", quiet=True)
    assert metric_rows(run) == metric_rows(whole)


@pytest.mark.slow
def test_interrupt_message_names_the_epoch_last_pt_holds(image_root, tmp_path, monkeypatch):
    import matplotlib.figure

    original = matplotlib.figure.Figure.savefig
    calls = []

    def savefig(self, *args, **kwargs):  # Ctrl-C pressed while epoch 2's history.png is drawn
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    monkeypatch.setattr(HistoryPlot, "interval", 0.0)  # draw after every epoch
    with pytest.raises(TrainingInterrupted) as info:
        train(tiny_config(image_root, epochs=4), out=tmp_path / "runs", quiet=True)
    held = torch.load(info.value.run_dir / "last.pt", weights_only=True)["epoch"]
    assert held == 2
    assert f"holds epoch {held}" in str(info.value)


# ============================================================================ the real data set


def test_clothing_data_loads(clothing_root):
    cfg = load_config({"data": {"root": str(clothing_root), "image_size": 64}})
    spec = load_data(cfg)
    assert len(spec.classes) == 10
    assert spec.classes == sorted(spec.classes)
    assert (len(spec.train), len(spec.val)) == (3068, 341)
    assert spec.test is None
    assert set(spec.train.labels) == set(range(10)) and set(spec.val.labels) == set(range(10))
