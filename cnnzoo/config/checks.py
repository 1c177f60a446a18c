"""Value checks: the range a number may take (:class:`Bounds`, kept next to its field with
:func:`bounded`), the rules a field's type and range cannot express (:func:`check_values`), and
what a number read from any file must be (:func:`is_number`, :func:`is_whole`: configs,
checkpoint metadata, a last.pt's resume fields, shard labels)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:  # check_values reads a built Config; the schema imports this module for Bounds
    from .schema import Config


def is_number(value: Any) -> bool:
    """A finite int or float read from a file, not a bool (Python's True is an int); an int past
    the largest float is not one (the code that reads it would overflow), and is no OverflowError here."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def is_whole(value: Any, low: int, high: float = math.inf) -> bool:
    """An int (not a bool) from ``low`` to ``high``, both included."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


@dataclass(frozen=True)
class Bounds:
    """The range a number may take, kept next to its field (``field(metadata={"bounds": ...})``,
    see :func:`bounded`). It applies to every number of a list or mapping too; booleans,
    strings and null are left to the type check. ``words`` replaces the generated description
    in messages where a field also takes a word (``auto``) or null.
    """

    low: float | None = None
    high: float | None = None
    open_low: bool = False  # low itself is out of range
    open_high: bool = False
    length: int | None = None  # a list holds exactly this many numbers
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
        return f"a {kind} in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"


def bounded(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **bounds: Any) -> Any:
    """A dataclass field whose numbers must lie within :class:`Bounds` (checked on load)."""
    return field(default=default, default_factory=default_factory, metadata={"bounds": Bounds(**bounds)})


FRACTION = {"low": 0, "high": 1}  # a probability, or a share of the image size
MAX_EPOCHS = 1_000_000  # a bound for counts of epochs that far exceeds any run
MAX_RATE = 1e6  # learning rates and weight decay: far past any useful value, far below float32's overflow
MAX_DDP_TIMEOUT = 7 * 24 * 3600  # seconds: longer is a hang, not a wait (a timedelta overflows at 8.6e13)
MAX_IMAGE_SIDE = 4096  # pixels; far above what a CNN here trains on, far below what exhausts memory
READABLE_CHANNELS = (1, 2, 3, 4)  # the image modes cnnzoo.data.preprocess.CHANNEL_MODES reads
CHANNEL_WORDS = "1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA)"
RUN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}$")


def check_values(cfg: Config, where: str) -> None:
    """Checks that a field's type and :class:`Bounds` cannot express: shapes of lists, choices,
    and rules between fields."""

    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{where}{key}: {msg}")

    m, d, t = cfg.model, cfg.data, cfg.train
    if cfg.name is not None and (not RUN_NAME.match(cfg.name) or ".." in cfg.name):
        raise bad(
            "name",
            f"got {cfg.name!r}; a run name is one folder name (letters, digits, _ . + -), "
            f"no slashes or '..', e.g. clothing_v2",
        )
    if m.input is not None and (len(m.input) != 3 or min(m.input) < 1):
        raise bad("model.input", f"got {m.input}, expected [channels, height, width] of positive integers")
    if m.input is not None and max(m.input[1:]) > MAX_IMAGE_SIDE:
        raise bad("model.input", f"got {m.input}; height and width may be at most {MAX_IMAGE_SIDE}")
    sides = [d.image_size] if isinstance(d.image_size, int) else d.image_size or []
    if sides and max(sides) > MAX_IMAGE_SIDE:
        raise bad("data.image_size", f"got {d.image_size}; at most {MAX_IMAGE_SIDE} pixels a side")
    if d.channels is not None and d.channels not in READABLE_CHANNELS:
        raise bad("data.channels", f"got {d.channels}, expected {CHANNEL_WORDS}")
    if d.channels is None and m.input is not None and m.input[0] not in READABLE_CHANNELS:
        raise bad("model.input", f"got {m.input[0]} channels, expected {CHANNEL_WORDS}")
    if isinstance(d.image_size, list) and (len(d.image_size) != 2 or min(d.image_size) < 1):
        raise bad("data.image_size", f"got {d.image_size}, expected an integer or [height, width]")
    if isinstance(d.image_size, int) and d.image_size < 1:
        raise bad("data.image_size", f"got {d.image_size}, expected a positive integer")
    if isinstance(d.normalize, dict):
        if set(d.normalize) != {"mean", "std"}:
            raise bad("data.normalize", "a mapping needs exactly the keys mean and std")
        if any(s <= 0 for s in d.normalize["std"]):
            raise bad("data.normalize.std", "every std must be positive")
    if d.folds is not None and d.fold not in (None, "all") and d.fold > d.folds:
        raise bad("data.fold", f"got {d.fold}, but data.folds is {d.folds}; give a fold from 1 to {d.folds}")
    crop = d.augment.random_resized_crop
    if crop and crop[0] > crop[1]:
        raise bad(
            "data.augment.random_resized_crop",
            f"got {crop}, expected [min_area, max_area] with min_area <= max_area, e.g. [0.6, 1.0]",
        )
    if d.augment.where == "batch" and d.cache == "none":
        raise bad(
            "data.augment.where",
            "batch augments cached images; with data.cache: none use image (or auto), or turn the cache on",
        )
    if isinstance(t.backbone_lr, str):
        scale = t.backbone_lr[:-1] if t.backbone_lr.endswith("x") else ""
        try:
            ok = 0 < float(scale) and t.lr * float(scale) <= MAX_RATE
        except ValueError:
            ok = False
        if not ok:
            raise bad(
                "train.backbone_lr",
                f"got {t.backbone_lr!r}, expected a learning rate (1e-4) or a multiple of train.lr written like 0.1x",
            )
