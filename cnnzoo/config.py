"""Config files: the schema, YAML loading, ``--set`` overrides and validation.

A config is plain YAML with the sections ``model``, ``data`` and ``train`` plus the
optional top-level ``name`` and ``seed``. The schema is the dataclasses below: every
field's type hint is checked, every unknown key is refused with the closest known key,
and errors name the file and the dotted key. This module does not import torch.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .errors import ConfigError


@dataclass(frozen=True)
class Bounds:
    """The range a number may take, kept next to its field (``field(metadata={"bounds": ...})``,
    see :func:`bounded`). It applies to every number of a list or mapping too; booleans,
    strings and null are left to the type check. ``words`` replaces the generated description
    in messages where a field also takes a word (``auto``) or null.
    """

    low: Optional[float] = None
    high: Optional[float] = None
    open_low: bool = False  # low itself is out of range
    open_high: bool = False
    length: Optional[int] = None  # a list holds exactly this many numbers
    words: str = ""

    def admits(self, value: Any) -> bool:
        if isinstance(value, list):
            return (self.length is None or len(value) == self.length) and all(map(self._admits_number, value))
        return self._admits_number(value)

    def _admits_number(self, x: Any) -> bool:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return True
        if isinstance(x, float) and not math.isfinite(x):
            return False
        if self.low is not None and (x < self.low or (self.open_low and x == self.low)):
            return False
        return self.high is None or not (x > self.high or (self.open_high and x == self.high))

    def describe(self, integer: bool) -> str:
        if self.words:
            return self.words
        kind = "integer" if integer else "number"
        if self.high is None:
            if self.low == 0:
                return f"a positive {kind}" if self.open_low else f"a non-negative {kind}"
            if self.low == 1 and integer and not self.open_low:
                return "a positive integer"
            return f"a {kind} {'>' if self.open_low else '>='} {self.low:g}"
        if self.low == 0 and self.open_low and not self.open_high:
            return f"a positive {kind} up to {self.high:g}"
        if integer and not (self.open_low or self.open_high):
            return f"an integer from {self.low} to {self.high}"
        return (f"a {kind} in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.open_high else ']'}")


def bounded(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
            **bounds: Any) -> Any:
    """A dataclass field whose numbers must lie within :class:`Bounds` (checked on load)."""
    return field(default=default, default_factory=default_factory, metadata={"bounds": Bounds(**bounds)})


_FRACTION = {"low": 0, "high": 1}  # a probability, or a share of the image size


MAX_EPOCHS = 1_000_000  # a bound for counts of epochs that far exceeds any run
MAX_RATE = 1e6  # learning rates and weight decay: far past any useful value, far below float32's overflow
MAX_DDP_TIMEOUT = 7 * 24 * 3600  # seconds: longer is a hang, not a wait (a timedelta overflows at 8.6e13)


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

    hflip: Union[bool, float] = bounded(0.0, **_FRACTION, words="a probability in [0, 1] or true (0.5)")
    vflip: Union[bool, float] = bounded(0.0, **_FRACTION, words="a probability in [0, 1] or true (0.5)")
    rotation: float = bounded(0.0, low=0, high=180)  # degrees, uniform in [-rotation, rotation]
    # fraction of width (and height): a number, or [horizontal, vertical]
    translate: Union[float, list[float]] = bounded(
        0.0, **_FRACTION, length=2, words="a fraction in [0, 1], or [horizontal, vertical] fractions")
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
    source: Literal["folder", "shapes", "mnist", "fashion_mnist", "cifar10"] = "folder"
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
    monitor: Literal["val_acc", "val_loss"] = "val_acc"  # picks best.pt and drives early stopping
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

    def backbone_learning_rate(self) -> float:
        if self.backbone_lr is None:
            return self.lr / 10
        if isinstance(self.backbone_lr, str):  # "0.1x": a multiple of lr (checked in _check_values)
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
        if self.source_path and _RUN_NAME.match(Path(self.source_path).stem):
            return Path(self.source_path).stem
        return "run"


# Keys people write in the wrong place; the hint beats a bare "unknown key".
_MOVED_KEYS = {
    "train.seed": "seed is a top-level key: write `seed: N` at the top of the file",
    "data.num_classes": "write model.num_classes (or leave it out to count the class folders)",
    "train.sampler": "the sampler is a data setting: data.sampler",
    "train.augment": "augmentation is a data setting: data.augment",
}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) if not isinstance(a, str) else a for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(item)}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Return ``value`` checked (and gently converted) against type hint ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if value is None:  # a section whose keys are all commented out: all defaults
            value = {}
        if not isinstance(value, dict):
            raise _Mismatch
        return _build_dataclass(tp, value, key, where)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key, where)
            except _Mismatch:
                continue
        raise _Mismatch
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value is False and "none" in allowed:  # YAML reads `none` as a string, `no`/`false` as False
            return "none"
        if value in allowed and type(value) is type(allowed[0]):
            return value
        raise _Mismatch
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise _Mismatch
        return [_coerce(v, item, f"{key}.{i}", where) for i, v in enumerate(value)]
    if origin is dict:
        _, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise _Mismatch
        return {str(k): _coerce(v, val_tp, f"{key}.{k}", where) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` as a string
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    raise TypeError(f"config schema uses an unsupported type {tp!r}")


def _build_dataclass(cls: type, raw: dict, prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            if dotted in _MOVED_KEYS:
                raise ConfigError(f"{where}{dotted}: unknown key; {_MOVED_KEYS[dotted]}")
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {prefix + '.' if prefix else ''}{close[0]}?" if close else (
                f"; known keys{' of ' + prefix if prefix else ''}: {', '.join(fields)}")
            raise ConfigError(f"{where}{dotted}: unknown key{hint}")
        tp = hints[key]
        try:
            kwargs[key] = _coerce(value, tp, dotted, where)
        except _Mismatch:
            raise ConfigError(
                f"{where}{dotted}: got {value!r} ({_yaml_type(value)}), expected {_type_name(tp)}"
            ) from None
        bounds = fields[key].metadata.get("bounds")
        if bounds is not None and not bounds.admits(kwargs[key]):
            integer = "int" in _type_name(tp).split(" or ")
            raise ConfigError(f"{where}{dotted}: got {kwargs[key]!r}, expected {bounds.describe(integer)}")
    return cls(**kwargs)


def _yaml_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)


MAX_IMAGE_SIDE = 4096  # pixels; far above what a CNN here trains on, far below what exhausts memory
_RUN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}$")


def _check_values(cfg: Config, where: str) -> None:
    """Checks that a field's type and :class:`Bounds` cannot express: shapes of lists, choices,
    and rules between fields."""
    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{where}{key}: {msg}")

    m, d, t = cfg.model, cfg.data, cfg.train
    if cfg.name is not None and (not _RUN_NAME.match(cfg.name) or ".." in cfg.name):
        raise bad("name", f"got {cfg.name!r}; a run name is one folder name (letters, digits, _ . + -), "
                          f"no slashes or '..', e.g. clothing_v2")
    if m.input is not None and (len(m.input) != 3 or min(m.input) < 1):
        raise bad("model.input", f"got {m.input}, expected [channels, height, width] of positive integers")
    if m.input is not None and max(m.input[1:]) > MAX_IMAGE_SIDE:
        raise bad("model.input", f"got {m.input}; height and width may be at most {MAX_IMAGE_SIDE}")
    sides = [d.image_size] if isinstance(d.image_size, int) else d.image_size or []
    if sides and max(sides) > MAX_IMAGE_SIDE:
        raise bad("data.image_size", f"got {d.image_size}; at most {MAX_IMAGE_SIDE} pixels a side")
    if d.channels is not None and d.channels not in (1, 3):
        raise bad("data.channels", f"got {d.channels}, expected 1 (grey) or 3 (RGB)")
    if isinstance(d.image_size, list) and (len(d.image_size) != 2 or min(d.image_size) < 1):
        raise bad("data.image_size", f"got {d.image_size}, expected an integer or [height, width]")
    if isinstance(d.image_size, int) and d.image_size < 1:
        raise bad("data.image_size", f"got {d.image_size}, expected a positive integer")
    if isinstance(d.normalize, dict):
        if set(d.normalize) != {"mean", "std"}:
            raise bad("data.normalize", "a mapping needs exactly the keys mean and std")
        if any(s <= 0 for s in d.normalize["std"]):
            raise bad("data.normalize.std", "every std must be positive")
    crop = d.augment.random_resized_crop
    if crop and crop[0] > crop[1]:
        raise bad("data.augment.random_resized_crop", f"got {crop}, expected [min_area, max_area] with "
                                                      f"min_area <= max_area, e.g. [0.6, 1.0]")
    if isinstance(t.backbone_lr, str):
        scale = t.backbone_lr[:-1] if t.backbone_lr.endswith("x") else ""
        try:
            ok = 0 < float(scale) and t.lr * float(scale) <= MAX_RATE
        except ValueError:
            ok = False
        if not ok:
            raise bad("train.backbone_lr", f"got {t.backbone_lr!r}, expected a learning rate (1e-4) or a "
                                           f"multiple of train.lr written like 0.1x")


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``a.b.c=value``; the value is read as YAML (``3`` is an int, ``[1, 2]`` a list)."""
    if text.endswith("!") and "=" not in text:  # --unset
        return text, None
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected dotted.key=value, e.g. --set train.epochs=5")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text}: the key before '=' is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text}: the value is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except RecursionError:
        raise ConfigError(f"--set {key}: the value is nested too deeply") from None
    return key, value


def apply_override(raw: dict, key: str, value: Any) -> None:
    """Set ``key`` (dotted; list items by index) in the raw config mapping, in place.

    ``key!`` (what ``--unset key`` sends) removes the key instead, back to its default.
    """
    if key.endswith("!"):
        _remove_key(raw, key[:-1])
        return
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit():
                raise ConfigError(f"--set {key}: {'.'.join(parts[:i])} is a list; use an index, e.g. .0")
            idx = int(part)
            if not -len(node) <= idx < len(node):
                raise ConfigError(f"--set {key}: {'.'.join(parts[:i])} has {len(node)} items, no index {idx}")
            if last:
                node[idx] = value
                return
            if isinstance(node[idx], str) and not parts[i + 1].isdigit():
                # a bare layer name (`- ReLU`) becomes a mapping so that arguments can be set
                node[idx] = {node[idx]: {}} if parts[i + 1] == node[idx] else node[idx]
            node = node[idx]
        elif isinstance(node, dict):
            if (part not in node and len(node) == 1 and i >= 2 and parts[i - 1].lstrip("-").isdigit()
                    and parts[i - 2] == "layers"):
                written = next(iter(node))
                fixed = ".".join(parts[:i] + [str(written)] + parts[i + 1:])
                raise ConfigError(f"--set {key}: {'.'.join(parts[:i])} is written `{written}`; "
                                  f"use --set {fixed}=...")
            if last:
                node[part] = value
                return
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i])} is a single value, not a section")
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {key}: {here} is a single value ({node!r}), it has no key "
                              f"{parts[i + 1]!r}")


def _remove_key(raw: dict, key: str) -> None:
    node: Any = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or parts[-1] not in node:
        raise ConfigError(f"--unset {key}: the config has no such key")
    del node[parts[-1]]


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, turning syntax errors into one line with file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected YAML)") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply to be a config") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with model/data/train sections, got {_yaml_type(raw)}")
    return raw


def from_dict(raw: dict, overrides: list[str] | None = None, source: str | None = None) -> Config:
    """Validate a raw mapping (plus ``key=value`` overrides) into a :class:`Config`."""
    raw = copy.deepcopy(raw)
    for text in overrides or []:
        key, value = parse_override(text)
        apply_override(raw, key, value)
    where = f"{source}: " if source else ""
    cfg = _build_dataclass(Config, raw, "", where)
    _check_values(cfg, where)
    for key in ("root", "cache_dir"):  # `~/photos` means the home folder, wherever it was written
        value = getattr(cfg.data, key)
        if value and value.startswith("~"):
            setattr(cfg.data, key, os.path.expanduser(value))
    cfg.source_path = source
    return cfg


def load_config(source: str | Path | dict | Config, overrides: list[str] | None = None) -> Config:
    """Load a config from a YAML path, a mapping or a Config, then apply overrides.

    A file's relative paths are read from the file's folder (:func:`rebase_paths`); paths in
    overrides and mappings from the working directory.
    """
    if isinstance(source, Config):
        return from_dict(source.to_dict(), overrides, source.source_path)
    if isinstance(source, dict):
        return from_dict(source, overrides)
    raw = read_yaml(source)
    rebase_paths(raw, Path(source).parent)
    return from_dict(raw, overrides, str(source))


WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def looks_like_path(value: Any) -> bool:
    """A backbone ``weights`` value that names a file rather than a weights name like DEFAULT."""
    return isinstance(value, str) and (os.sep in value or "/" in value or value.startswith("~")
                                       or value.endswith(WEIGHT_FILE_SUFFIXES))


def backbone_entry(layers: Any) -> Optional[tuple[str, dict[str, Any]]]:
    """Where the first top-level ``backbone`` layer is (``model.layers.N.backbone``) and its arguments."""
    for index, item in enumerate(layers if isinstance(layers, list) else []):
        if isinstance(item, dict) and len(item) == 1:
            key, args = next(iter(item.items()))
            if isinstance(key, str) and key.lower() == "backbone" and isinstance(args, dict):
                return f"model.layers.{index}.{key}", args
    return None


def _from_folder(value: str, folder: Path) -> str:
    """``value`` read from ``folder``, unless only the working directory has it (older configs)."""
    if value.startswith("~"):
        return os.path.expanduser(value)
    if os.path.isabs(value):
        return value
    beside = os.path.normpath(os.path.join(os.path.abspath(folder), value))
    return value if not os.path.exists(beside) and os.path.exists(value) else beside


def rebase_paths(raw: dict, folder: Path) -> None:
    """Make a config file's relative paths (data.root, data.cache_dir, a backbone's weights file)
    relative to the file's own folder, in place, so that the file works from any working directory.

    A path that exists only relative to the working directory is kept as it is: configs written
    before this rule still work from where they used to.
    """
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("root", "cache_dir"):
            if isinstance(data.get(key), str) and data[key]:
                data[key] = _from_folder(data[key], folder)
    model = raw.get("model")
    entry = backbone_entry(model.get("layers")) if isinstance(model, dict) else None
    if entry is not None and looks_like_path(entry[1].get("weights")):
        entry[1]["weights"] = _from_folder(entry[1]["weights"], folder)


class _ReadableDumper(yaml.SafeDumper):
    """Block style for sections; one line for short lists and a layer's few arguments."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> Any:
    flow = all(not isinstance(v, (list, dict)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> Any:
    flow = len(data) <= 4 and all(not isinstance(v, (list, dict)) for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


_ReadableDumper.add_representer(list, _represent_list)
_ReadableDumper.add_representer(dict, _represent_dict)


def dump_config(cfg: Config) -> str:
    """The config as a person would write it: name and seed first, then data, model, train."""
    raw = cfg.to_dict()
    ordered = {key: raw[key] for key in ("name", "seed", "data", "model", "train")}
    return yaml.dump(ordered, Dumper=_ReadableDumper, sort_keys=False, width=100)
