"""The config schema: one dataclass per section, each field's type and default, and the range
its numbers may take (:func:`~cnnzoo.config.checks.bounded`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from .checks import FRACTION, MAX_DDP_TIMEOUT, MAX_EPOCHS, MAX_RATE, RUN_NAME, bounded


@dataclass
class ModelConfig:
    layers: list[Any] = field(default_factory=list)
    input: Optional[list[int]] = None  # [C, H, W]; taken from `data` when absent
    num_classes: Optional[int] = bounded(None, low=1)  # taken from the data's class folders when absent


@dataclass
class ColorJitterConfig:
    """How far brightness, contrast and saturation vary (factor uniform in [1 - x, 1 + x]) and hue
    shifts (a fraction of the colour circle, uniform in [-hue, hue]); all off by default."""

    brightness: float = bounded(0.0, low=0, high=10)
    contrast: float = bounded(0.0, low=0, high=10)
    saturation: float = bounded(0.0, low=0, high=10)
    hue: float = bounded(0.0, low=0, high=0.5)

    def __bool__(self) -> bool:
        return any(dataclasses.astuple(self))


@dataclass
class AugmentConfig:
    """Training-time augmentation, all off by default (ML Zoomcamp lesson 8.9's set)."""

    hflip: Union[bool, float] = bounded(0.0, **FRACTION, words="a probability in [0, 1] or true (0.5)")
    vflip: Union[bool, float] = bounded(0.0, **FRACTION, words="a probability in [0, 1] or true (0.5)")
    rotation: float = bounded(0.0, low=0, high=180)  # degrees, uniform in [-rotation, rotation]
    # fraction of width (and height): a number, or [horizontal, vertical]
    translate: Union[float, list[float]] = bounded(
        0.0, **FRACTION, length=2, words="a fraction in [0, 1], or [horizontal, vertical] fractions")
    shear: float = bounded(0.0, low=0, high=90, open_high=True)  # degrees
    zoom: float = bounded(0.0, low=0, high=1, open_high=True)  # scale uniform in [1 - zoom, 1 + zoom]
    # [min_area, max_area], e.g. [0.6, 1.0]
    random_resized_crop: Optional[list[float]] = bounded(
        None, low=0, high=1, open_low=True, length=2,
        words="[min_area, max_area] within (0, 1], e.g. [0.6, 1.0], or null (off)")
    color_jitter: ColorJitterConfig = field(default_factory=ColorJitterConfig)

    @property
    def flip_probabilities(self) -> tuple[float, float]:
        """(horizontal, vertical); ``true`` means 0.5."""
        return (0.5 if self.hflip is True else float(self.hflip),
                0.5 if self.vflip is True else float(self.vflip))

    def pixel_changing(self) -> list[str]:
        """The keys that are on, flips aside: augmentations that make new pixels every epoch."""
        on = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name not in ("hflip", "vflip") and (any(value) if f.name == "translate" and
                                                     isinstance(value, list) else value):
                on.append(f.name)
        return on


@dataclass
class DataConfig:
    source: Literal["folder", "shapes", "mnist", "fashion_mnist", "cifar10", "manifest", "webdataset", "hf"] = "folder"
    root: Optional[str] = None
    download: bool = False
    val_fraction: float = bounded(0.2, low=0, high=1, open_low=True, open_high=True,
                                  words="a number between 0 and 1")  # used when `root` has no validation split
    image_size: Optional[Union[int, list[int]]] = None  # int or [H, W]
    channels: Optional[int] = None  # 1 or 3
    normalize: Union[Literal["auto", "imagenet", "none"], dict[str, list[float]]] = "auto"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    sampler: Literal["none", "balanced"] = "none"
    cache: Literal["auto", "ram", "disk", "none"] = "auto"
    cache_dir: Optional[str] = None
    feature_cache: Literal["auto", "ram", "disk", "none"] = "auto"  # frozen backbone outputs, computed once
    workers: Union[Literal["auto"], int] = bounded("auto", low=0, words="auto or a number >= 0")
    image_column: Optional[str] = None
    """A manifest's column naming each image (default: detected, e.g. image, filename, path, id)."""
    label_column: Optional[Union[str, list[str]]] = None
    """A manifest's label column (default: detected: label, class, tags...), or a list of 0/1 columns, one per class."""
    images_dir: Optional[str] = None
    """Where a manifest's image paths are read from (default: beside the manifest, then an images/ folder beside it)."""


@dataclass
class TrainConfig:
    epochs: int = bounded(10, low=1)
    batch_size: int = bounded(32, low=1)
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = "adam"
    lr: float = bounded(1e-3, low=0, high=MAX_RATE, open_low=True)
    momentum: float = bounded(0.9, low=0, high=1)  # sgd and rmsprop
    nesterov: bool = False
    weight_decay: float = bounded(0.0, low=0, high=MAX_RATE)
    scheduler: Literal["none", "step", "cosine", "one-cycle", "reduce-on-plateau"] = "none"
    step_size: int = bounded(10, low=1)  # epochs between decays, for `step`
    gamma: float = bounded(0.1, low=0, high=1, open_high=True)  # decay factor for `step` and `reduce-on-plateau`
    plateau_patience: int = bounded(2, low=0)
    # linear warm-up, counted in (fractions of) epochs
    warmup_epochs: float = bounded(0.0, low=0, high=MAX_EPOCHS)
    label_smoothing: float = bounded(0.0, low=0, high=1, open_high=True)
    grad_clip: Optional[float] = bounded(None, low=0, open_low=True,
                                         words="a positive number or null (off)")  # max gradient norm
    # picks best.pt and drives early stopping; auto: val_map for multi-label data, else val_acc
    monitor: Literal["auto", "val_acc", "val_loss", "val_map"] = "auto"
    # early stopping after this many epochs without progress
    patience: Optional[int] = bounded(None, low=1, words="a positive integer or null (off)")
    min_delta: float = bounded(0.0, low=0)
    loss: Literal["auto", "cross_entropy", "bce"] = "auto"
    class_weights: Union[Literal["none", "balanced"], dict[str, float]] = "none"
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"  # CUDA only; auto = bf16 where supported
    channels_last: Union[Literal["auto"], bool] = "auto"
    # transfer learning (a `backbone` layer): stage two starts at this epoch and trains the
    # last `unfreeze_stages` stages of the backbone at `backbone_lr` (a number, or "0.1x" of lr)
    unfreeze_at_epoch: Optional[int] = bounded(
        None, low=2, words="an epoch from 2 on (stage 1 needs at least one epoch), or null (never)")
    unfreeze_stages: Union[Literal["all"], int] = bounded("all", low=0, words="all or a number >= 0")
    # default: lr / 10
    backbone_lr: Optional[Union[float, str]] = bounded(None, low=0, high=MAX_RATE, open_low=True)
    # what records each epoch besides metrics.csv, history.png and the console
    loggers: list[Literal["csv", "tensorboard"]] = field(default_factory=lambda: ["csv"])
    # several processes (torchrun / --nproc): BatchNorm statistics shared across GPUs, and how
    # long (seconds) a process waits for the others before the job ends with an error
    sync_bn: bool = False
    ddp_timeout: float = bounded(1800.0, low=1, high=MAX_DDP_TIMEOUT,
                                 words=f"a number of seconds from 1 to {MAX_DDP_TIMEOUT} (a week)")
    task: Literal["auto", "single", "multi"] = "auto"
    """single: one class per image (softmax); multi: any number of classes per image (a sigmoid per
    class, BCE loss); auto: multi when a manifest row has several labels (or a one-hot row has none)."""
    thresholds: Union[Literal["tuned"], float] = bounded(
        0.5, low=0, high=1, open_low=True, open_high=True, words="a probability in (0, 1) or tuned")
    """Multi-label: the probability at which a class is predicted present; tuned picks, per class, the
    threshold that maximises F1 on the validation split (kept in the checkpoint)."""

    def backbone_learning_rate(self) -> float:
        if self.backbone_lr is None:
            return self.lr / 10
        if isinstance(self.backbone_lr, str):  # "0.1x": a multiple of lr (checked in check_values)
            return self.lr * float(self.backbone_lr[:-1])
        return self.backbone_lr


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: Optional[str] = None
    seed: int = bounded(0, low=0, high=2**64 - 1)  # what torch.manual_seed takes
    source_path: Optional[str] = field(default=None, metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON-safe) without internal fields."""
        out = dataclasses.asdict(self)
        out.pop("source_path", None)
        return out

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        if self.source_path and RUN_NAME.match(Path(self.source_path).stem):
            return Path(self.source_path).stem
        return "run"
