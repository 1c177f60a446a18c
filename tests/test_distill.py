"""Distillation (``train.distill``): the loss, the teacher's checks, both modes, and the runs
(another size and normalisation, ONNX, MixUp/CutMix, EMA, multi-label, resume) on small models
trained here."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import cnnzoo
from cnnzoo.config import load_config
from cnnzoo.errors import ConfigError
from cnnzoo.training import distill
from cnnzoo.training.run import train

from support.cli import invoke_cnnzoo, one_error_line
from support.images import make_image_tree, write_class_folders
from support.runs import metric_rows, tiny_config

# ============================================================================ the loss


def test_the_soft_loss_is_zero_where_the_student_agrees_and_scales_with_t_squared():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    for t in (1.0, 4.0):
        agree = distill.soft_loss(logits, torch.softmax(logits / t, 1), t, multi_label=False)
        assert agree.abs().item() < 1e-5
    other = torch.softmax(torch.randn(6, 4, generator=g), 1)
    loss = distill.soft_loss(logits, other, 2.0, multi_label=False)
    by_hand = (other * (other.log() - torch.log_softmax(logits / 2, 1))).sum(1).mean() * 4
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5) and loss.item() > 0


def test_multi_label_soft_targets_are_a_bernoulli_kl_per_class():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 3, generator=g)
    assert distill.soft_loss(logits, torch.sigmoid(logits / 3), 3.0, multi_label=True).abs().item() < 1e-5
    p, q = torch.rand(5, 3, generator=g), torch.sigmoid(logits / 3)
    by_hand = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean() * 9
    assert distill.soft_loss(logits, p, 3.0, multi_label=True).item() == pytest.approx(by_hand.item(), rel=1e-4)


def test_a_one_logit_head_is_read_as_two_classes():
    z = torch.tensor([[0.0], [2.0]])
    two = distill.class_logits(z, multi_label=False)
    assert torch.allclose(torch.softmax(two, 1)[:, 1], torch.sigmoid(z[:, 0]))


# ============================================================================ the config


def test_the_keys_load_from_set_and_their_ranges_are_refused_in_one_line():
    cfg = load_config({}, ["train.distill.teacher=runs/t/1/best.pt", "train.distill.weight=0.8"])
    assert cfg.train.distill and cfg.train.distill.weight == 0.8 and cfg.train.distill.temperature == 4.0
    assert not load_config({}).train.distill
    for key, value in (("weight", "1.5"), ("weight", "-0.1"), ("temperature", "0"), ("mode", "sometimes")):
        with pytest.raises(ConfigError, match=f"train.distill.{key}"):
            load_config({}, [f"train.distill.{key}={value}"])


def test_a_relative_teacher_is_read_beside_the_config_else_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "t.pt").write_bytes(b"x")
    path = tmp_path / "cfgs" / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"distill": {"teacher": "t.pt"}}}))
    assert load_config(path).train.distill.teacher == str(tmp_path / "cfgs" / "t.pt")
    path.write_text(yaml.safe_dump({"train": {"distill": {"teacher": "runs/x/1/best.pt"}}}))
    monkeypatch.chdir(tmp_path)
    assert load_config(path).train.distill.teacher == "runs/x/1/best.pt"


def test_a_teacher_turns_the_frozen_feature_cache_off_and_says_why():
    from cnnzoo.training.feature_cache import _flip_versions
    from cnnzoo.training.transfer import TransferSettings

    cfg = load_config({"data": {"augment": {"hflip": True}}}, ["train.distill.teacher=t.pt"])
    keys = TransferSettings.of(cfg).mixing
    assert keys == ("distill.teacher",)
    reason, flips, _ = _flip_versions(cfg.data.augment, keys)
    assert reason.startswith("train.distill.teacher needs each batch's images") and flips == []
    assert TransferSettings.of(load_config({})).mixing == ()


@pytest.mark.slow  # the command reads the images before it opens the teacher
def test_the_shipped_config_without_its_teacher_says_how_to_make_one(image_root, tmp_path):
    args = ["train", "-c", "clothing_distilled", "--data", image_root, "--epochs", "1"]
    line = one_error_line(invoke_cnnzoo(args, tmp_path))
    assert "train.distill.teacher: runs/clothing_transfer/1/best.pt not found" in line
    assert "cnnzoo train --config clothing_transfer" in line and "--set train.distill.teacher=PATH" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("content", [b"not a model at all", b""])
def test_a_teacher_that_cannot_be_loaded_is_one_line(image_root, tmp_path, content):
    (tmp_path / "teacher.pt").write_bytes(content)
    args = ["train", "-c", "quickstart", "--data", image_root, "--set", "train.distill.teacher=teacher.pt"]
    line = one_error_line(invoke_cnnzoo(args, tmp_path))
    assert "train.distill.teacher:" in line and "teacher.pt" in line


# ============================================================================ runs


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A teacher at 24 px with normalisation `none` (the student: 16 px, ImageNet's), its ONNX
    export, and a teacher of other classes."""
    base = tmp_path_factory.mktemp("teachers")
    root = make_image_tree(base / "images")
    cfg = tiny_config(root, epochs=3)
    cfg["name"], cfg["data"]["image_size"], cfg["data"]["normalize"] = "teacher", 24, "none"
    run = train(cfg, out=base / "runs", quiet=True)
    onnx = cnnzoo.export(run / "best.pt", "onnx", out=base / "teacher.onnx").path
    other = make_image_tree(base / "other", train={"a": 6, "c": 6}, validation={"a": 2, "c": 2})
    stranger = train({**tiny_config(other, epochs=1), "name": "stranger"}, out=base / "runs", quiet=True)
    return {"root": root, "checkpoint": run / "best.pt", "onnx": Path(onnx), "stranger": stranger / "best.pt"}


def student(teachers, teacher: str | None = None, **train_settings):
    cfg = tiny_config(teachers["root"], **train_settings)
    if teacher is not None:
        cfg["train"]["distill"] = {"teacher": str(teachers[teacher]), "weight": 0.7, "temperature": 2.0}
    return cfg


def test_the_teacher_changes_training_and_the_checkpoint_records_it(teachers, tmp_path):
    plain = train(student(teachers), out=tmp_path / "runs", quiet=True)
    taught = train(student(teachers, "checkpoint"), out=tmp_path / "runs", quiet=True)
    a, b = metric_rows(plain), metric_rows(taught)
    assert a[0]["train_loss"] != b[0]["train_loss"]
    assert "teacher_seconds" not in a[0] and float(metric_rows(taught, timing=True)[0]["teacher_seconds"]) > 0
    meta = torch.load(taught / "best.pt", weights_only=True)["meta"]
    digest = hashlib.sha256(teachers["checkpoint"].read_bytes()).hexdigest()
    expected = {"teacher": "best.pt", "sha256": digest, "weight": 0.7, "temperature": 2.0, "mode": "cached"}
    assert meta["distill"] == expected
    assert "distill" not in torch.load(plain / "best.pt", weights_only=True)["meta"]
    # the student predicts as any model does: its own size and normalisation, not the teacher's
    model = cnnzoo.load(taught / "best.pt")
    assert model.image_size == (16, 16) and model.mean != [0.0, 0.0, 0.0]


def test_weight_zero_trains_as_without_a_teacher(teachers, tmp_path):
    plain = train(student(teachers), out=tmp_path / "runs", quiet=True)
    cfg = student(teachers, "checkpoint")
    cfg["train"]["distill"]["weight"] = 0.0
    zero = train(cfg, out=tmp_path / "runs", quiet=True)
    assert metric_rows(plain) == metric_rows(zero)


@pytest.mark.parametrize("mode", ["cached", "live"])
@pytest.mark.parametrize("teacher", ["checkpoint", "onnx"])
def test_both_modes_with_a_checkpoint_or_onnx_teacher_mixing_and_the_average(teachers, tmp_path, mode, teacher):
    cfg = student(teachers, teacher, mixup=0.4, cutmix=1.0, ema={"decay": 0.9})
    cfg["train"]["distill"]["mode"] = mode
    cfg["data"]["augment"] = {"hflip": True, "rotation": 10}
    run = train(cfg, out=tmp_path / "runs", quiet=True)
    rows = metric_rows(run, timing=True)
    assert len(rows) == 2 and all(float(r["train_loss"]) > 0 for r in rows)
    meta = torch.load(run / "best.pt", weights_only=True)["meta"]["distill"]
    assert meta["mode"] == mode and meta["teacher"] == teachers[teacher].name
    if mode == "live":  # the teacher ran on every batch
        assert all(float(r["teacher_seconds"]) > 0 for r in rows)


def test_the_cached_answers_are_reused_by_the_next_run(teachers, tmp_path, isolated_home):
    cfg = student(teachers, "checkpoint")
    first = train(cfg, out=tmp_path / "runs", quiet=True)
    cached = sorted((isolated_home / "cache").glob("distill-*.npy"))
    assert len(cached) == 1
    second = train(cfg, out=tmp_path / "runs", quiet=True)
    assert metric_rows(first) == metric_rows(second)
    assert float(metric_rows(second, timing=True)[0]["teacher_seconds"]) == 0.0  # nothing ran


def test_a_teacher_of_other_classes_is_one_line_naming_the_difference(teachers, tmp_path):
    shutil.copy(teachers["stranger"], tmp_path / "stranger.pt")
    args = ["train", "-c", "quickstart", "--data", teachers["root"], "--set", "train.distill.teacher=stranger.pt"]
    line = one_error_line(invoke_cnnzoo(args, tmp_path))
    assert "train.distill.teacher: stranger.pt's classes differ from the data's" in line
    assert "lacks the data's ['b']" in line and "has ['c'] the data lacks" in line


def test_a_distilled_run_resumes_exactly_from_another_folder(teachers, tmp_path, monkeypatch):
    shutil.copy(teachers["checkpoint"], tmp_path / "teacher.pt")
    monkeypatch.chdir(tmp_path)

    def config(epochs):
        cfg = student(teachers, "checkpoint", epochs=epochs, batch_size=4, mixup=0.4, ema={"decay": 0.9})
        cfg["train"].update(scheduler="step", step_size=1, gamma=0.5)
        cfg["train"]["distill"]["teacher"] = "teacher.pt"  # relative to the working directory
        return cfg

    whole = train(config(3), out=tmp_path / "whole", quiet=True)
    part = train(config(2), out=tmp_path / "part", quiet=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    resumed = train(resume=part / "last.pt", overrides=["train.epochs=3"], quiet=True)
    assert metric_rows(resumed) == metric_rows(whole)
    a, b = (torch.load(r / "best.pt", weights_only=True) for r in (whole, resumed))
    assert all(torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])
    assert b["meta"]["distill"]["mode"] == "cached"
    assert b["config"]["train"]["distill"]["teacher"] == str(tmp_path / "teacher.pt")


@pytest.mark.slow
def test_a_multi_label_student_learns_from_a_multi_label_teacher(tmp_path):
    import csv
    import io

    folder = tmp_path / "tags"
    write_class_folders(folder, {"a": 8, "b": 8})
    files = sorted(f"{c}/{p.name}" for c in ("a", "b") for p in (folder / c).iterdir())
    tags = ["a", "a b", "b", "a b"] * 4
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "tags", "split"])
    writer.writerows([f, t, "validation" if i % 4 == 3 else "train"] for i, (f, t) in enumerate(zip(files, tags)))
    (folder / "labels.csv").write_text(buffer.getvalue())
    teacher = train({**tiny_config(folder / "labels.csv"), "name": "teacher"}, out=tmp_path / "runs", quiet=True)
    for mode in ("cached", "live"):
        cfg = tiny_config(folder / "labels.csv", mixup=0.4)
        cfg["train"]["distill"] = {"teacher": str(teacher / "best.pt"), "mode": mode}
        run = train(cfg, out=tmp_path / "runs", quiet=True)
        meta = torch.load(run / "best.pt", weights_only=True)["meta"]
        assert meta["task"] == "multi" and meta["distill"]["mode"] == mode
    single = tiny_config(make_image_tree(tmp_path / "single"))
    single["train"]["distill"] = {"teacher": str(teacher / "best.pt")}
    with pytest.raises(ConfigError, match="is a multi-label model and the data is single-label"):
        train(single, out=tmp_path / "runs", quiet=True)


def test_the_bench_prints_one_table_of_the_student_the_taught_student_and_the_teacher(teachers, tmp_path):
    from support.cli import run_script

    root = Path(__file__).resolve().parents[1]
    student_cfg = tmp_path / "student.yaml"
    student_cfg.write_text(yaml.safe_dump({**tiny_config(teachers["root"]), "name": "student"}))
    taught_cfg = tmp_path / "taught.yaml"
    taught_cfg.write_text(yaml.safe_dump({**student(teachers, "checkpoint"), "name": "taught"}))
    args = [str(root / "scripts" / "bench_distill.py"), "--data", teachers["root"], "--teacher", teachers["onnx"]]
    args += ["--epochs", "1", "--student", student_cfg, "--distilled", taught_cfg, "--out", tmp_path / "runs"]
    args += ["--seconds", "0.2"]  # each speed's timing window (3 s and 10 s by default)
    out = run_script([str(a) for a in args], tmp_path)
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in table] == ["model", "student", "distilled", "teacher"], out
    assert "held-out images: 8" in out and "live mode (train.distill.mode: live) would add about" in out
    assert "(separate)" in table[3] and "%" in table[2].split("|")[6]
    costs = run_script([*[str(a) for a in args], "--costs-only"], tmp_path)
    assert "live mode: the teacher is" in costs and "cached mode: one pass of 48 teacher views" in costs
    assert "teacher on 8 held-out images:" in costs and "on the 16 px image resized up" in costs
