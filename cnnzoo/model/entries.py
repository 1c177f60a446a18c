"""A layer list as the YAML writes it, read into entries: ``repeat`` written out, and each
entry's arguments checked against its layer class and completed from the running shape.

Owns :func:`flatten_spec` (the list's form, the ``repeat`` blocks, the cap on layers),
:func:`fill_arguments` (unknown and missing arguments refused with the names the class takes;
``num_classes``, depthwise ``in_channels`` and the sizes the input fixes filled in) and
:func:`check_sizes`. The tracer (:mod:`cnnzoo.model.layers`) calls them for every layer.
Imports only errors; torch-free (a class's signature is read with :mod:`inspect`).
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import ShapeError, shape_text

# What a config or checkpoint may ask for: far above any real network, far below what would
# exhaust memory or hang while the network is merely being checked (the tracer adds its own two).
MAX_LAYERS = 5_000
MAX_ARGUMENT = 2**24  # any integer argument (channels, features, kernel ...)

_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")


@dataclass
class Entry:
    """One layer of the list: its name (or alias), its arguments as written, and where the YAML has it."""

    name: str
    kwargs: dict[str, Any]
    where: str


def flatten_spec(layers: Any, where: str = "model.layers", budget: int = MAX_LAYERS) -> list[Entry]:
    """The layer list with ``repeat`` blocks written out; refuses more than ``budget`` layers."""
    if not isinstance(layers, list):
        raise ShapeError(f"{where}: expected a list of layers, got {type(layers).__name__}")
    entries: list[Entry] = []
    for pos, item in enumerate(layers):
        here = f"{where}.{pos}"
        if isinstance(item, str):
            name, args = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, args = next(iter(item.items()))
            args = {} if args is None else args
        else:
            raise ShapeError(
                f"{here}: a layer is a name (`- ReLU`) or a one-key mapping "
                f"(`- Conv2d: {{out_channels: 32, kernel_size: 3}}`), got {item!r}"
            )
        if not isinstance(name, str):
            raise ShapeError(f"{here}: layer name must be text, got {name!r}")
        if name == "repeat":
            if not isinstance(args, dict) or set(args) != {"times", "layers"}:
                raise ShapeError(f"{here} (repeat): write `repeat: {{times: N, layers: [...]}}`")
            times = args["times"]
            if not isinstance(times, int) or isinstance(times, bool) or times < 1:
                raise ShapeError(f"{here} (repeat): times must be a positive integer, got {times!r}")
            left = budget - len(entries)
            block = flatten_spec(args["layers"], f"{here}.repeat.layers", left)
            if len(block) * times > left:
                raise ShapeError(
                    f"{here} (repeat): {times} x {len(block)} layers is more than a network "
                    f"may have ({MAX_LAYERS:,} layers)"
                )
            entries.extend(block * times)
            continue
        if not isinstance(args, dict):
            raise ShapeError(f"{here} ({name}): arguments must be a mapping, e.g. `{name}: {{...}}`; got {args!r}")
        if any(not isinstance(k, str) for k in args):
            raise ShapeError(
                f"{here} ({name}): argument names are words, e.g. `{name}: {{p: 0.5}}`; "
                f"got {next(k for k in args if not isinstance(k, str))!r}"
            )
        entries.append(Entry(name, dict(args), here))
        if len(entries) > budget:
            raise ShapeError(f"{where}: more layers than a network may have ({MAX_LAYERS:,})")
    return entries


def fill_arguments(
    cls: type, type_name: str, kwargs: dict, shape: tuple[int, ...], *, num_classes: int | None, label: str
) -> dict:
    """A layer's arguments checked against its class's signature, with the words ``num_classes`` and
    ``in_channels`` (depthwise groups) replaced, and the sizes the input fixes filled in."""
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        params = {}
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key, value in list(kwargs.items()):
        if key not in params and not accepts_any:
            names = [n for n in params if n not in ("self", "device", "dtype")]
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else f"; it takes: {', '.join(names) or 'no arguments'}"
            raise ShapeError(f"{label}: unknown argument '{key}'{hint}")
        if value == "in_channels" and key != "in_channels" and len(shape) > 1:  # depthwise: groups = channels
            kwargs[key] = shape[0]
        elif value == "num_classes":
            if num_classes is None:
                raise ShapeError(
                    f"{label}: {key}: num_classes, but the number of classes is unknown; "
                    f"set model.num_classes or point data at class folders"
                )
            kwargs[key] = num_classes
        elif isinstance(value, str) and _NUMBER.match(value):  # YAML 1.1 reads 1e-5 as text
            kwargs[key] = float(value)
    inferred = {"self", "in_channels", "in_features", "num_features", "input_shape"}
    required = [
        n for n, p in params.items() if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    missing = [n for n in required if n not in inferred and n not in kwargs]
    if missing:
        raise ShapeError(
            f"{label}: missing argument{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}; write e.g. `{type_name}: {{" + ", ".join(f"{m}: ..." for m in missing) + "}`"
        )
    _fill_input_sizes(params, type_name, kwargs, shape, label)
    return kwargs


def _fill_input_sizes(params: Any, type_name: str, kwargs: dict, shape: tuple[int, ...], label: str) -> None:
    """The arguments the running shape fixes (in_channels, in_features, num_features, a block's
    input_shape), set from it; a value the user wrote must agree with it."""
    rank = len(shape)
    if "in_channels" in params and rank < 2:
        raise ShapeError(
            f"{label}: needs a feature map, got a vector of {shape[0]} values "
            f"(a {type_name} cannot follow Flatten/Linear)"
        )
    if "in_features" in params and rank != 1:
        raise ShapeError(
            f"{label}: input is {shape_text(shape)}, a {rank + 1}-D batch; put "
            f"flatten (or gap) before it to make a vector of {math.prod(shape)} features"
        )
    if "input_shape" in params:  # blocks trace their inner layers from it
        if kwargs.setdefault("input_shape", list(shape)) != list(shape):
            raise ShapeError(
                f"{label}: input_shape={kwargs['input_shape']} but the input is {shape_text(shape)}; "
                f"leave input_shape out to infer it"
            )
    for name, unit in (("in_channels", "channels"), ("in_features", "features"), ("num_features", "channels")):
        if name in params:
            given = kwargs.setdefault(name, shape[0])
            if given != shape[0]:
                seen = f"the input {shape_text(shape)}" if rank > 1 else "the input"
                raise ShapeError(
                    f"{label}: {name}={given} but {seen} has {shape[0]} {unit}; leave {name} out to infer it"
                )


def check_sizes(kwargs: dict, label: str) -> None:
    """Refuse arguments no layer can use: not finite, beyond :data:`MAX_ARGUMENT`, no channels."""
    for key, value in kwargs.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ShapeError(f"{label}: {key}={v} is not a finite number")
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_ARGUMENT:
                raise ShapeError(f"{label}: {key}={v:,} is larger than cnnzoo allows ({MAX_ARGUMENT:,})")
            if key.endswith(("_channels", "_features")) and isinstance(v, int) and v < 1:
                raise ShapeError(f"{label}: {key}={v}; a layer needs at least 1")
