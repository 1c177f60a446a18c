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
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt_io
from . import data as data_mod
from . import metrics
from .config import Config, TrainConfig, dump_config, load_config
from .errors import ConfigError, UserError
from .layers import build_from_infos, layer_records, trace_layers

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds",
                  "images_per_s", "data_wait"]
TIMING_COLUMNS = ("seconds", "images_per_s", "data_wait")


class TrainingInterrupted(Exception):
    """Ctrl-C during training; ``last.pt`` has been saved."""

    def __init__(self, message: str, run_dir: Path):
        super().__init__(message)
        self.run_dir = run_dir


# ----------------------------------------------------------------------------- recipe pieces

def pick_device(setting: str, key: str = "train.device") -> torch.device:
    """``auto`` | cpu | cuda | cuda:N | mps -> a device that exists here; ``key`` names the setting in errors."""
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise ConfigError(f"{key}: unknown device {setting!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: {setting} asked for, but this machine/torch build has no "
                              f"usable CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}: {setting} asked for, but there are only "
                              f"{torch.cuda.device_count()} GPUs")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{key}: mps asked for, but it is not available here; use --device cpu")
    return device


def prefers_channels_last(device: torch.device) -> bool:
    """channels_last measured faster for conv nets on CPU (oneDNN) and CUDA (tensor cores) alike."""
    return device.type in ("cpu", "cuda")


def amp_dtype(setting: str, device: torch.device) -> Optional[torch.dtype]:
    if device.type != "cuda":
        if setting in ("bf16", "fp16"):
            data_mod.warn(f"train.amp: {setting} applies on CUDA only; training in float32 on {device}")
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def make_optimizer(model: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
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
        if t.scheduler == "one-cycle":
            pct = self.warmup / self.total if self.warmup else 0.3
            self.torch_schedule = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=t.lr, total_steps=self.total, pct_start=min(max(pct, 0.01), 0.99))
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
            for group in self.optimizer.param_groups:
                group["lr"] = self.t.lr * (step + 1) / self.warmup
        elif step == self.warmup and self.warmup:
            for group in self.optimizer.param_groups:
                group["lr"] = self.t.lr

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
        out[key] = str(value) if isinstance(value, int) else f"{value:.6g}" if key in TIMING_COLUMNS + ("lr",) else f"{value:.6f}"
    return out


# ----------------------------------------------------------------------------- the loop

def train_one_epoch(model: nn.Module, loader, criterion: nn.Module, optimizer, schedule: LRSchedule,
                    scaler, device: torch.device, norm: tuple[torch.Tensor, torch.Tensor],
                    autocast_dtype, channels_last: bool, grad_clip: Optional[float], run: Run,
                    desc: str) -> dict[str, float]:
    model.train()
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
        x = data_mod.to_model_input(images, *norm, device, channels_last)
        y = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext():
            logits = model(x)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        schedule.step_batch()
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


@torch.inference_mode()
def predict_loader(model: nn.Module, loader, device: torch.device, norm: tuple[torch.Tensor, torch.Tensor],
                   autocast_dtype=None, channels_last: bool = False, bar=None) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits (float32, CPU) and labels of a loader, in loader order."""
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in loader:
        if len(labels):
            x = data_mod.to_model_input(images, *norm, device, channels_last)
            with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext():
                all_logits.append(model(x).float().cpu())
            all_labels.append(labels)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if not all_logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.int64)
    return torch.cat(all_logits), torch.cat(all_labels)


def validate(model, loader, device, norm, autocast_dtype, channels_last, run: Run) -> dict[str, float]:
    logits, labels = predict_loader(model, loader, device, norm, autocast_dtype, channels_last,
                                    run.bar(len(loader), "  validate"))
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


def build_for_data(cfg: Config, spec: data_mod.DataSpec):
    """Fill model.input and model.num_classes from the data, then trace and build."""
    num_classes = len(spec.classes)
    if cfg.model.num_classes is not None and cfg.model.num_classes != num_classes:
        raise ConfigError(f"model.num_classes: {cfg.model.num_classes}, but the data has {num_classes} "
                          f"classes ({', '.join(spec.classes)}); remove model.num_classes to use the data's")
    cfg.model.num_classes = num_classes
    cfg.model.input = [spec.channels, *spec.image_size]
    infos = trace_layers(cfg.model.layers, cfg.model.input, num_classes)
    return infos, build_from_infos(infos)


def build_loaders(cfg: Config, spec: data_mod.DataSpec, augment, dev: torch.device, run: Run):
    """Decode both splits once into the cache (unless ``data.cache: none``), then loaders over them."""
    cached = cfg.data.cache != "none"
    datasets = []
    for split in (spec.train, spec.val):
        decoded = None
        if cached:
            decoded = data_mod.decode_all(split, spec.image_size, spec.channels, cfg.data.cache,
                                          Path(cfg.data.cache_dir) if cfg.data.cache_dir else None,
                                          data_mod.cpu_count(), not run.quiet)
            run.log(f"cache {split.name}: {decoded.describe()}")
        datasets.append(data_mod.ImageDataset(split, spec.image_size, spec.channels, decoded,
                                              augment if split is spec.train else None))
    train_set, val_set = datasets
    workers = data_mod.choose_workers(cfg.data.workers, cached, augment is not None, dev.type == "cuda")
    pin = dev.type == "cuda"
    train_loader = data_mod.make_loader(train_set, cfg.train.batch_size, True, cfg.seed, workers,
                                        cfg.data.sampler == "balanced", pin)
    val_loader = data_mod.make_loader(val_set, cfg.train.batch_size * 2, False, cfg.seed,
                                      0 if cached else workers, False, pin)
    run.log(f"data: {len(train_set)} training and {len(val_set)} validation images, "
            f"{len(spec.classes)} classes, {spec.channels}x{spec.image_size[0]}x{spec.image_size[1]}, "
            f"cache {'on' if cached else 'off'}, {workers} loader workers")
    return train_set, train_loader, val_loader


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
    state = None
    if resume is not None:
        state = ckpt_io.load_checkpoint(resume)
        if "optimizer" not in state:
            raise UserError(f"{resume}: has no optimizer state (best.pt?); resume from last.pt")
        cfg = load_config(state["config"], override_list)
        cfg.source_path = str(Path(resume).parent / "config.yaml")
        run_dir = Path(resume).resolve().parent
    else:
        if config is None:
            raise UserError("no config given; use --config FILE (e.g. configs/quickstart.yaml)")
        cfg = load_config(config, override_list)
        run_dir = None
    t = cfg.train

    dev = pick_device(t.device)
    autocast_dtype = amp_dtype(t.amp, dev)
    channels_last = prefers_channels_last(dev) if t.channels_last == "auto" else bool(t.channels_last)
    seed_everything(cfg.seed)

    spec = data_mod.load_data(cfg, print if not quiet else (lambda *_: None))
    cfg.name = cfg.run_name
    if cfg.data.source == "folder" and cfg.data.root:
        cfg.data.root = spec.root  # the saved config works from any folder
    infos, model = build_for_data(cfg, spec)
    if state is not None:
        model.load_state_dict(state["model_state"])
    kind = loss_kind(t.loss, infos[-1].output_shape[0], len(spec.classes))
    # settings that can still be wrong are checked before a run folder exists
    augment = data_mod.build_augment(cfg.data.augment, spec.image_size)
    class_weight_vector(t.class_weights, spec.classes,
                        [spec.train.labels.count(k) for k in range(len(spec.classes))])

    runs_root = Path(out)
    if run_dir is None:
        run_dir = ckpt_io.next_run_dir(runs_root, cfg.run_name)
    else:
        runs_root = run_dir.parent.parent
    run = Run(run_dir, quiet)
    ckpt_io.point_latest(runs_root, run_dir)
    run.write_config(cfg)

    run.log(f"cnnzoo: training {cfg.run_name} on {dev}"
            f"{' with ' + str(autocast_dtype).replace('torch.', '') + ' autocast' if autocast_dtype else ''}"
            f" -> {run_dir}")
    train_set, train_loader, val_loader = build_loaders(cfg, spec, augment, dev, run)
    counts = train_set.class_counts(len(spec.classes))

    model.to(dev, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    criterion = Criterion(kind, class_weight_vector(t.class_weights, spec.classes, counts),
                          t.label_smoothing).to(dev)
    optimizer = make_optimizer(model, t)
    schedule = LRSchedule(optimizer, t, len(train_loader))
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 else None
    norm = data_mod.norm_tensors(spec.mean, spec.std, dev)

    trainer = {"best_value": None, "best_epoch": 0, "bad_epochs": 0}
    start_epoch = 1
    rows: list[dict[str, Any]] = []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        trainer = dict(state["trainer"])
        start_epoch = state["epoch"] + 1
        rows = run.read_metrics(state["epoch"])
        run.write_metrics(rows)

    total_params = sum(p.numel() for p in model.parameters())
    run.log("training images per class:\n" + data_mod.class_counts_text(spec.classes, counts))
    run.log(f"model: {len(infos)} layers, {total_params:,} parameters; loss {kind}; "
            f"optimizer {t.optimizer} lr {t.lr:g}; scheduler {t.scheduler}")
    if start_epoch > 1:
        run.log(f"resuming at epoch {start_epoch} of {t.epochs}")

    meta = {**spec.meta(), "loss": kind, "outputs": infos[-1].output_shape[0]}
    base_state = {"format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "layers": layer_records(infos),
                  "meta": meta}

    def snapshot(epoch: int, row: Optional[dict], full: bool) -> dict[str, Any]:
        snap = {**base_state, "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "config": cfg.to_dict(), "epoch": epoch, "metrics": row or {}}
        if full:
            snap.update(optimizer=optimizer.state_dict(), scheduler=schedule.state_dict(),
                        scaler=scaler.state_dict() if scaler is not None else {},
                        rng=rng_state(), trainer=dict(trainer))
        return snap

    if state is None:
        run.save("last.pt", snapshot(0, None, True))  # Ctrl-C in epoch 1 can resume from here
    maximize = t.monitor == "val_acc"
    epoch = start_epoch
    saved_epoch = start_epoch - 1  # what last.pt holds
    try:
        for epoch in range(start_epoch, t.epochs + 1):
            seed_everything(data_mod.mix_seed(cfg.seed, epoch, 0))
            train_loader.batch_sampler.set_epoch(epoch)
            lr = schedule.lr
            stats = train_one_epoch(model, train_loader, criterion, optimizer, schedule, scaler, dev,
                                    norm, autocast_dtype, channels_last, t.grad_clip, run,
                                    f"epoch {epoch}/{t.epochs}")
            val = validate(model, val_loader, dev, norm, autocast_dtype, channels_last, run)
            row = {"epoch": epoch, "lr": lr, "train_loss": stats["train_loss"], "train_acc": stats["train_acc"],
                   **val, "seconds": stats["train_seconds"], "images_per_s": stats["images_per_s"],
                   "data_wait": stats["data_wait"]}
            monitored = val[t.monitor]
            schedule.step_epoch(monitored)
            best = trainer["best_value"]
            improved = best is None or (monitored > best + t.min_delta if maximize
                                        else monitored < best - t.min_delta)
            if improved:
                trainer.update(best_value=monitored, best_epoch=epoch, bad_epochs=0)
            else:
                trainer["bad_epochs"] += 1
            rows.append(_format_row(row))
            run.write_metrics(rows)
            if improved:
                run.save("best.pt", snapshot(epoch, row, False))
            run.save("last.pt", snapshot(epoch, row, True))
            saved_epoch = epoch
            run.plot(rows)
            best_text = (f"{100 * trainer['best_value']:.1f}%" if maximize else f"{trainer['best_value']:.4f}")
            run.log(f"epoch {epoch:>3}/{t.epochs}  train loss {row['train_loss']:.4f} acc "
                    f"{100 * row['train_acc']:5.1f}%  val loss {row['val_loss']:.4f} acc "
                    f"{100 * row['val_acc']:5.1f}%  lr {lr:.2g}  {row['images_per_s']:.0f} img/s  "
                    f"data wait {100 * row['data_wait']:.0f}%  {row['seconds']:.1f}s  "
                    f"best {t.monitor} {best_text} (epoch {trainer['best_epoch']})")
            if t.patience is not None and trainer["bad_epochs"] >= t.patience:
                run.log(f"early stopping: {t.monitor} has not improved for {t.patience} epochs")
                break
        run.plot(rows, final=True)
    except KeyboardInterrupt:
        try:
            run.plot(rows, final=True)
        except KeyboardInterrupt:
            pass
        raise TrainingInterrupted(
            f"interrupted during epoch {epoch}; {run_dir / 'last.pt'} holds epoch {saved_epoch}. "
            f"Resume with: cnnzoo train --resume {run_dir / 'last.pt'}", run_dir) from None
    best_text = (f"{100 * trainer['best_value']:.2f}%" if maximize else f"{trainer['best_value']:.4f}") \
        if trainer["best_value"] is not None else "n/a"
    run.log(f"done: best {t.monitor} {best_text} at epoch {trainer['best_epoch']}; run folder {run_dir}")
    run.log(f"next: cnnzoo evaluate {run_dir / 'best.pt'}   or   cnnzoo predict IMAGE")
    return run_dir
