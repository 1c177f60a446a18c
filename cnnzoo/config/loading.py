"""Reading a config: YAML in, ``--set``/``--unset`` overrides applied, every value checked against
the schema (types with did-you-mean, ranges, rules between fields), relative paths read from
the file's own folder."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ..errors import ConfigError, short_reason
from ..files import is_url
from .checks import check_values
from .schema import Config
from .shipped import find_config

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
    return _coerce_scalar(value, tp)


def _coerce_scalar(value: Any, tp: Any) -> Any:
    """``value`` checked against ``bool``, ``int``, ``float`` (a YAML 1.1 string like ``1e-3`` too) or ``str``."""
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads `1e-3` as a string
        try:
            return float(value)
        except ValueError:
            raise _Mismatch from None
    if tp is str and isinstance(value, str):
        return value
    if tp in (bool, int, float, str):
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
            hint = (
                f"; did you mean {prefix + '.' if prefix else ''}{close[0]}?"
                if close
                else (f"; known keys{' of ' + prefix if prefix else ''}: {', '.join(fields)}")
            )
            raise ConfigError(f"{where}{dotted}: unknown key{hint}")
        tp, choices = hints[key], fields[key].metadata.get("choices")  # choices: names a registry keeps
        try:
            kwargs[key] = _coerce(value, tp, dotted, where)
            if choices is not None and kwargs[key] not in choices:
                raise _Mismatch
        except _Mismatch:
            expected = " | ".join(choices) if choices is not None else _type_name(tp)
            raise ConfigError(f"{where}{dotted}: got {value!r} ({_yaml_type(value)}), expected {expected}") from None
        bounds = fields[key].metadata.get("bounds")
        if bounds is not None and not bounds.admits(kwargs[key]):
            integer = "int" in _type_name(tp).split(" or ")
            raise ConfigError(f"{where}{dotted}: got {kwargs[key]!r}, expected {bounds.describe(integer)}")
    return cls(**kwargs)


def _yaml_type(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "mapping",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What a YAML error says is wrong, in one clause (a caller reports where apart)."""
    return getattr(exc, "problem", None) or short_reason(exc)


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
        raise ConfigError(f"--set {text}: the value is not valid YAML ({yaml_problem(exc)})") from None
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
            if (
                part not in node
                and len(node) == 1
                and i >= 2
                and parts[i - 1].lstrip("-").isdigit()
                and parts[i - 2] == "layers"
            ):
                written = next(iter(node))
                fixed = ".".join(parts[:i] + [str(written)] + parts[i + 1 :])
                raise ConfigError(f"--set {key}: {'.'.join(parts[:i])} is written `{written}`; use --set {fixed}=...")
            if last:
                node[part] = value
                return
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i])} is a single value, not a section")
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {key}: {here} is a single value ({node!r}), it has no key {parts[i + 1]!r}")


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
        raise ConfigError(f"{where}: YAML syntax error: {yaml_problem(exc)}") from None
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
    check_values(cfg, where)
    for key in ("root", "cache_dir", "images_dir"):  # `~/photos` means the home folder, wherever it was written
        value = getattr(cfg.data, key)
        if value and value.startswith("~"):
            setattr(cfg.data, key, os.path.expanduser(value))
    cfg.source_path = source
    return cfg


def load_config(source: str | Path | dict | Config, overrides: list[str] | None = None) -> Config:
    """Load a config from a YAML path, a mapping or a Config, then apply overrides.

    A file's relative paths are read from the file's folder (:func:`rebase_paths`); paths in
    overrides and mappings from the working directory. A path that is no file may name a shipped
    config (:func:`cnnzoo.config.shipped.find_config`).
    """
    if isinstance(source, Config):
        return from_dict(source.to_dict(), overrides, source.source_path)
    if isinstance(source, dict):
        return from_dict(source, overrides)
    source = find_config(source)  # a file, else a shipped config by name (`--config quickstart`)
    raw = read_yaml(source)
    rebase_paths(raw, Path(source).parent)
    return from_dict(raw, overrides, str(source))


WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def looks_like_path(value: Any) -> bool:
    """A backbone ``weights`` value that names a file rather than a weights name like DEFAULT."""
    return isinstance(value, str) and (
        os.sep in value or "/" in value or value.startswith("~") or value.endswith(WEIGHT_FILE_SUFFIXES)
    )


def backbone_entry(layers: Any) -> tuple[str, dict[str, Any]] | None:
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
    if os.path.isabs(value) or is_url(value):  # s3://bucket/prefix is no path beside the file
        return value
    beside = os.path.normpath(os.path.join(os.path.abspath(folder), value))
    return value if not os.path.exists(beside) and os.path.exists(value) else beside


def rebase_paths(raw: dict, folder: Path) -> None:
    """Make a config file's relative paths (data.root, data.cache_dir, a backbone's weights file, train.distill.teacher)
    relative to the file's own folder, in place, so that the file works from any working directory.

    A path that exists only relative to the working directory is kept as it is: configs written
    before this rule still work from where they used to.
    """
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("root", "cache_dir", "images_dir"):
            if isinstance(data.get(key), str) and data[key]:
                data[key] = _from_folder(data[key], folder)
    train = raw.get("train")
    distill = train.get("distill") if isinstance(train, dict) else None
    teacher = distill.get("teacher") if isinstance(distill, dict) else None
    if isinstance(teacher, str) and teacher and not os.path.isabs(os.path.expanduser(teacher)):
        # a teacher is often a run of the working directory (runs/<name>/<N>/best.pt), which a shipped
        # config names: beside the file when it is there, else from the working directory
        beside = os.path.normpath(os.path.join(os.path.abspath(folder), teacher))
        distill["teacher"] = beside if os.path.exists(beside) else os.path.expanduser(teacher)
    model = raw.get("model")
    entry = backbone_entry(model.get("layers")) if isinstance(model, dict) else None
    if entry is not None and looks_like_path(entry[1].get("weights")):
        entry[1]["weights"] = _from_folder(entry[1]["weights"], folder)
