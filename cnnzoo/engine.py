"""Training: the loop, the recipe pieces (optimizer, schedule, loss) and the run folder.

Read :func:`train` from top to bottom: it resolves the config and data, builds the
model, then runs epochs of :func:`train_one_epoch` and :func:`validate`, writing
through :class:`Run`, the one object that prints and writes files (so that in a
multi-process run only rank 0 will own one).

Reproducibility: every epoch reseeds torch/NumPy/Python from ``(seed, epoch)`` and the
data order and augmentation depend only on ``(seed, epoch, batch)``, so on CPU the same
config gives the same metrics, and a resumed run continues exactly where the
uninterrupted one would have been.
"""

from __future__ import annotations

import csv
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt_io
from . import data as data_mod
from . import metrics
from .backbones import absolute_weight_paths, backbone_of
from .config import Config, TrainConfig, dump_config, load_config
from .device import Feed, amp_dtype, norm_tensors, pick_device, predict_loader, prefers_channels_last
from .errors import ConfigError, UserError
from .layers import build_from_infos, layer_records, trace_layers
from .transfer import TransferStages, stage_plan

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds",
                  "images_per_s", "data_wait", "stage", "trainable_params", "backbone_lr"]
TIMING_COLUMNS = ("seconds", "images_per_s", "data_wait")


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
        state: dict[str, Any] = {"step_count": self.step_count}
        if self.torch_schedule is not None:
            state["torch"] = self.torch_schedule.state_dict()
            if "lr_lambdas" in state["torch"]:  # our factor is a method: rebuilt from the config
                state["torch"]["lr_lambdas"] = [None] * len(state["torch"]["lr_lambdas"])
        if self.plateau is not None:
            state["plateau"] = self.plateau.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = state["step_count"]
        if self.torch_schedule is not None and "torch" in state:
            saved = dict(state["torch"])
            # the plan (length, phases) comes from the current config, so that a resume with
            # more epochs re-plans the schedule instead of running off its end
            for key in ("total_steps", "_schedule_phases"):
                saved.pop(key, None)
            self.torch_schedule.load_state_dict(saved)
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


# ----------------------------------------------------------------------------- the run folder

class Run:
    """A run folder and the console: the only place a training run prints or writes files."""

    plot_interval = 10.0  # seconds between redraws of history.png (a plot costs ~0.5 s)

    def __init__(self, run_dir: Path, quiet: bool = False):
        self.dir, self.quiet = run_dir, quiet
        self.metrics_path = run_dir / "metrics.csv"
        self._plotted_at = -math.inf
        ckpt_io.clean_stale_temporaries(run_dir)  # only this process writes here

    def log(self, message: str) -> None:
        if not self.quiet:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stdout)
            sys.stdout.flush()

    def bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr,
                    disable=True if self.quiet else None, dynamic_ncols=True)

    def write_config(self, cfg: Config) -> None:
        (self.dir / "config.yaml").write_text(dump_config(cfg))

    def read_metrics(self, up_to_epoch: Optional[int] = None) -> list[dict[str, str]]:
        if not self.metrics_path.exists():
            return []
        with open(self.metrics_path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [r for r in rows if up_to_epoch is None or int(r["epoch"]) <= up_to_epoch]

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.metrics_path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.metrics_path)

    def save(self, name: str, state: dict[str, Any]) -> None:
        ckpt_io.save_atomic(state, self.dir / name)

    def plot(self, rows: list[dict[str, Any]], final: bool = False) -> None:
        """Redraw history.png: at most every ``plot_interval`` seconds while training, and at the end."""
        from .plots import plot_history

        if not rows or (not final and time.monotonic() - self._plotted_at < self.plot_interval):
            return
        self._plotted_at = time.monotonic()
        try:
            plot_history(rows, self.dir / "history.png")
        except Exception as exc:  # a plot must never end a training run
            data_mod.warn(f"could not draw history.png: {exc}")


def _format_row(row: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key in METRIC_COLUMNS:
        value = row[key]
        if value is None:
            out[key] = ""
        elif isinstance(value, int):
            out[key] = str(value)
        else:
            out[key] = f"{value:.6g}" if key in TIMING_COLUMNS + ("lr", "backbone_lr") else f"{value:.6f}"
    return out


# ----------------------------------------------------------------------------- the loop

class Stepper:
    """One optimizer step from a loss: backward (scaled for fp16), clipping, step, schedule."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: LRSchedule,
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
        self.schedule.step_batch()


def train_one_epoch(net: nn.Module, loader, criterion: nn.Module, stepper: Stepper, feed: Feed,
                    run: "Run", desc: str) -> dict[str, float]:
    """One pass over ``loader``; ``net`` is the model, or its trainable part on cached features."""
    net.train()
    device = feed.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    wait = 0.0
    bar = run.bar(len(loader), desc)
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
    seconds = time.perf_counter() - start
    return {"train_loss": loss_sum.item() / max(1, seen), "train_acc": correct.item() / max(1, seen),
            "train_seconds": seconds, "images_per_s": seen / seconds if seconds else 0.0,
            "data_wait": wait / seconds if seconds else 0.0}


def validate(net: nn.Module, loader, feed: Feed, run: "Run") -> dict[str, float]:
    logits, labels = predict_loader(net, loader, feed, run.bar(len(loader), "  validate"))
    n = max(1, len(labels))
    return {"val_loss": metrics.plain_loss_sum(logits, labels).item() / n,
            "val_acc": (metrics.predictions(logits) == labels).sum().item() / n}


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
    """The monitored metric's best value and epoch, and early stopping's count of bad epochs."""

    def __init__(self, t: TrainConfig, saved: Optional[dict[str, Any]] = None):
        self.monitor, self.maximize = t.monitor, t.monitor == "val_acc"
        self.min_delta, self.patience = t.min_delta, t.patience
        saved = saved or {}
        self.value = saved.get("best_value")
        self.epoch = saved.get("best_epoch", 0)
        self.bad_epochs = saved.get("bad_epochs", 0)

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True when it is the best so far."""
        improved = self.value is None or (value > self.value + self.min_delta if self.maximize
                                          else value < self.value - self.min_delta)
        if improved:
            self.value, self.epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def text(self, digits: int = 1) -> str:
        if self.value is None:
            return "n/a"
        return f"{100 * self.value:.{digits}f}%" if self.maximize else f"{self.value:.4f}"

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.value, "best_epoch": self.epoch, "bad_epochs": self.bad_epochs}


@dataclass
class Job:
    """Everything a training run holds while it fits: built by :func:`prepare`, run by :func:`fit`."""

    cfg: Config
    run: "Run"
    model: nn.Sequential
    criterion: Criterion
    stepper: Stepper
    feed: Feed
    stages: TransferStages
    best: BestEpoch
    base_state: dict[str, Any]
    rows: list[dict[str, Any]]
    start_epoch: int = 1

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


def _open_run(runs_root: Path, cfg: Config, run_dir: Optional[Path], quiet: bool) -> "Run":
    """Make the run folder (or reopen a resumed one), point ``latest`` at it, write config.yaml."""
    if run_dir is None:
        run_dir = ckpt_io.next_run_dir(runs_root, cfg.run_name)
    else:
        runs_root = run_dir.parent.parent
    try:
        run = Run(run_dir, quiet)
        ckpt_io.point_latest(runs_root, run_dir)
        run.write_config(cfg)
    except OSError as exc:
        raise UserError(f"{run_dir}: cannot write the run folder ({exc.strerror or exc}); "
                        f"choose a folder you can write with --runs") from None
    run.log(f"run folder: {run_dir}")
    return run


def prepare(config: Any, overrides: list[str], out: str | Path, quiet: bool,
            resume: Optional[str | Path]) -> Job:
    """Resolve the config and data, build the model and recipe, open the run folder, apply a resume."""
    cfg, state, run_dir = _load_run_config(config, overrides, resume)
    t = cfg.train
    dev = pick_device(t.device)
    autocast_dtype = amp_dtype(t.amp, dev)
    channels_last = prefers_channels_last(dev) if t.channels_last == "auto" else bool(t.channels_last)
    seed_everything(cfg.seed)
    say = print if not quiet else (lambda *_: None)

    spec = data_mod.load_data(cfg, say)
    # the saved config records what was used, and works from any folder
    cfg.name = cfg.run_name
    if cfg.data.source == "folder" and cfg.data.root:
        cfg.data.root = spec.root
    cfg.data.channels, cfg.data.image_size = spec.channels, list(spec.image_size)
    absolute_weight_paths(cfg.model.layers)
    infos, model = build_for_data(cfg, spec, pretrained=state is None, log=say)
    if state is not None:
        model.load_state_dict(state["model_state"])
    kind = loss_kind(t.loss, infos[-1].output_shape[0], len(spec.classes))
    # settings that can still be wrong are checked before a run folder exists
    augment = data_mod.build_augment(cfg.data.augment, spec.image_size)
    class_weight_vector(t.class_weights, spec.classes,
                        [spec.train.labels.count(k) for k in range(len(spec.classes))])
    stages_plan = stage_plan(model, t)

    say(f"cnnzoo: training {cfg.run_name} on {dev}"
        f"{' with ' + str(autocast_dtype).replace('torch.', '') + ' autocast' if autocast_dtype else ''}")
    loaders = data_mod.build_loaders(cfg, spec, augment, dev.type == "cuda", say, not quiet)
    counts = loaders.train_set.class_counts(len(spec.classes))
    model.to(dev, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    feed = Feed(dev, norm_tensors(spec.mean, spec.std, dev), channels_last, autocast_dtype)
    criterion = Criterion(kind, class_weight_vector(t.class_weights, spec.classes, counts),
                          t.label_smoothing).to(dev)
    optimizer = make_optimizer(model, t)
    schedule = LRSchedule(optimizer, t, len(loaders.train))
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 else None
    stepper = Stepper(model, optimizer, schedule, scaler, t.grad_clip)

    run = _open_run(Path(out), cfg, run_dir, quiet)  # last: nothing above may leave a half-made folder
    stages = TransferStages(model, cfg, stages_plan, loaders, feed, run.log, not quiet)

    meta = {**spec.meta(), "loss": kind, "outputs": infos[-1].output_shape[0]}
    base_state = {"format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "layers": layer_records(infos),
                  "meta": meta}
    job = Job(cfg, run, model, criterion, stepper, feed, stages, BestEpoch(t), base_state, [])
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        job.best = BestEpoch(t, state["trainer"])
        job.start_epoch = state["epoch"] + 1
        job.rows = run.read_metrics(state["epoch"])
        run.write_metrics(job.rows)

    total_params = sum(p.numel() for p in model.parameters())
    run.log("training images per class:\n" + data_mod.class_counts_text(spec.classes, counts))
    run.log(f"model: {len(infos)} layers, {total_params:,} parameters; loss {kind}; "
            f"optimizer {t.optimizer} lr {t.lr:g}"
            f"{f' (backbone {t.backbone_learning_rate():g})' if stages.backbone else ''}; scheduler {t.scheduler}")
    if job.start_epoch > 1:
        run.log(f"resuming at epoch {job.start_epoch} of {t.epochs}")
    else:
        run.save("last.pt", job.snapshot(0, None, True))  # Ctrl-C in epoch 1 can resume from here
    return job


def _epoch_line(row: dict[str, Any], t: TrainConfig, best: BestEpoch) -> str:
    return (f"epoch {row['epoch']:>3}/{t.epochs}  train loss {row['train_loss']:.4f} acc "
            f"{100 * row['train_acc']:5.1f}%  val loss {row['val_loss']:.4f} acc "
            f"{100 * row['val_acc']:5.1f}%  lr {row['lr']:.2g}  {row['images_per_s']:.0f} img/s  "
            f"data wait {100 * row['data_wait']:.0f}%  {row['seconds']:.1f}s  "
            f"best {t.monitor} {best.text()} (epoch {best.epoch})")


def fit(job: Job) -> Path:
    """The epoch loop: train, validate, record, checkpoint; Ctrl-C keeps a resumable last.pt."""
    cfg, run, t, schedule = job.cfg, job.run, job.cfg.train, job.stepper.schedule
    epoch = job.start_epoch
    saved_epoch = job.start_epoch - 1  # what last.pt holds
    try:
        for epoch in range(job.start_epoch, t.epochs + 1):
            job.stages.enter(epoch)
            seed_everything(data_mod.mix_seed(cfg.seed, epoch, 0))
            job.stages.train_loader.batch_sampler.set_epoch(epoch)
            lr, backbone_lr = schedule.lr, schedule.backbone_lr
            stats = train_one_epoch(job.stages.net, job.stages.train_loader, job.criterion, job.stepper,
                                    job.feed, run, f"epoch {epoch}/{t.epochs}")
            val = validate(job.stages.net, job.stages.val_loader, job.feed.without_autocast(), run)
            row = {"epoch": epoch, "lr": lr, "train_loss": stats["train_loss"], "train_acc": stats["train_acc"],
                   **val, "seconds": stats["train_seconds"], "images_per_s": stats["images_per_s"],
                   "data_wait": stats["data_wait"], "stage": job.stages.stage_at(epoch),
                   "trainable_params": sum(p.numel() for p in job.model.parameters() if p.requires_grad),
                   "backbone_lr": backbone_lr}
            schedule.step_epoch(val[t.monitor])
            improved = job.best.update(val[t.monitor], epoch)
            job.rows.append(_format_row(row))
            run.write_metrics(job.rows)
            if improved:
                run.save("best.pt", job.snapshot(epoch, row, False))
            run.save("last.pt", job.snapshot(epoch, row, True))
            saved_epoch = epoch
            run.plot(job.rows)
            run.log(_epoch_line(row, t, job.best))
            if job.best.should_stop:
                run.log(f"early stopping: {t.monitor} has not improved for {t.patience} epochs")
                break
        run.plot(job.rows, final=True)
    except KeyboardInterrupt:
        # Ctrl-C can land between a temporary file's creation and save_atomic's own clean-up
        ckpt_io.clean_stale_temporaries(run.dir)
        try:
            run.plot(job.rows, final=True)
        except KeyboardInterrupt:
            pass
        raise TrainingInterrupted(
            f"interrupted during epoch {epoch}; {run.dir / 'last.pt'} holds epoch {saved_epoch}. "
            f"Resume with: cnnzoo train --resume {run.dir / 'last.pt'}", run.dir) from None
    run.log(f"done: best {t.monitor} {job.best.text(2)} at epoch {job.best.epoch}; run folder {run.dir}")
    run.log(f"next: cnnzoo evaluate {run.dir / 'best.pt'}   or   cnnzoo predict IMAGE")
    return run.dir


def train(config: Any = None, overrides: Any = None, *, device: Optional[str] = None,
          out: str | Path = "runs", quiet: bool = False, resume: Optional[str | Path] = None,
          **settings: Any) -> Path:
    """Train from a YAML path, mapping or Config; return the run folder.

    ``overrides`` are ``"dotted.key=value"`` strings (or a mapping); keyword arguments
    are overrides too, with ``__`` for dots: ``train("c.yaml", train__epochs=3)``.
    ``resume`` continues from a ``last.pt``: its run folder, config and states.
    """
    override_list = _overrides_from(overrides, settings)
    if device:
        override_list.append(f"train.device={device}")
    return fit(prepare(config, override_list, out, quiet, resume))
