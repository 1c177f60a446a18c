"""The training recipe of issue #20: MixUp/CutMix with soft targets, the weight average (EMA),
gradient accumulation."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

import cnnzoo
from cnnzoo.config import load_config
from cnnzoo.training.ema import WeightAverage
from cnnzoo.training.loop import Stepper, optimizer_steps
from cnnzoo.training.mixing import Mixer, MixSettings, soft_targets
from cnnzoo.training.recipe import Criterion
from cnnzoo.training.run import train

from support.cli import run_cnnzoo
from support.images import make_image_tree
from support.runs import metric_rows, tiny_config


def train_config(**train):
    return load_config({"train": train}).train


def mix_settings(**train) -> MixSettings:
    return MixSettings.of(train_config(**train))


def batch(n: int = 8, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 16, 16, generator=g), torch.arange(n) % classes


# ============================================================================ MixUp / CutMix


def lam_of(targets: torch.Tensor, plain: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of image 0's own target in its mixed target (its partner, image 7, has another class)."""
    c = labels[0]
    return ((targets[0, c] - plain[7, c]) / (plain[0, c] - plain[7, c])).item()


@pytest.mark.parametrize("recipe", [{"mixup": 0.4}, {"cutmix": 1.0}, {"mixup": 0.2, "cutmix": 1.0}])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixed_targets_sum_to_one_and_match_the_pixels(recipe, smoothing):
    mixer = Mixer(mix_settings(**recipe, label_smoothing=smoothing), num_classes=3, seed=0)
    mixer.set_epoch(1)
    x, y = batch()
    plain = soft_targets(y, 3, smoothing)
    for _ in range(10):
        images, targets = mixer.mix(x, y)
        assert targets.shape == (8, 3)
        assert torch.allclose(targets.sum(1), torch.ones(8))
        lam = lam_of(targets, plain, y)
        # every row: lam of its own (smoothed) target, 1 - lam of its partner's (the batch reversed)
        assert torch.allclose(targets, lam * plain + (1 - lam) * plain.flip(0), atol=1e-5)
        if recipe == {"mixup": 0.4}:
            assert torch.allclose(images, x * lam + x.flip(0) * (1 - lam), atol=1e-5)
        elif recipe == {"cutmix": 1.0}:  # lam is the share of the image's own pixels
            assert (images == x).float().mean().item() == pytest.approx(lam, abs=1e-5)
            assert torch.equal(images.where(images != x, x.flip(0)), x.flip(0))


@pytest.mark.parametrize("recipe", [{"mixup": 0.4}, {"cutmix": 1.0}])
def test_multi_hot_targets_blend_per_class_and_score_with_bce(recipe):
    mixer = Mixer(mix_settings(**recipe, label_smoothing=0.1), num_classes=3, seed=0)
    mixer.set_epoch(1)
    x, _ = batch()
    multi_hot = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]] * 2, dtype=torch.float32)
    plain = multi_hot * 0.9 + 0.05  # what the multi-label loss trains toward, smoothed by 0.1
    images, targets = mixer.mix(x, multi_hot)
    # image 0 is [1, 0, 1] and its partner (image 7) is [0, 0, 0]: class 0's target is lam's share
    lam = ((targets[0, 0] - 0.05) / 0.9).item()
    assert 0 < lam < 1 and torch.allclose(targets, lam * plain + (1 - lam) * plain.flip(0), atol=1e-5)
    if "cutmix" in recipe:
        assert (images == x).float().mean().item() == pytest.approx(lam, abs=1e-5)
    criterion = Criterion("bce_multi_label", None, label_smoothing=0.1)
    logits = torch.randn(8, 3)
    expected = nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert criterion.soft(logits, targets).item() == pytest.approx(expected.item())


def test_mixing_repeats_per_epoch_and_stops_in_the_last_epochs():
    t = mix_settings(mixup=0.4, epochs=5, mix_off_epochs=2)
    x, y = batch()
    first, again = Mixer(t, num_classes=3, seed=7), Mixer(t, num_classes=3, seed=7)
    first.set_epoch(2)
    again.set_epoch(2)
    assert torch.equal(first.mix(x, y)[1], again.mix(x, y)[1])
    first.set_epoch(3)
    assert first.mix(x, y) is not None
    first.set_epoch(4)
    assert first.mix(x, y) is None  # epochs 4 and 5 of 5 train on plain batches


def test_mix_prob_leaves_some_batches_plain():
    mixer = Mixer(mix_settings(cutmix=1.0, mix_prob=0.5), num_classes=3, seed=0)
    mixer.set_epoch(1)
    x, y = batch()
    plain = sum(mixer.mix(x, y) is None for _ in range(200))
    assert 70 < plain < 130


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("kind, outputs", [("cross_entropy", 3), ("bce", 1)])
def test_soft_targets_give_the_loss_of_hard_labels(smoothing, kind, outputs):
    """Label smoothing is folded into the soft targets once, not twice: an unmixed soft target
    costs what its hard label costs."""
    classes = 3 if kind == "cross_entropy" else 2
    criterion = Criterion(kind, torch.tensor([1.0, 2.0, 0.5][:classes]), smoothing)
    logits = torch.randn(6, outputs, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(6) % classes
    hard = criterion(logits, labels)
    soft = criterion.soft(logits, soft_targets(labels, classes, smoothing))
    if kind == "cross_entropy":  # torch weighs soft targets per class, hard ones per sample: unweighted here
        criterion = Criterion(kind, None, smoothing)
        hard, soft = criterion(logits, labels), criterion.soft(logits, soft_targets(labels, classes, smoothing))
    assert soft.item() == pytest.approx(hard.item(), rel=1e-5)


# ============================================================================ accumulation


def test_accumulated_batches_make_the_step_of_one_big_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    twin = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    twin.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 12), torch.arange(8) % 3
    big = Stepper(twin, torch.optim.SGD(twin.parameters(), lr=0.5), None)
    assert big.step(nn.functional.cross_entropy(twin(x), y))
    small = Stepper(model, torch.optim.SGD(model.parameters(), lr=0.5), None, accumulate=2)
    assert not small.step(nn.functional.cross_entropy(model(x[:4]), y[:4]), final=False)
    assert small.step(nn.functional.cross_entropy(model(x[4:]), y[4:]), final=False)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_the_schedule_counts_optimizer_steps(image_root, tmp_path):
    run = train(tiny_config(image_root, accumulate=2, scheduler="cosine", epochs=2), out=tmp_path, quiet=True)
    last = torch.load(run / "last.pt", weights_only=True)
    batches = 3  # 24 training images in batches of 8
    assert last["scheduler"]["steps_per_epoch"] == optimizer_steps(batches, 2) == 2
    assert last["scheduler"]["step_count"] == 4


# ============================================================================ EMA


def test_average_warms_up_and_follows_the_weights():
    model = nn.Linear(2, 1)
    average = WeightAverage(model, train_config(ema={"decay": 0.9}).ema)
    assert average.decay_at(0) == pytest.approx(0.1) and average.decay_at(1000) == 0.9
    for _ in range(3):
        with torch.no_grad():
            model.weight.add_(1.0)
        average.update(model)
    assert not torch.equal(average.state_dict()["weight"], model.weight.detach())
    with average.swapped_in(model):
        assert torch.equal(model.weight.detach(), average.state_dict()["weight"])
    assert not torch.equal(model.weight.detach(), average.state_dict()["weight"])


EMA = {"ema": {"decay": 0.9}, "epochs": 1}


@pytest.mark.slow
def test_best_pt_holds_the_average_validation_scored(image_root, tmp_path):
    run = train(tiny_config(image_root, **EMA), out=tmp_path, quiet=True)
    best = torch.load(run / "best.pt", weights_only=True)
    last = torch.load(run / "last.pt", weights_only=True)
    for name, weights in best["model_state"].items():
        assert torch.equal(weights, last["ema"]["weights"][name])
    assert any(not torch.equal(best["model_state"][k], last["model_state"][k]) for k in best["model_state"])
    row = metric_rows(run)[-1]
    report = cnnzoo.evaluate(run / "best.pt", split="validation", progress=False)
    assert report["accuracy"] == pytest.approx(float(row["val_acc"]), abs=1e-6)
    assert report["loss"] == pytest.approx(float(row["val_loss"]), rel=1e-4)


RECIPES = {
    "ema": {"ema": {"decay": 0.8}},
    "mixup+cutmix+ema+accumulate": {
        "ema": {"decay": 0.8},
        "mixup": 0.2,
        "cutmix": 1.0,
        "mix_prob": 0.7,
        "accumulate": 2,
        # a schedule that does not depend on the run's length (one-cycle's would differ from epoch 1)
        "scheduler": "step",
        "step_size": 1,
        "gamma": 0.5,
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECIPES))
def test_resume_continues_the_recipe_exactly(image_root, tmp_path, name):
    def config(epochs):
        cfg = tiny_config(image_root, **RECIPES[name], epochs=epochs, batch_size=4)
        cfg["data"]["augment"] = {"hflip": True, "rotation": 10}
        return cfg

    whole = train(config(3), out=tmp_path / "whole", quiet=True)
    part = train(config(2), out=tmp_path / "part", quiet=True)
    resumed = train(resume=part / "last.pt", overrides=["train.epochs=3"], quiet=True)
    assert metric_rows(resumed) == metric_rows(whole)
    a, b = (torch.load(r / "last.pt", weights_only=True) for r in (whole, resumed))
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key])
        assert torch.equal(a["ema"]["weights"][key], b["ema"]["weights"][key])
    assert a["ema"]["updates"] == b["ema"]["updates"]


@pytest.mark.slow
def test_two_processes_run_the_recipe(tmp_path):
    """DDP: accumulation (no_sync between steps), EMA, MixUp/CutMix and batch augmentation together;
    best.pt holds what validation scored."""
    images = make_image_tree(tmp_path / "images", train={"a": 21, "b": 13}, validation={"a": 7, "b": 4})
    cfg = tiny_config(images, **RECIPES["mixup+cutmix+ema+accumulate"], epochs=2)
    cfg["data"]["augment"] = {"hflip": True, "rotation": 10, "color_jitter": {"brightness": 0.2}}
    cfg["data"]["cache"] = "auto"
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(cfg))
    done = run_cnnzoo(["train", "-c", "ddp.yaml", "--nproc", "2", "--runs", "runs"], tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "tiny" / "1"
    best = torch.load(run / "best.pt", weights_only=True)
    row = metric_rows(run)[best["epoch"] - 1]
    report = cnnzoo.evaluate(run / "best.pt", split="validation", progress=False)
    assert report["accuracy"] == pytest.approx(float(row["val_acc"]), abs=1e-6)


def test_feature_cache_says_mixing_needs_pixels():
    from cnnzoo.training.feature_cache import _flip_versions

    t = mix_settings(cutmix=1.0)
    reason, versions, _ = _flip_versions(load_config({"data": {"augment": {"hflip": True}}}).data.augment, t.keys_on)
    assert reason.startswith("train.cutmix changes the pixels every epoch") and versions == []
    assert mix_settings(cutmix=1.0, mix_prob=0.0).keys_on == []
    assert _flip_versions(load_config({}).data.augment, [])[0] is None


# ============================================================================ compile


def test_compile_is_chosen_only_when_the_run_gains_with_the_compile_counted():
    from cnnzoo.runtime.device import choose_compile

    rates = {"eager": 100.0, "compiled": 200.0, "compile_seconds": 20.0}
    assert not choose_compile(rates, images=1000)  # 10 s eager vs 25 s compiled
    assert choose_compile(rates, images=100_000)  # 1000 s vs 520 s
    assert not choose_compile({**rates, "compiled": 96.0}, images=10**9)  # the 0.96x on this CPU


@pytest.mark.slow
def test_compiled_training_keeps_plain_checkpoints_and_auto_measures(image_root, tmp_path, capsys):
    run = train(tiny_config(image_root, compile=True, epochs=1), out=tmp_path / "on")
    state = torch.load(run / "best.pt", weights_only=True)["model_state"]
    assert not any("_orig_mod" in key for key in state)
    assert cnnzoo.load(run / "best.pt").predict(sorted(image_root.rglob("*.png"))[:1])
    train(tiny_config(image_root, compile="auto", epochs=1), out=tmp_path / "auto")
    assert "(train.compile auto; a forward+backward probe ran" in capsys.readouterr().out


@pytest.mark.slow
def test_the_shipped_recipe_config_trains_with_every_ingredient_on(image_root, tmp_path):
    """configs/clothing_recipe.yaml on small pictures: batch augmentation, TrivialAugment,
    MixUp/CutMix and EMA together; last.pt carries the average, best.pt is what validation scored."""
    from support.cli import CONFIGS

    overrides = [f"data.root={image_root}", "data.image_size=16", "train.epochs=2", "train.mix_off_epochs=1"]
    cfg = load_config(CONFIGS / "clothing_recipe.yaml", overrides)
    assert cfg.data.augment.trivialaugment and cfg.train.mixup and cfg.train.cutmix and cfg.train.ema
    run = train(CONFIGS / "clothing_recipe.yaml", [*overrides, "train.batch_size=8"], out=tmp_path, quiet=True)
    last, best = (torch.load(run / name, weights_only=True) for name in ("last.pt", "best.pt"))
    assert last["ema"]["updates"] > 0 and len(metric_rows(run)) == 2
    report = cnnzoo.evaluate(run / "best.pt", split="validation", progress=False, tta=True, out=tmp_path / "eval")
    assert 0 <= report["accuracy"] <= 1
    row = metric_rows(run)[best["epoch"] - 1]
    plain = cnnzoo.evaluate(run / "best.pt", split="validation", progress=False, out=tmp_path / "plain")
    assert plain["accuracy"] == pytest.approx(float(row["val_acc"]), abs=1e-6)
