"""Training: the loop, the recipe pieces (optimizer, schedule, loss) and the parts of a run.

Read it from :func:`train` down: :func:`prepare` resolves the config and data, builds the
model and the recipe and opens the run folder into a :class:`Job`; :func:`fit` runs
epochs of :func:`train_one_epoch` and :func:`validate` and hands each epoch to the
callbacks of :mod:`cnnzoo.loggers` (checkpoints, metrics.csv, plots, TensorBoard).
Under torchrun the same code runs in every process; :mod:`cnnzoo.distributed` holds
what differs (sharded data, reduced metrics, rank 0 alone writing).

Reproducibility: every epoch reseeds torch/NumPy/Python from ``(seed, epoch)`` and the
data order and augmentation depend only on ``(seed, epoch, batch)``, so on CPU the same
config gives the same metrics, and a resumed run continues exactly where the
uninterrupted one would have been.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt_io
from . import data as data_mod
from . import distributed, loggers, metrics
from .backbones import absolute_weight_paths, backbone_of
from .config import Config, TrainConfig, dump_config, load_config
from .console import console
from .device import (Feed, amp_dtype, choose_amp, measure_amp, norm_tensors, pick_device, predict_loader,
                     prefers_channels_last)
from .errors import ConfigError, UserError
from .layers import build_from_infos, layer_records, trace_layers
from .loggers import Callback, EpochEnd, require_tensorboard
from .transfer import TransferStages, stage_plan


class TrainingInterrupted(Exception):
    """Ctrl-C during training; ``last.pt`` has been saved."""

    def __init__(self, message: str, run_dir: Path):
        super().__init__(message)
        self.run_dir = run_dir


# ----------------------------------------------------------------------------- recipe pieces

def param_groups(model: nn.Module, t: TrainConfig) -> list[dict[str, Any]]:
    """The head at ``lr``; a backbone, frozen parts included (they may thaw later), at ``backbone_lr``."""
    backbone = backbone_of(model)
    if backbone is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": t.lr}]
    inside = {id(p) for p in backbone.parameters()}
    head = [p for p in model.parameters() if id(p) not in inside and p.requires_grad]
    return [{"params": head, "lr": t.lr},
            {"params": list(backbone.parameters()), "lr": t.backbone_learning_rate()}]


def make_optimizer(model: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    params = param_groups(model, t)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0,
                               weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.RMSprop(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


class LRSchedule:
    """Per-step learning rate: linear warm-up, then none/step/cosine/one-cycle; or plateau per epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, t: TrainConfig, steps_per_epoch: int):
        self.optimizer, self.t = optimizer, t
        self.steps_per_epoch = steps_per_epoch
        self.total = t.epochs * steps_per_epoch
        self.warmup = round(t.warmup_epochs * steps_per_epoch)
        self.step_count = 0
        self.plateau = None
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]  # head, then backbone
        if t.scheduler == "one-cycle":
            pct = self.warmup / self.total if self.warmup else 0.3
            self.torch_schedule = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=list(self.base_lrs), total_steps=self.total,
                pct_start=min(max(pct, 0.01), 0.99))
        elif t.scheduler == "reduce-on-plateau":
            mode = "max" if t.monitor == "val_acc" else "min"
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=mode, factor=t.gamma, patience=t.plateau_patience)
            self.torch_schedule = None
            self._warm(0)
        else:
            self.torch_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self.factor)

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.t.scheduler == "step":
            return self.t.gamma ** ((step // self.steps_per_epoch) // self.t.step_size)
        if self.t.scheduler == "cosine":
            progress = (step - self.warmup) / max(1, self.total - self.warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    def _warm(self, step: int) -> None:
        if step < self.warmup:
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base * (step + 1) / self.warmup
        elif step == self.warmup and self.warmup:
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base

    def step_batch(self) -> None:
        self.step_count += 1
        if self.torch_schedule is not None:
            if self.step_count < self.total or self.t.scheduler != "one-cycle":
                self.torch_schedule.step()
        else:
            self._warm(self.step_count)

    def step_epoch(self, monitored: float) -> None:
        if self.plateau is not None and self.step_count >= self.warmup:
            self.plateau.step(monitored)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def backbone_lr(self) -> Optional[float]:
        groups = self.optimizer.param_groups
        return float(groups[1]["lr"]) if len(groups) > 1 else None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"step_count": self.step_count, "steps_per_epoch": self.steps_per_epoch}
        if self.torch_schedule is not None:
            state["torch"] = self.torch_schedule.state_dict()
            if "lr_lambdas" in state["torch"]:  # our factor is a method: rebuilt from the config
                state["torch"]["lr_lambdas"] = [None] * len(state["torch"]["lr_lambdas"])
        if self.plateau is not None:
            state["plateau"] = self.plateau.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = state["step_count"]
        saved_steps = state.get("steps_per_epoch", self.steps_per_epoch)
        # resumed with another number of processes (or batch size): the same point of the
        # schedule, counted in this run's steps
        rescaled = saved_steps != self.steps_per_epoch
        if rescaled:
            self.step_count = round(self.step_count * self.steps_per_epoch / saved_steps)
        if self.torch_schedule is not None and "torch" in state:
            saved = dict(state["torch"])
            # the plan (length, phases) comes from the current config, so that a resume with
            # more epochs re-plans the schedule instead of running off its end
            for key in ("total_steps", "_schedule_phases"):
                saved.pop(key, None)
            self.torch_schedule.load_state_dict(saved)
            if rescaled:
                self.torch_schedule.last_epoch = self.step_count
        if self.plateau is not None and "plateau" in state:
            self.plateau.load_state_dict(state["plateau"])


def class_weight_vector(setting: Any, classes: list[str], counts: list[int]) -> Optional[torch.Tensor]:
    """``balanced`` gives N / (K * n_c) (scikit-learn's rule); a mapping names classes."""
    if setting == "none":
        return None
    if setting == "balanced":
        total, k = sum(counts), len(classes)
        return torch.tensor([total / (k * max(1, n)) for n in counts], dtype=torch.float32)
    unknown = [c for c in setting if c not in classes]
    if unknown:
        raise ConfigError(f"train.class_weights.{unknown[0]}: no such class; classes are {', '.join(classes)}")
    return torch.tensor([float(setting.get(c, 1.0)) for c in classes], dtype=torch.float32)


class Criterion(nn.Module):
    """The training loss: cross-entropy over K logits, or BCE over one logit for two classes."""

    def __init__(self, kind: str, weights: Optional[torch.Tensor], label_smoothing: float):
        super().__init__()
        self.kind, self.label_smoothing = kind, label_smoothing
        if kind == "bce":
            pos_weight = None if weights is None else (weights[1] / weights[0]).view(1)
            self.loss = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        else:
            self.loss = nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.kind == "bce":
            target = labels.float() * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
            return self.loss(logits[:, 0].float(), target)
        return self.loss(logits.float(), labels)


def loss_kind(setting: str, outputs: int, num_classes: int) -> str:
    if setting == "auto":
        return "bce" if outputs == 1 else "cross_entropy"
    if setting == "bce" and (outputs != 1 or num_classes != 2):
        raise ConfigError(f"train.loss: bce needs a one-output head over 2 classes; this network has "
                          f"{outputs} outputs for {num_classes} classes (use cross_entropy or dense: "
                          f"{{out_features: 1}})")
    if setting == "cross_entropy" and outputs == 1:
        raise ConfigError("train.loss: cross_entropy needs one output per class, the network has one "
                          "output; use bce (or auto) or out_features: num_classes")
    return setting


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


# ----------------------------------------------------------------------------- the loop

class Stepper:
    """One optimizer step from a loss: backward (scaled for fp16), clipping, step, schedule
    (none when the caller sets the rate itself, as lr-find does)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Optional[LRSchedule],
                 scaler=None, grad_clip: Optional[float] = None):
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.scaler, self.grad_clip = scaler, grad_clip

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step_batch()


def train_one_epoch(net: nn.Module, loader, criterion: nn.Module, stepper: Stepper, feed: Feed,
                    desc: str) -> dict[str, float]:
    """One pass over ``loader``; ``net`` is the model, or its trainable part on cached features
    (in DDP, wrapped). Loss, accuracy and speed are totals over all processes."""
    net.train()
    device = feed.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    wait = 0.0
    bar = console.bar(len(loader), desc)
    start = time.perf_counter()
    iterator = iter(loader)
    step = 0
    while True:
        t_wait = time.perf_counter()
        try:
            images, labels = next(iterator)
        except StopIteration:
            break
        wait += time.perf_counter() - t_wait
        if len(labels) == 0:
            continue
        x = feed.inputs(images)
        y = labels.to(device, non_blocking=True)
        with feed.autocast():
            logits = net(x)
            loss = criterion(logits, y)
        stepper.step(loss)
        n = len(y)
        loss_sum += loss.detach() * n
        correct += (metrics.predictions(logits.detach()) == y).sum()
        seen += n
        step += 1
        if bar.disable is False and (step % 5 == 0 or step == len(loader)):
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.1%}",
                            img_s=f"{seen / elapsed:.0f}", refresh=False)
        bar.update(1)
    bar.close()
    seconds = distributed.all_max(time.perf_counter() - start, device)
    loss_total, correct_total, seen = distributed.all_sum([loss_sum.item(), correct.item(), seen], device)
    return {"train_loss": loss_total / max(1, seen), "train_acc": correct_total / max(1, seen),
            "train_seconds": seconds, "images_per_s": seen / seconds if seconds else 0.0,
            "data_wait": wait / seconds if seconds else 0.0}


def validate(net: nn.Module, loader, feed: Feed, num_classes: int) -> tuple[dict[str, float], torch.Tensor]:
    """Loss, accuracy and the confusion matrix; in DDP each process scores its share and the
    sums are reduced, so the figures equal one process's over the whole split."""
    logits, labels = predict_loader(net, loader, feed, console.bar(len(loader), "  validate"))
    predicted = metrics.predictions(logits) if len(labels) else labels
    confusion = metrics.confusion_counts(labels, predicted, num_classes)
    confusion = distributed.all_sum_tensor(confusion.to(feed.device)).cpu()
    loss_sum = metrics.plain_loss_sum(logits, labels).item() if len(labels) else 0.0
    loss_sum, n = distributed.all_sum([loss_sum, len(labels)], feed.device)
    n = max(1.0, n)
    return {"val_loss": loss_sum / n, "val_acc": confusion.diagonal().sum().item() / n}, confusion


def _overrides_from(overrides: Any, extra: dict[str, Any]) -> list[str]:
    import yaml

    items: list[str] = []
    if isinstance(overrides, dict):
        extra = {**overrides, **extra}
    elif overrides:
        items.extend(overrides)
    for key, value in extra.items():
        dumped = yaml.safe_dump(value, default_flow_style=True).strip()
        if dumped.endswith("\n...") or dumped.endswith("..."):
            dumped = dumped.rsplit("\n", 1)[0]
        items.append(f"{key.replace('__', '.')}={dumped}")
    return items


def build_for_data(cfg: Config, spec: data_mod.DataSpec, pretrained: bool = False,
                   log: Callable[[str], None] = print):
    """Fill model.input and model.num_classes from the data, then trace and build.

    ``pretrained`` loads the weights a ``backbone`` layer names (a new run does; a resumed
    run and a benchmark do not need them).
    """
    num_classes = len(spec.classes)
    if cfg.model.num_classes is not None and cfg.model.num_classes != num_classes:
        raise ConfigError(f"model.num_classes: {cfg.model.num_classes}, but the data has {num_classes} "
                          f"classes ({', '.join(spec.classes)}); remove model.num_classes to use the data's")
    cfg.model.num_classes = num_classes
    cfg.model.input = [spec.channels, *spec.image_size]
    infos = trace_layers(cfg.model.layers, cfg.model.input, num_classes)
    return infos, build_from_infos(infos, pretrained, log)


class BestEpoch:
    """The epoch ``best.pt`` holds, and early stopping's count of epochs without progress.

    Progress is the monitored metric beating its best so far by more than ``min_delta``; such
    an epoch takes best.pt. So does one that is no worse on the monitored metric and no worse
    on the other validation figure (val_loss when monitoring val_acc, val_acc when monitoring
    val_loss): on a small validation split accuracy ties often, and the later epoch with the
    lower loss is the better checkpoint. Only progress resets the patience count.
    """

    def __init__(self, t: TrainConfig, saved: Optional[dict[str, Any]] = None):
        self.monitor, self.maximize = t.monitor, t.monitor == "val_acc"
        self.other = "val_loss" if self.maximize else "val_acc"
        self.min_delta, self.patience = t.min_delta, t.patience
        saved = saved or {}
        self.value = saved.get("best_value")  # the monitored figure of the epoch best.pt holds
        self.other_value = saved.get("best_other")  # None in a last.pt from before ties were broken
        self.reference = saved.get("progress_value", self.value)  # what progress has to beat
        self.epoch = saved.get("best_epoch", 0)
        self.bad_epochs = saved.get("bad_epochs", 0)

    def _at_least(self, a: float, b: float, maximize: bool) -> bool:
        return a >= b if maximize else a <= b

    def update(self, val: dict[str, float], epoch: int) -> bool:
        """Record an epoch's validation figures; True when best.pt should now hold this epoch."""
        value, other = val[self.monitor], val[self.other]
        progress = self.reference is None or (value > self.reference + self.min_delta if self.maximize
                                              else value < self.reference - self.min_delta)
        no_worse = (self.value is not None and self.other_value is not None
                    and self._at_least(value, self.value, self.maximize)
                    and self._at_least(other, self.other_value, not self.maximize))
        if progress:
            self.reference, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if progress or no_worse:
            self.value, self.other_value, self.epoch = value, other, epoch
        return progress or no_worse

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def text(self, digits: int = 1) -> str:
        if self.value is None:
            return "n/a"
        return f"{100 * self.value:.{digits}f}%" if self.maximize else f"{self.value:.4f}"

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.value, "best_other": self.other_value, "progress_value": self.reference,
                "best_epoch": self.epoch, "bad_epochs": self.bad_epochs}


SMALL_VALIDATION = 100  # images; below it one image moves val_acc by more than a point


def warn_small_validation(images: int, monitor: str) -> None:
    """Say when one validation image moves val_acc by more than a point: epochs then tie often."""
    if images >= SMALL_VALIDATION:
        return
    how = ("ties go to the lower val_loss" if monitor == "val_acc"
           else "best.pt follows val_loss (train.monitor)")
    console.warn(f"the validation split has {images} images: one image moves val_acc by "
                 f"{100 / images:.1f} points, so epochs often tie ({how}); more validation images "
                 f"(data.val_fraction, or a larger validation/ folder) make the choice of best.pt steadier")


@dataclass
class Job:
    """Everything a training run holds while it fits: built by :func:`prepare`, run by :func:`fit`."""

    cfg: Config
    run_dir: Path
    model: nn.Sequential
    criterion: Criterion
    stepper: Stepper
    feed: Feed
    stages: TransferStages
    best: BestEpoch
    base_state: dict[str, Any]
    start_epoch: int = 1
    callbacks: list[Callback] = field(default_factory=list)  # rank 0's; none on the others

    @property
    def num_classes(self) -> int:
        return len(self.base_state["meta"]["classes"])

    def snapshot(self, epoch: int, row: Optional[dict], full: bool) -> dict[str, Any]:
        """A checkpoint: weights and what predict needs; ``full`` adds what resuming needs."""
        snap = {**self.base_state,
                "model_state": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "config": self.cfg.to_dict(), "epoch": epoch, "metrics": row or {}}
        if full:
            st = self.stepper
            snap.update(optimizer=st.optimizer.state_dict(), scheduler=st.schedule.state_dict(),
                        scaler=st.scaler.state_dict() if st.scaler is not None else {},
                        rng=rng_state(), trainer=self.best.state_dict())
        return snap


def _load_run_config(config: Any, overrides: list[str], resume: Optional[str | Path]):
    """The config of a new run, or of the run a ``last.pt`` belongs to (with its saved state)."""
    if resume is None:
        if config is None:
            raise UserError("no config given; use --config FILE (e.g. configs/quickstart.yaml)")
        return load_config(config, overrides), None, None
    state = ckpt_io.load_checkpoint(resume)
    if "optimizer" not in state:
        raise UserError(f"{resume}: has no optimizer state (best.pt?); resume from last.pt")
    cfg = load_config(state["config"], overrides)
    cfg.source_path = str(Path(resume).parent / "config.yaml")
    return cfg, state, Path(resume).resolve().parent


def _open_run_dir(runs_root: Path, cfg: Config, run_dir: Optional[Path]) -> Path:
    """Make the run folder (or reopen a resumed one) and write config.yaml. ``latest`` moves
    to a new run once it has a ``best.pt`` (:class:`cnnzoo.loggers.Checkpoints`); a resumed run
    that has one already takes it now."""
    if run_dir is None:
        run_dir = ckpt_io.next_run_dir(runs_root, cfg.run_name)
    distributed.record_run_dir(run_dir)
    try:
        ckpt_io.clean_stale_temporaries(run_dir)  # only this process writes here
        if (run_dir / "best.pt").is_file():
            ckpt_io.point_latest(ckpt_io.runs_root_of(run_dir), run_dir)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
    except OSError as exc:
        if ckpt_io.is_disk_full(exc):
            raise disk_full_error(run_dir, None) from None
        raise UserError(f"{run_dir}: cannot write the run folder ({exc.strerror or exc}); "
                        f"choose a folder you can write with --runs") from None
    console.log(f"run folder: {run_dir}")
    return run_dir


def disk_full_error(run_dir: Path, saved_epoch: Optional[int]) -> UserError:
    """The one line for a full disk (or quota) under a run folder: what ``last.pt`` still holds
    (checkpoints are replaced atomically, so it is whole) and how to go on."""
    ckpt_io.clean_stale_temporaries(run_dir)
    last = run_dir / "last.pt"
    if saved_epoch is None or not last.is_file():
        return UserError(f"disk full at {run_dir}; nothing was saved; free some space or choose "
                         f"another folder with --runs")
    return UserError(f"disk full at {run_dir}; last.pt holds epoch {saved_epoch}; free some space, then "
                     f"resume with: cnnzoo train --resume {last}")


def _record_data(cfg: Config, spec: data_mod.DataSpec) -> None:
    """The saved config records what was used, and works from any folder."""
    cfg.name = cfg.run_name
    if cfg.data.source == "folder" and cfg.data.root:
        cfg.data.root = spec.root
    cfg.data.channels, cfg.data.image_size = spec.channels, list(spec.image_size)
    absolute_weight_paths(cfg.model.layers)


def _place(model: nn.Sequential, t: TrainConfig, dev: torch.device) -> tuple[nn.Sequential, bool]:
    """The model on its device and memory format (BatchNorm synchronised when asked); channels_last?"""
    channels_last = prefers_channels_last(dev) if t.channels_last == "auto" else bool(t.channels_last)
    model.to(dev, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if t.sync_bn:
        model, what = distributed.sync_batchnorm(model, dev)
        console.log(what)
    return model, channels_last


def _dtype_name(dtype: Optional[torch.dtype]) -> str:
    return f"{str(dtype).replace('torch.', '')} autocast" if dtype is not None else "float32"


def _measured_amp(model: nn.Module, batch_shape: tuple[int, ...], outputs: int, dev: torch.device,
                  candidate: torch.dtype, channels_last: bool) -> Optional[torch.dtype]:
    """``train.amp: auto`` on CUDA: autocast only where a probe measures it faster (rank 0 decides)."""
    rates = measure_amp(model, batch_shape, outputs, dev, candidate, channels_last) if distributed.is_main() else None
    rates = distributed.broadcast_object(rates)
    chosen = choose_amp(rates, candidate)
    console.log(f"precision: {_dtype_name(chosen)} (train.amp auto; a forward+backward probe ran "
                f"{', '.join(f'{k} {v:,.0f}' for k, v in rates.items())} img/s)")
    return chosen


@dataclass
class Parts:
    """What training and the learning-rate range test both start from: the data, the model on
    its device, and the recipe (loss, optimizer), built from one config."""

    spec: data_mod.DataSpec
    infos: list
    model: nn.Sequential
    loss_kind: str
    loaders: data_mod.Loaders
    feed: Feed
    criterion: Criterion
    optimizer: torch.optim.Optimizer
    scaler: Optional[torch.amp.GradScaler]  # fp16 autocast only
    counts: list[int]
    stages_plan: Optional[tuple[int, int]]


def build_parts(cfg: Config, dev: torch.device, state: Optional[dict[str, Any]] = None) -> Parts:
    """Data (the cache built), model (pretrained weights, or ``state``'s), loss and optimizer.

    Every setting that can still be wrong is checked here, before a caller makes a run folder.
    """
    t = cfg.train
    autocast_dtype = amp_dtype(t.amp, dev)
    with distributed.main_first():  # a built-in data set is generated once
        spec = data_mod.load_data(cfg, console.log)
    _record_data(cfg, spec)
    infos, model = build_for_data(cfg, spec, pretrained=state is None, log=console.log)
    if state is not None:
        model.load_state_dict(state["model_state"])
    kind = loss_kind(t.loss, infos[-1].output_shape[0], len(spec.classes))
    augment = data_mod.build_augment(cfg.data.augment, spec.image_size)
    class_weight_vector(t.class_weights, spec.classes,
                        [spec.train.labels.count(k) for k in range(len(spec.classes))])
    stages_plan = stage_plan(model, t)
    require_tensorboard(t.loggers)

    loaders = data_mod.build_loaders(cfg, spec, augment, dev.type == "cuda")
    counts = loaders.train_set.class_counts(len(spec.classes))
    model, channels_last = _place(model, t, dev)
    if t.amp == "auto" and autocast_dtype is not None:
        autocast_dtype = _measured_amp(model, (t.batch_size, *cfg.model.input), infos[-1].output_shape[0],
                                       dev, autocast_dtype, channels_last)
    elif dev.type == "cuda":
        console.log(f"precision: {_dtype_name(autocast_dtype)} (train.amp: {t.amp})")
    feed = Feed(dev, norm_tensors(spec.mean, spec.std, dev), channels_last, autocast_dtype)
    criterion = Criterion(kind, class_weight_vector(t.class_weights, spec.classes, counts),
                          t.label_smoothing).to(dev)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 else None
    return Parts(spec, infos, model, kind, loaders, feed, criterion, make_optimizer(model, t), scaler, counts,
                 stages_plan)


def prepare(config: Any, overrides: list[str], out: str | Path, resume: Optional[str | Path]) -> Job:
    """Resolve the config, build the parts and the schedule, open the run folder, apply a resume.

    In a DDP run every process prepares the same job; only rank 0 opens the run folder.
    """
    cfg, state, run_dir = _load_run_config(config, overrides, resume)
    t = cfg.train
    ctx, dev = distributed.setup(pick_device(t.device), t.ddp_timeout)
    seed_everything(cfg.seed)
    console.log(f"cnnzoo: training {cfg.run_name} on {dev}"
                f"{f' ({ctx.world} processes, batch {t.batch_size} each)' if ctx.enabled else ''}")
    parts = build_parts(cfg, dev, state)
    model, spec, infos = parts.model, parts.spec, parts.infos
    schedule = LRSchedule(parts.optimizer, t, len(parts.loaders.train))
    stepper = Stepper(model, parts.optimizer, schedule, parts.scaler, t.grad_clip)

    # last: nothing above may leave a half-made folder
    run_dir = distributed.broadcast_object(_open_run_dir(Path(out), cfg, run_dir) if ctx.rank == 0 else None)
    stages = TransferStages(model, cfg, parts.stages_plan, parts.loaders, parts.feed, console.log)

    meta = {**spec.meta(), "loss": parts.loss_kind, "outputs": infos[-1].output_shape[0]}
    base_state = {"format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "layers": layer_records(infos),
                  "meta": meta}
    job = Job(cfg, run_dir, model, parts.criterion, stepper, parts.feed, stages, BestEpoch(t), base_state)
    if state is not None:
        _resume(job, state)
    if ctx.rank == 0:
        job.callbacks = loggers.callbacks(t, run_dir, spec.classes,
                                          loggers.Checkpoints(run_dir, job.snapshot, job.start_epoch - 1),
                                          job.start_epoch - 1 if state is not None else None)

    warn_small_validation(len(spec.val), t.monitor)  # once the run is certain to start: never before an error
    console.log("training images per class:\n" + data_mod.class_counts_text(spec.classes, parts.counts))
    console.log(f"model: {len(infos)} layers, {sum(p.numel() for p in model.parameters()):,} parameters; "
                f"loss {parts.loss_kind}; optimizer {t.optimizer} lr {t.lr:g}"
                f"{f' (backbone {t.backbone_learning_rate():g})' if stages.backbone else ''}; "
                f"scheduler {t.scheduler}")
    if job.start_epoch > 1:
        console.log(f"resuming at epoch {job.start_epoch} of {t.epochs}")
    elif ctx.rank == 0:  # Ctrl-C in epoch 1 can resume from here
        try:
            ckpt_io.save_atomic(job.snapshot(0, None, True), run_dir / "last.pt")
        except OSError as exc:
            if ckpt_io.is_disk_full(exc):
                raise disk_full_error(run_dir, None) from None
            raise
    return job


def _resume(job: Job, state: dict[str, Any]) -> None:
    """Continue from a ``last.pt``: optimizer, schedule, scaler, best epoch (the weights are in already)."""
    st = job.stepper
    st.optimizer.load_state_dict(state["optimizer"])
    st.schedule.load_state_dict(state["scheduler"])
    if st.scaler is not None and state.get("scaler"):
        st.scaler.load_state_dict(state["scaler"])
    job.best = BestEpoch(job.cfg.train, state["trainer"])
    job.start_epoch = state["epoch"] + 1


def _checkpoints(job: Job) -> Optional[loggers.Checkpoints]:
    return next((c for c in job.callbacks if isinstance(c, loggers.Checkpoints)), None)


def _close(job: Job) -> None:
    for callback in job.callbacks:
        callback.close()


def fit(job: Job) -> Path:
    """The epoch loop: train, validate, hand the epoch to the callbacks; Ctrl-C keeps a resumable last.pt."""
    cfg, t, schedule, stages = job.cfg, job.cfg.train, job.stepper.schedule, job.stages
    epoch = job.start_epoch
    wrapped, wrapped_key = None, None
    try:
        for epoch in range(job.start_epoch, t.epochs + 1):
            stages.enter(epoch)
            seed_everything(data_mod.mix_seed(cfg.seed, epoch, 0))
            stages.train_loader.batch_sampler.set_epoch(epoch)
            if wrapped_key != (id(stages.net), stages.trainable):  # DDP tracks a fixed set of trainable parameters
                wrapped = None  # the old wrapper lets go of the parameters before a new one takes them
                wrapped, wrapped_key = distributed.wrap(stages.net, job.feed.device), (id(stages.net), stages.trainable)
            lr, backbone_lr = schedule.lr, schedule.backbone_lr
            stats = train_one_epoch(wrapped, stages.train_loader, job.criterion, job.stepper, job.feed,
                                    f"epoch {epoch}/{t.epochs}")
            distributed.broadcast_buffers(job.model)  # every process validates rank 0's model
            val, confusion = validate(stages.net, stages.val_loader, job.feed.without_autocast(), job.num_classes)
            row = {"epoch": epoch, "lr": lr, "train_loss": stats["train_loss"], "train_acc": stats["train_acc"],
                   **val, "seconds": stats["train_seconds"], "images_per_s": stats["images_per_s"],
                   "data_wait": stats["data_wait"], "stage": stages.stage_at(epoch),
                   "trainable_params": sum(p.numel() for p in job.model.parameters() if p.requires_grad),
                   "backbone_lr": backbone_lr}
            schedule.step_epoch(val[t.monitor])
            improved = job.best.update(val, epoch)
            end = EpochEnd(epoch, row, improved, f"{job.best.text()} (epoch {job.best.epoch})", confusion,
                           job.best.epoch)
            for callback in job.callbacks:
                callback.epoch_end(end)
            if job.best.should_stop:
                console.log(f"early stopping: {t.monitor} has not improved for {t.patience} epochs")
                break
        _close(job)
    except KeyboardInterrupt:
        try:
            _close(job)
        except KeyboardInterrupt:
            pass
        saved = _checkpoints(job)
        held = f"; {job.run_dir / 'last.pt'} holds epoch {saved.saved_epoch}" if saved else ""
        raise TrainingInterrupted(
            f"interrupted during epoch {epoch}{held}. "
            f"Resume with: cnnzoo train --resume {job.run_dir / 'last.pt'}", job.run_dir) from None
    except Exception as exc:  # a write of metrics.csv, a checkpoint or a plot found the disk full
        saved = _checkpoints(job)
        if saved is None or not ckpt_io.is_disk_full(exc):
            raise
        raise disk_full_error(job.run_dir, saved.saved_epoch) from None
    console.log(f"done: best {t.monitor} {job.best.text(2)} at epoch {job.best.epoch}; run folder {job.run_dir}")
    console.log(f"next: cnnzoo evaluate {job.run_dir / 'best.pt'}   or   cnnzoo predict IMAGE")
    return job.run_dir


def train(config: Any = None, overrides: Any = None, *, device: Optional[str] = None,
          out: str | Path = "runs", quiet: bool = False, resume: Optional[str | Path] = None,
          **settings: Any) -> Path:
    """Train from a YAML path, mapping or Config; return the run folder.

    ``overrides`` are ``"dotted.key=value"`` strings (or a mapping); keyword arguments
    are overrides too, with ``__`` for dots: ``train("c.yaml", train__epochs=3)``.
    ``resume`` continues from a ``last.pt``: its run folder, config and states.
    Started by torchrun, each process trains its share (see :mod:`cnnzoo.distributed`).
    """
    override_list = _overrides_from(overrides, settings)
    if device:
        override_list.append(f"train.device={device}")
    with console.scoped(quiet):
        try:
            run_dir = fit(prepare(config, override_list, out, resume))
            distributed.barrier()  # no process leaves the group while another still uses it
            return run_dir
        finally:
            distributed.teardown()
