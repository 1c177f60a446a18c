"""The search space of ``cnnzoo tune``: read from a config's ``tune:`` section or a ``--space`` file,
checked before any trial runs, and turned into one trial's config overrides.

A space maps dotted config keys to what they may take::

    tune:
      train.lr: {log: [1.0e-4, 1.0e-2]}          # a float drawn on a log scale
      train.weight_decay: {float: [0.0, 0.1]}     # a float on a linear scale (``step: 0.01`` optional)
      train.epochs: {int: [5, 20]}                # an integer (``step`` and ``log: true`` optional)
      data.augment.trivialaugment: [true, false]  # one of the listed values

Floor 7 (training): imports :mod:`cnnzoo.config` and :mod:`cnnzoo.errors`; never optuna itself (the
trial object is handed in), so a space is checked before the ``tune`` extra is imported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..config import load_config
from ..config.checks import is_number
from ..config.loading import read_yaml
from ..errors import ConfigError, UserError

EXAMPLE = "e.g. tune: {train.lr: {log: [1.0e-4, 1.0e-2]}, train.weight_decay: [0.0, 0.05]}"
RANGE_KINDS = ("log", "float", "int")


class Trial(Protocol):
    """What a dimension asks of an Optuna trial (``optuna.trial.Trial`` has these)."""

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class Dimension:
    """One key of the space: a range (``float``/``int``, linear or ``log``) or a list of ``choices``."""

    key: str
    kind: str  # "float", "int" or "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Trial) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def corners(self) -> list[Any]:
        """The values a config must accept for every trial to be valid: the ends, or every choice."""
        if self.kind == "choice":
            return list(self.choices)
        ends = [self.low, self.high]
        return [int(v) for v in ends] if self.kind == "int" else ends

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.key} in {json.dumps(list(self.choices))}"
        scale = "log " if self.log else ""
        return f"{self.key} {scale}{self.kind} [{self.low:g}, {self.high:g}]"


def read_space(config: str | Path, space_file: str | Path | None, overrides: list[str]) -> list[Dimension]:
    """The dimensions of ``--space FILE`` (a mapping under ``tune:``, or the mapping itself), else of the
    config's ``tune:`` section, each checked against the config: one line naming the file and key if not."""
    if space_file is not None:
        where = str(space_file)
        raw = _read_space_file(Path(space_file))
    else:
        where = f"{config}: tune"
        raw = load_config(config, overrides).tune
        if not raw:
            raise UserError(
                f"{config}: no search space; add a tune: section to the config or pass --space FILE ({EXAMPLE})"
            )
    dims = parse_space(raw, where)
    check_space(config, overrides, dims, where)
    return dims


def _read_space_file(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"--space {path}: no such file; give a YAML file with a tune: section ({EXAMPLE})")
    try:
        raw = read_yaml(path)
    except ConfigError as exc:
        raise UserError(f"--space {path}: {exc}") from None
    if isinstance(raw, dict) and set(raw) == {"tune"}:
        raw = raw["tune"]
    return raw


def parse_space(raw: Any, where: str) -> list[Dimension]:
    """``{key: spec}`` -> dimensions; anything else is one line naming ``where`` and the key."""
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{where}: expected a mapping of config keys to ranges or lists ({EXAMPLE})")
    return [_dimension(str(key), spec, where) for key, spec in raw.items()]


def _dimension(key: str, spec: Any, where: str) -> Dimension:
    def bad(why: str) -> UserError:
        return UserError(f"{where}: {key}: {why} ({EXAMPLE})")

    if isinstance(spec, list):
        if not spec:
            raise bad("an empty list of values")
        if len({json.dumps(v, sort_keys=True, default=str) for v in spec}) < len(spec):
            raise bad("a value is listed twice")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in spec):
            raise bad("list values must be numbers, strings, true/false or null (Optuna stores them)")
        return Dimension(key=key, kind="choice", choices=tuple(spec))
    if not isinstance(spec, dict):
        raise bad("expected {log: [low, high]}, {float: [low, high]}, {int: [low, high]} or a list of values")
    kinds = [k for k in RANGE_KINDS if k in spec]
    if "choice" in spec:
        return _dimension(key, spec["choice"], where)
    if len(kinds) != 1 or set(spec) - {kinds[0], "step", "log"}:
        raise bad(f"expected one of {', '.join(RANGE_KINDS)} with [low, high] (and optional step), got {spec}")
    kind = kinds[0]
    bounds = spec[kind]
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(is_number(v) for v in bounds)):
        raise bad(f"{kind}: expected [low, high] numbers, got {bounds!r}")
    low, high = (float(v) for v in bounds)
    log = kind == "log" or spec.get("log") is True
    step = spec.get("step")
    if not low < high:
        raise bad(f"{kind}: low {low:g} must be below high {high:g}")
    if log and low <= 0:
        raise bad(f"{kind}: a log scale needs low > 0, got {low:g}")
    if step is not None and (not is_number(step) or step <= 0 or log):
        raise bad("step must be a positive number, and cannot go with a log scale")
    if kind == "int" and not (low.is_integer() and high.is_integer() and (step is None or float(step).is_integer())):
        raise bad("int: low, high and step must be whole numbers")
    return Dimension(key=key, kind="int" if kind == "int" else "float", low=low, high=high, log=log, step=step)


def check_space(config: str | Path, overrides: list[str], dims: list[Dimension], where: str) -> None:
    """Every end of every range (and every listed value) is a valid config: a wrong key or a value out
    of its bounds is refused before any trial runs, naming the key."""
    for dim in dims:
        if dim.key == "tune" or dim.key.startswith("tune."):
            raise UserError(f"{where}: {dim.key}: the search space cannot search itself")
        for value in dim.corners():
            try:
                load_config(config, [*overrides, as_override(dim.key, value)])
            except UserError as exc:
                raise UserError(f"{where}: {dim.key}={json.dumps(value)} is not a valid config value: {exc}") from None


def as_override(key: str, value: Any) -> str:
    """``key=value`` as ``--set`` reads it (JSON is YAML)."""
    return f"{key}={json.dumps(value)}"
