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
    """The network, first layer first: a bare name (`relu`), or a one-key mapping from a
    `torch.nn` class or an alias to its keyword arguments; blocks and backbones too
    ([Layers and blocks](layers.md)). Input sizes are inferred and every shape is checked."""
    input: Optional[list[int]] = None
    """[C, H, W] of one image; taken from `data.channels` and `data.image_size` when absent."""
    num_classes: Optional[int] = bounded(None, low=1)
    """The classes the head predicts (`num_classes` in a layer's arguments stands for it); taken
    from the data when absent."""


@dataclass
class ColorJitterConfig:
    """How far brightness, contrast and saturation vary (factor uniform in [1 - x, 1 + x]) and hue
    shifts (a fraction of the colour circle, uniform in [-hue, hue]); all off by default."""

    brightness: float = bounded(0.0, low=0, high=10)
    """Brightness factor drawn uniformly from [1 - x, 1 + x]; 0 is off."""
    contrast: float = bounded(0.0, low=0, high=10)
    """Contrast factor drawn uniformly from [1 - x, 1 + x]; 0 is off."""
    saturation: float = bounded(0.0, low=0, high=10)
    """Saturation factor drawn uniformly from [1 - x, 1 + x]; 0 is off."""
    hue: float = bounded(0.0, low=0, high=0.5)
    """Hue shift, a fraction of the colour circle drawn uniformly from [-hue, hue]; 0 is off."""

    def __bool__(self) -> bool:
        return any(dataclasses.astuple(self))


@dataclass
class RandAugmentConfig:
    """RandAugment (torchvision transforms v2): ``num_ops`` operations drawn per image, all at one
    magnitude; off by default."""

    num_ops: int = bounded(0, low=0, high=14)
    """Operations applied to each image; 0 turns RandAugment off (2 is the paper's choice)."""
    magnitude: int = bounded(9, low=0, high=30)
    """How strong every operation is, 0 to 30 (torchvision's 31 steps; 9 is the paper's choice)."""

    def __bool__(self) -> bool:
        return self.num_ops > 0


@dataclass
class AugmentConfig:
    """Training-time augmentation, all off by default (ML Zoomcamp lesson 8.9's set)."""

    hflip: Union[bool, float] = bounded(0.0, **FRACTION, words="a probability in [0, 1] or true (0.5)")
    """Probability of a left-right flip; `true` means 0.5."""
    vflip: Union[bool, float] = bounded(0.0, **FRACTION, words="a probability in [0, 1] or true (0.5)")
    """Probability of an upside-down flip; `true` means 0.5."""
    rotation: float = bounded(0.0, low=0, high=180)
    """Rotation in degrees, drawn uniformly from [-rotation, rotation]."""
    translate: Union[float, list[float]] = bounded(
        0.0, **FRACTION, length=2, words="a fraction in [0, 1], or [horizontal, vertical] fractions")
    """Largest shift as a fraction of the width and height: one number, or [horizontal, vertical]."""
    shear: float = bounded(0.0, low=0, high=90, open_high=True)
    """Shear in degrees, drawn uniformly from [-shear, shear]."""
    zoom: float = bounded(0.0, low=0, high=1, open_high=True)
    """Scale drawn uniformly from [1 - zoom, 1 + zoom]."""
    random_resized_crop: Optional[list[float]] = bounded(
        None, low=0, high=1, open_low=True, length=2,
        words="[min_area, max_area] within (0, 1], e.g. [0.6, 1.0], or null (off)")
    """[min_area, max_area]: crop a random part of that share of the image (aspect 3/4 to 4/3)
    and resize it back, as Inception and ResNet were trained; null is off."""
    color_jitter: ColorJitterConfig = field(default_factory=ColorJitterConfig)
    """Random brightness, contrast, saturation and hue (the keys below)."""
    where: Literal["auto", "batch", "image"] = "auto"
    """Where the augmentations above run: ``batch`` on the whole batch on the training device (one
    ``grid_sample`` for the geometry; needs ``data.cache``), ``image`` per image in the loader
    (torchvision transforms v2, the draws of runs before this option), ``auto`` batch when the
    images are cached, else image. Same keys, same distributions either way."""
    randaugment: RandAugmentConfig = field(default_factory=RandAugmentConfig)
    """RandAugment's ``{num_ops, magnitude}``, after the augmentations above (num_ops 0 = off)."""
    trivialaugment: bool = False
    """TrivialAugment (TrivialAugmentWide): one operation at a random strength per image."""
    augmix: bool = False
    """AugMix (torchvision's defaults: severity 3, three chains mixed): a blend of augmented copies."""
    random_erasing: float = bounded(0.0, **FRACTION)
    """The chance that a rectangle (2-33% of the image) is blacked out, last of all; 0 = off."""

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
            if f.name not in ("hflip", "vflip", "where") and (any(value) if f.name == "translate" and
                                                     isinstance(value, list) else value):
                on.append(f.name)
        return on


# data.source's values: the built-in sources, which a config is checked against before the data layer
# (its registry, cnnzoo.data.sources.SOURCES) is imported; the registry adds the sources it registers
SOURCE_NAMES = ["folder", "shapes", "mnist", "fashion_mnist", "cifar10", "manifest", "webdataset", "hf"]


@dataclass
class DataConfig:
    source: str = field(default="folder", metadata={"choices": SOURCE_NAMES})
    """Where images come from: `folder` (class folders under `root`), `manifest` (a CSV, TSV,
    JSON Lines or Parquet file of images and labels), `webdataset` (tar shards, streamed), `hf` (a
    Hugging Face dataset on disk), `shapes` (drawn shapes, generated offline on first use), or
    torchvision's `mnist`, `fashion_mnist`, `cifar10`; detected from `root` when obvious
    ([Your data](../your-data.md))."""
    root: Optional[str] = None
    """The data folder: `train/` + `validation/` (or `val/`) of class folders, optional `test/`,
    or one folder of class folders split by `val_fraction`; relative to the config's folder."""
    download: bool = False
    """Let torchvision download `mnist`, `fashion_mnist` or `cifar10` when they are not on disk."""
    val_fraction: float = bounded(0.2, low=0, high=1, open_low=True, open_high=True,
                                  words="a number between 0 and 1")
    """The share of images held out for validation when `root` has no validation split
    (stratified by class, seeded)."""
    folds: Optional[int] = bounded(None, low=2, words="an integer >= 2, or null (no folds)")
    """With `fold`: split all labelled images (training and validation pooled; a test split stays
    out) into this many stratified, seeded folds and hold out fold `fold` as the validation split.
    `cnnzoo train --folds K` sets both for each of its runs ([Cross-validation](../cross-validation.md))."""
    fold: Optional[Union[int, Literal["all"]]] = bounded(
        None, low=1, words="an integer from 1 to data.folds, all, or null"
    )
    """Which of the `folds` folds is the validation split (1 to `folds`); set with `folds`. `all`
    trains on every labelled image and validates on them too (the final model of `train --folds`)."""
    image_size: Optional[Union[int, list[int]]] = None
    """Side (or [H, W]) images are brought to (see `resize`); a pretrained backbone's own size
    when absent."""
    resize: Literal["squash", "letterbox", "crop"] = "squash"
    """How an image of another aspect ratio becomes `image_size`: `squash` resizes it, ignoring
    the aspect ratio (a long object gets thinner, all of it stays); `letterbox` fits all of it
    inside and pads the rest with the normalisation mean; `crop` fills the size and cuts the
    overflow off both ends, centred ([Image shape](../image-shape.md))."""
    channels: Optional[int] = None
    """1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA); taken from the source when absent. A
    pretrained backbone's first convolution is adapted to it."""
    normalize: Union[Literal["auto", "imagenet", "none"], dict[str, list[float]]] = "auto"
    """Pixel normalisation: `auto` (a pretrained backbone's own, else ImageNet's mean and std for
    RGB and 0.5/0.5 for grey), `imagenet`, `none`, or `{mean: [...], std: [...]}`."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Training-time augmentation (the keys below); validation images are never augmented."""
    sampler: Literal["none", "balanced"] = "none"
    """`balanced` draws every class equally often in an epoch (for imbalanced data); `none`
    shuffles."""
    cache: Literal["auto", "ram", "disk", "none"] = "auto"
    """Decoded images kept for the next epoch: `ram`, `disk` (memory-mapped, checked, reused by
    later runs), `none` (decode every epoch, cropping from full resolution); `auto` is RAM when the
    cache takes under a third of the free memory, else disk when it has room, else none
    ([Caches](../caches.md))."""
    cache_dir: Optional[str] = None
    """Where disk caches go; `$CNNZOO_HOME/cache` (default `~/.cache/cnnzoo/cache`) when absent."""
    stream: Union[Literal["auto"], bool] = "auto"
    """A Hugging Face dataset (`source: hf`) streamed: images decoded batch by batch in the loader
    workers every epoch, never all into the cache; `auto` streams when the cache would be `none`
    (`data.cache: none`, or `auto` finding no room for it) ([Your data](../your-data.md))."""
    feature_cache: Literal["auto", "ram", "disk", "none"] = "auto"
    """Frozen backbone outputs computed once and reused while the backbone stays frozen
    (transfer learning); off by itself when augmentation changes pixels."""
    workers: Union[Literal["auto"], int] = bounded("auto", low=0, words="auto or a number >= 0")
    """Loader processes; `auto` picks by what the loader does (none for cached data on a
    small CPU, up to one per spare core when decoding or on CUDA)."""
    image_column: Optional[str] = None
    """A manifest's column naming each image (default: detected, e.g. image, filename, path, id)."""
    label_column: Optional[Union[str, list[str]]] = None
    """A manifest's label column (default: detected: label, class, tags...), or a list of 0/1 columns, one per class."""
    images_dir: Optional[str] = None
    """Where a manifest's image paths are read from (default: beside the manifest, then an images/ folder beside it)."""
    remote_cache: Optional[float] = bounded(None, low=0, open_low=True, words="a size in GiB > 0, or null (off)")
    """GiB of a remote manifest's images (URLs, `s3://` keys) kept on local disk under `cache_dir`/remote/images,
    the least recently used removed past it; null fetches each image whenever it is decoded
    ([Remote data](../remote-data.md))."""


@dataclass
class EmaConfig:
    """An exponential moving average of the weights (``train.ema``), off by default."""

    decay: Optional[float] = bounded(None, low=0, high=1, open_low=True, open_high=True,
                                     words="a number in (0, 1), e.g. 0.9998, or null (off)")
    """Weight of the average so far at each optimizer step; null turns the average off."""
    warmup: bool = True
    """Use min(decay, (1 + n) / (10 + n)) at step n, so early steps are not averaged with the random start."""

    def __bool__(self) -> bool:
        return self.decay is not None


@dataclass
class UnknownConfig:
    """The "unknown" answer fitted after training (``train.unknown``; docs/unknown.md)."""

    keep: float = bounded(0.95, low=0, high=1, open_low=True, open_high=True, words="a share in (0, 1), e.g. 0.95")
    """The share of validation images the stored threshold keeps as known; the rest of the
    scale (the least familiar images) is answered unknown."""
    score: Literal["knn", "energy", "max_logit", "msp"] = "knn"
    """knn: distance of the penultimate features to the k-th nearest training image (cosine; the
    best measured, docs/unknown.md); energy, max_logit, msp: from the logits alone."""
    k: int = bounded(10, low=1, high=1000)
    """The knn score's neighbour: the k-th nearest training image."""
    enabled: bool = True
    """Fit the score after training (single-label models with a validation split); false: no unknown answer."""


@dataclass
class DistillConfig:
    """Knowledge distillation from a trained teacher (``train.distill``; docs/distillation.md), off by default."""

    teacher: Optional[str] = None
    """The teacher: a checkpoint (.pt), or an export cnnzoo loads (.onnx, OpenVINO .xml); the same
    classes as the data. Read beside the config file, else from the working directory; null: off."""
    weight: float = bounded(0.5, **FRACTION)
    """The student's loss: (1 - weight) x the label loss + weight x T^2 x KL(teacher || student) at
    temperature T."""
    temperature: float = bounded(4.0, low=0, high=100, open_low=True, words="a number in (0, 100], e.g. 4")
    """Both sides' logits are divided by it before the soft targets are compared (higher: softer)."""
    mode: Literal["auto", "cached", "live"] = "auto"
    """cached: the teacher scores each training image (and its mirror image) once, at its own size,
    kept in the cache; live: the teacher scores every augmented (and mixed) batch; auto: cached
    unless the images are streamed (shards)."""

    def __bool__(self) -> bool:
        return self.teacher is not None


# the names of cnnzoo.training.loggers.LOGGERS, and csv (metrics.csv, which every run keeps)
LoggerName = Literal["csv", "tensorboard", "mlflow"]


@dataclass
class TrainConfig:
    epochs: int = bounded(10, low=1)
    """Passes over the training images."""
    batch_size: int = bounded(32, low=1)
    """Images per step (per process under DDP)."""
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = "adam"
    """The `torch.optim` optimizer."""
    lr: float = bounded(1e-3, low=0, high=MAX_RATE, open_low=True)
    """Learning rate (the peak for `one-cycle`); `cnnzoo lr-find` suggests one."""
    momentum: float = bounded(0.9, low=0, high=1)
    """Momentum of `sgd` and `rmsprop`."""
    nesterov: bool = False
    """Nesterov momentum for `sgd`."""
    weight_decay: float = bounded(0.0, low=0, high=MAX_RATE)
    """L2 penalty (decoupled for `adamw`)."""
    scheduler: Literal["none", "step", "cosine", "one-cycle", "reduce-on-plateau"] = "none"
    """How the learning rate moves over the run: `step` (times `gamma` every `step_size`
    epochs), `cosine`, `one-cycle`, `reduce-on-plateau` (on `monitor`), or `none`."""
    step_size: int = bounded(10, low=1)
    """Epochs between decays, for `step`."""
    gamma: float = bounded(0.1, low=0, high=1, open_high=True)
    """Decay factor for `step` and `reduce-on-plateau`."""
    plateau_patience: int = bounded(2, low=0)
    """Epochs without progress before `reduce-on-plateau` lowers the rate."""
    warmup_epochs: float = bounded(0.0, low=0, high=MAX_EPOCHS)
    """Linear warm-up of the learning rate, in (fractions of) epochs."""
    label_smoothing: float = bounded(0.0, low=0, high=1, open_high=True)
    """Share of each target spread over all classes (0.1 is common)."""
    grad_clip: Optional[float] = bounded(None, low=0, open_low=True,
                                         words="a positive number or null (off)")
    """Largest gradient norm before a step (clipped above it); null is off."""
    monitor: Literal["auto", "val_acc", "val_loss", "val_map"] = "auto"
    """What picks `best.pt` (a tie goes to the lower `val_loss`, then the later epoch) and drives
    early stopping; `auto` is `val_map` for multi-label data, else `val_acc`."""
    patience: Optional[int] = bounded(None, low=1, words="a positive integer or null (off)")
    """Early stopping after this many epochs without progress on `monitor`; null is off."""
    min_delta: float = bounded(0.0, low=0)
    """The least change of `monitor` that counts as progress."""
    loss: Literal["auto", "cross_entropy", "bce"] = "auto"
    """`cross_entropy`, or `bce` for a one-logit head over two classes (`BCEWithLogitsLoss`);
    `auto` picks by the head."""
    class_weights: Union[Literal["none", "balanced"], dict[str, float]] = "none"
    """Loss weight per class: `balanced` (inverse to the class's share of the images), a mapping
    `{class: weight}`, or `none`."""
    device: str = "auto"
    """`auto` (CUDA, then MPS, then CPU), `cpu`, `cuda`, `cuda:N` or `mps`."""
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    """Mixed precision on CUDA: `auto` keeps bf16 (fp16 with a grad scaler on older GPUs) where
    a short probe measures it faster than float32; `none`, `bf16`, `fp16` force it."""
    channels_last: Union[Literal["auto"], bool] = "auto"
    """NHWC memory format for the model and batches; `auto` turns it on for CPU and CUDA, where
    convolutions measured faster with it."""
    unfreeze_at_epoch: Optional[int] = bounded(
        None, low=2, words="an epoch from 2 on (stage 1 needs at least one epoch), or null (never)")
    """Transfer learning: the epoch at which stage two starts training the backbone's last
    `unfreeze_stages` stages; null keeps it frozen."""
    unfreeze_stages: Union[Literal["all"], int] = bounded("all", low=0, words="all or a number >= 0")
    """How many of the backbone's last stages stage two trains, or `all`."""
    backbone_lr: Optional[Union[float, str]] = bounded(None, low=0, high=MAX_RATE, open_low=True)
    """The unfrozen backbone's learning rate: a number, or a multiple of `lr` such as `"0.1x"`;
    `lr / 10` when absent."""
    loggers: list[LoggerName] = field(default_factory=lambda: ["csv"])
    """What records each epoch besides `metrics.csv`, `history.png` and the console: `csv`,
    `tensorboard` (event files; extra `cnnzoo[tensorboard]`), `mlflow` (an MLflow run; extra
    `cnnzoo[mlflow]`, [MLflow](../mlflow.md))."""
    sync_bn: bool = False
    """Several processes: BatchNorm statistics computed over all processes' batches."""
    ddp_timeout: float = bounded(1800.0, low=1, high=MAX_DDP_TIMEOUT,
                                 words=f"a number of seconds from 1 to {MAX_DDP_TIMEOUT} (a week)")
    """Several processes: seconds a process waits for the others before the job ends with an
    error."""
    mlflow_experiment: Optional[str] = None
    """The MLflow experiment a run is logged in, with `mlflow` in `loggers`; null: the run's name,
    so that the runs of one config (and of one sweep) share an experiment."""
    mlflow_register: Optional[str] = None
    """With `mlflow` in `loggers`: register the run's best.pt as a new version of this MLflow
    model name; null: not registered."""
    mixup: float = bounded(0.0, low=0, high=100)
    """MixUp's alpha: a batch blended with itself reversed, in a ratio from Beta(alpha, alpha)
    (0 = off; 0.2 is typical)."""
    cutmix: float = bounded(0.0, low=0, high=100)
    """CutMix's alpha: a box of the reversed batch pasted in, its area from Beta(alpha, alpha)
    (0 = off; 1.0 is typical)."""
    mix_prob: float = bounded(1.0, **FRACTION)
    """The chance that a batch is mixed at all (MixUp or CutMix)."""
    mix_switch_prob: float = bounded(0.5, **FRACTION)
    """With both MixUp and CutMix on, the chance that a mixed batch uses CutMix."""
    mix_off_epochs: int = bounded(0, low=0)
    """The last this-many epochs train on plain (unmixed) batches."""
    ema: EmaConfig = field(default_factory=EmaConfig)
    """An average of the weights, which validation, best.pt and the exports use (train.ema.decay turns it on)."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Train on a teacher's soft targets as well as the labels (train.distill.teacher turns it on)."""
    unknown: UnknownConfig = field(default_factory=UnknownConfig)
    """An out-of-distribution score and its threshold, fitted after training: predict answers unknown past it."""
    accumulate: int = bounded(1, low=1, high=1024)
    """Gradient accumulation: one optimizer step every this-many batches (the schedule counts optimizer steps)."""
    checkpoint_every: Optional[int] = bounded(None, low=1, words="a positive number of steps or null (off)")
    """Also write `last.pt` every this-many optimizer steps inside an epoch, so a run killed mid-epoch
    resumes at its next unseen batch ([Resuming](../resume.md)); null: only at each epoch's end."""
    compile: Union[Literal["auto"], bool] = False
    """``torch.compile`` the model for training: true, false, or auto (a short probe, the compile time
    counted, decides; on a CPU it mostly says no). Checkpoints keep the plain module's weights."""
    task: Literal["auto", "single", "multi"] = "auto"
    """single: one class per image (softmax); multi: any number of classes per image (a sigmoid per
    class, BCE loss); auto: multi when a manifest row has several labels (or a one-hot row has none)."""
    thresholds: Union[Literal["tuned"], float] = bounded(
        0.5, low=0, high=1, open_low=True, open_high=True, words="a probability in (0, 1) or tuned")
    """Multi-label: the probability at which a class is predicted present; tuned picks, per class, the
    threshold that maximises F1 on the validation split (kept in the checkpoint)."""
    calibrate: Literal["temperature", "none"] = "temperature"
    """After training, fit a temperature on the validation split so that the probabilities mean what
    they say (one per class for multi-label), kept in best.pt and every export: `temperature` or
    `none` ([Calibration](../calibration.md))."""
    test_crop: Literal["auto", "none"] = "auto"
    """After training with data.augment.random_resized_crop: the centred share of each side (1.0 down
    to 0.8) that scores best on the validation split, kept in best.pt and every export as the
    preprocessing predict applies (`auto`); `none`: the whole image ([Test-time crop](../test-time-crop.md))."""

    def backbone_learning_rate(self) -> float:
        if self.backbone_lr is None:
            return self.lr / 10
        if isinstance(self.backbone_lr, str):  # "0.1x": a multiple of lr (checked in check_values)
            return self.lr * float(self.backbone_lr[:-1])
        return self.backbone_lr


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The network."""
    data: DataConfig = field(default_factory=DataConfig)
    """The images: where they come from, their size, augmentation and caching."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The training recipe."""
    name: Optional[str] = None
    """The run's name: run folders go to `runs/<name>/<N>/`; the config file's name when absent
    (one folder name: no slashes or `..`)."""
    seed: int = bounded(0, low=0, high=2**64 - 1)  # what torch.manual_seed takes
    """Seeds the split, the initial weights, the shuffling and the augmentation: the same seed
    gives the same run."""
    tune: Optional[dict[str, Any]] = None
    """The search space of `cnnzoo tune` (training ignores it): config keys mapped to
    `{log: [low, high]}`, `{float: [low, high]}`, `{int: [low, high]}` or a list of values."""
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
