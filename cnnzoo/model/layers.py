"""The model builder: a YAML layer list in, a checked ``torch.nn.Sequential`` out.

Each entry of ``model.layers`` is a bare name (``ReLU``) or a one-key mapping from a
name to keyword arguments (``Conv2d: {out_channels: 32, kernel_size: 3}``). A name is
any ``torch.nn`` module class, one of cnnzoo's short aliases (``conv``, ``pool``,
``dense``, ``gap`` ...), ``repeat: {times: N, layers: [...]}`` for VGG-style stages, a
block with layer lists of its own (``residual``, ``branches``, ``squeeze_excite``:
:mod:`cnnzoo.model.blocks`) or a pretrained ``backbone`` (:mod:`cnnzoo.model.backbones`).

The builder walks the running shape through the list first on the ``meta`` device (no
memory, no compute), filling in ``in_channels``/``in_features``/``num_features`` and
the value ``num_classes``, and refuses, in words, any layer that cannot take its
input. Only then are real modules made. The result is flat: ``model[i]`` is layer
``i`` of ``cnnzoo summary``, which is how forward hooks (``explain``) address layers.

This module owns the layer names (torch.nn, the aliases, cnnzoo's own layers), the tracer, the
smallest-input search and the builder. Reading a list's entries and their arguments is
:mod:`cnnzoo.model.entries`; a conv or pool's output-size arithmetic is :mod:`cnnzoo.model.shapes`.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import inspect
import math
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import CHANNEL_WORDS, MAX_IMAGE_SIDE, READABLE_CHANNELS
from ..errors import ShapeError, shape_text, short_reason
from .backbones import Backbone
from .blocks import BLOCKS
from .entries import MAX_LAYERS, Entry, check_sizes, fill_arguments, flatten_spec
from .shapes import SPATIAL_2D, InputTooSmall, check_spatial, describe


class GlobalAvgPool(nn.Module):
    """Average every channel over height and width: ``[B, C, H, W] -> [B, C]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


# alias -> (torch.nn class name, default arguments)
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "conv": ("Conv2d", {}),
    "relu": ("ReLU", {}),
    "maxpool": ("MaxPool2d", {"kernel_size": 2}),
    "pool": ("MaxPool2d", {"kernel_size": 2}),
    "avgpool": ("AvgPool2d", {"kernel_size": 2}),
    "gap": ("GlobalAvgPool", {}),
    "flatten": ("Flatten", {}),
    "dense": ("Linear", {}),
    "dropout": ("Dropout", {}),
    "batchnorm": ("BatchNorm", {}),  # BatchNorm2d or BatchNorm1d by the input's rank
    "backbone": ("Backbone", {}),  # a pretrained feature extractor (cnnzoo.model.backbones)
    "residual": ("Residual", {}),  # blocks with their own layer lists (cnnzoo.model.blocks)
    "branches": ("Branches", {}),
    "squeeze_excite": ("SqueezeExcite", {}),
}
_OWN_LAYERS: dict[str, type[nn.Module]] = {"GlobalAvgPool": GlobalAvgPool, "Backbone": Backbone, **BLOCKS}
_LAYER_COUNT: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("layer_count", default=None)
# What a traced layer may make, beside the list's own limits (cnnzoo.model.entries: MAX_LAYERS,
# MAX_ARGUMENT): far above any real network, far below what would exhaust memory.
MAX_LAYER_PARAMS = 2_000_000_000
MAX_ACTIVATION = 2**30  # values in one layer's output for one image


# what torch says inside a layer (a backbone's pools, a block's convs) when the map is too small
_TORCH_TOO_SMALL = ("Output size is too small", "Kernel size can't be greater than actual input size")


def _torch_layer_names() -> list[str]:
    return sorted(
        n
        for n, obj in vars(nn).items()
        if inspect.isclass(obj) and issubclass(obj, nn.Module) and not n.startswith("_")
    )


def _known_names() -> list[str]:
    return _torch_layer_names() + list(_OWN_LAYERS) + list(ALIASES) + ["repeat"]


def _suggest(name: str) -> str:
    by_lower = {n.lower(): n for n in _known_names()}
    if name.lower() in by_lower:
        return f"; did you mean {by_lower[name.lower()]}?"
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean {by_lower[close[0]]}?" if close else ""


@dataclass(kw_only=True)
class LayerInfo:
    """One built layer: what ``summary`` prints and what the real module is made from."""

    index: int
    type: str
    kwargs: dict[str, Any]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int = 0
    trainable_params: int = 0
    macs: int = 0
    where: str = ""  # the YAML position, e.g. model.layers.3.repeat.layers.0
    cls: type | None = field(default=None, repr=False)
    activations: int = 0  # values the layer produces per image, inner layers of a block included


def resolve_layer_class(name: str, shape: tuple[int, ...], label: str) -> tuple[str, type, dict]:
    """A layer name or alias -> (class name, class, default arguments); ShapeError for unknown names."""
    defaults: dict[str, Any] = {}
    if name in ALIASES:
        name, defaults = ALIASES[name]
        if name == "BatchNorm":
            name = "BatchNorm2d" if len(shape) == 3 else "BatchNorm1d"
    if name in _OWN_LAYERS:
        return name, _OWN_LAYERS[name], dict(defaults)
    cls = getattr(nn, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)) or name.startswith("_"):
        raise ShapeError(f"{label}: unknown layer '{name}'{_suggest(name)}")
    return name, cls, dict(defaults)


def _count_layer(type_name: str, entry: Entry, shape: tuple[int, ...], label: str) -> None:
    """One more layer in the network being traced: the layer cap, and the one-backbone rule."""
    counts = _LAYER_COUNT.get()  # [layers, backbones], shared by the blocks' inner traces
    counts[0] += 1
    if counts[0] > MAX_LAYERS:
        raise ShapeError(f"{label}: more layers than a network may have ({MAX_LAYERS:,}), blocks included")
    if type_name != "Backbone":
        return
    counts[1] += 1
    if counts[1] > 1 or ".repeat." in entry.where or not entry.where.startswith("model.layers"):
        raise ShapeError(f"{label}: a network has at most one backbone layer, outside repeat and blocks")
    if len(shape) != 3 or shape[0] not in READABLE_CHANNELS:
        raise ShapeError(
            f"{label}: a pretrained backbone takes images CxHxW of {CHANNEL_WORDS} channels, got "
            f"{shape_text(shape)}; put it first"
        )


def _run_meta(
    module: nn.Module, shape: tuple[int, ...], *, count_macs: bool, count_inner: bool, label: str
) -> tuple[tuple[int, ...], int, int]:
    """Run a layer on a meta batch of two: (output shape, MACs per image, activations per image)."""

    from torch.utils.flop_counter import FlopCounterMode  # lazy: ~0.25 s to import; only summary counts MACs

    module.eval()
    inner: list[int] = []  # what a backbone's or block's own layers produce: the summary's memory figure

    def count(_module: nn.Module, _inputs: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.dim() > 0:
            inner.append(out[0].numel())  # one image of the two

    hooks = [m.register_forward_hook(count) for m in module.modules() if not list(m.children())] if count_inner else []
    counter = FlopCounterMode(display=False) if count_macs else None
    try:
        with counter or contextlib.nullcontext():
            y = module(torch.empty((2, *shape), device="meta"))
    except Exception as exc:  # any torch complaint about the input becomes a sentence
        msg = short_reason(exc, 200)
        error = InputTooSmall if any(sign in str(exc) for sign in _TORCH_TOO_SMALL) else ShapeError
        raise error(f"{label}: cannot take input {shape_text(shape)}: {msg}") from exc
    finally:
        for hook in hooks:
            hook.remove()
    if not isinstance(y, torch.Tensor):
        raise ShapeError(
            f"{label}: returns {type(y).__name__}, not a tensor; it cannot be used in a sequential network"
        )
    out_shape = tuple(y.shape[1:])
    if len(out_shape) == 0 or min(out_shape) < 1:
        raise InputTooSmall(
            f"{label}: turns input {shape_text(shape)} into an empty output {shape_text(out_shape) or 'scalar'}"
        )
    if math.prod(out_shape) > MAX_ACTIVATION:
        raise ShapeError(
            f"{label}: its output {shape_text(out_shape)} holds {math.prod(out_shape):,} values "
            f"per image, more than cnnzoo allows ({MAX_ACTIVATION:,})"
        )
    macs = counter.get_total_flops() // 4 if counter else 0  # 2 images, 2 flops per MAC
    return out_shape, macs, sum(inner) or math.prod(out_shape)


def _trace_one(
    index: int, entry: Entry, shape: tuple[int, ...], *, num_classes: int | None, count_macs: bool, label: str
) -> LayerInfo:
    """Resolve, check, make (on the meta device) and run one layer."""
    type_name, cls, kwargs = resolve_layer_class(entry.name, shape, label)
    kwargs.update(entry.kwargs)
    label = f"layer {index} ({describe(type_name, kwargs)})"
    kwargs = fill_arguments(cls, type_name, kwargs, shape, num_classes=num_classes, label=label)
    check_sizes(kwargs, label)
    if type_name in SPATIAL_2D:
        check_spatial(type_name, kwargs, shape, label)
    _count_layer(type_name, entry, shape, label)
    try:
        with torch.device("meta"):
            module = cls(**kwargs)
    except ShapeError as exc:  # inside a block: say which block
        raise type(exc)(f"{label}: {exc}") from None
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise ShapeError(f"{label}: {short_reason(exc, 200)}") from exc
    params = sum(p.numel() for p in module.parameters())
    if params > MAX_LAYER_PARAMS:
        raise ShapeError(f"{label}: {params:,} parameters, more than cnnzoo allows in one layer ({MAX_LAYER_PARAMS:,})")
    out_shape, macs, activations = _run_meta(
        module, shape, count_macs=count_macs, count_inner=type_name == "Backbone" or type_name in BLOCKS, label=label
    )
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return LayerInfo(
        index=index,
        type=type_name,
        kwargs=kwargs,
        input_shape=shape,
        output_shape=out_shape,
        params=params,
        trainable_params=trainable,
        macs=macs,
        where=entry.where,
        cls=cls,
        activations=activations,
    )


def trace_chain(
    layers: Any,
    input_shape: tuple[int, ...],
    *,
    where: str = "model.layers",
    num_classes: int | None = None,
    count_macs: bool = False,
) -> list[LayerInfo]:
    """Trace a layer list from ``input_shape``: the shapes and checks, no classifier rules.

    Blocks call it for their inner lists; one count of layers (:data:`MAX_LAYERS`) covers
    the whole network, blocks included.
    """
    box = _LAYER_COUNT.get()
    token = _LAYER_COUNT.set([0, 0]) if box is None else None  # layers, backbones
    try:
        shape = tuple(int(s) for s in input_shape)
        infos: list[LayerInfo] = []
        entries = flatten_spec(layers, where)
        if not entries:
            raise ShapeError(f"{where}: the list is empty; list at least one layer")
        for index, entry in enumerate(entries):
            label = f"layer {index} ({entry.name})"
            try:
                info = _trace_one(index, entry, shape, num_classes=num_classes, count_macs=count_macs, label=label)
            except ShapeError:
                raise
            except (TypeError, ValueError, ArithmeticError, RuntimeError, AssertionError) as exc:
                # whatever a strange value makes torch or Python say, it is still this layer's fault
                raise ShapeError(f"{label}: {short_reason(exc, 200)}") from exc
            infos.append(info)
            shape = info.output_shape
        return infos
    finally:
        if token is not None:
            _LAYER_COUNT.reset(token)


def trace_layers(
    layers: Any, input_shape: tuple[int, ...] | list[int], num_classes: int | None = None, *, count_macs: bool = False
) -> list[LayerInfo]:
    """Resolve and check every layer on the meta device; return what each one produces.

    ``count_macs`` also counts multiply-accumulates with torch's FlopCounterMode (which
    costs about a second the first time it runs, so only ``summary`` asks for it).
    """
    if isinstance(layers, list) and not layers:
        raise ShapeError("model.layers: the network is empty; list at least one layer")
    try:
        with _warnings_held_until_traced():
            infos = trace_chain(
                layers, tuple(input_shape), where="model.layers", num_classes=num_classes, count_macs=count_macs
            )
    except InputTooSmall as exc:
        smallest = smallest_input(layers, tuple(input_shape), num_classes)
        if smallest is None:
            raise
        raise InputTooSmall(f"{exc}; the smallest input that works is {shape_text(smallest)}") from exc
    shape = infos[-1].output_shape
    if len(shape) != 1:
        raise ShapeError(
            f"the network ends with a {shape_text(shape)} feature map, but a classifier "
            f"must end with one score per class; end with flatten (or gap) and "
            f"dense: {{out_features: num_classes}}"
        )
    if num_classes is not None and shape[0] != num_classes and not (num_classes == 2 and shape[0] == 1):
        raise ShapeError(
            f"layer {len(infos) - 1} ({infos[-1].type}): the network ends with "
            f"{shape[0]} outputs but there are {num_classes} classes; use "
            f"out_features: num_classes"
        )
    return infos


@contextlib.contextmanager
def _warnings_held_until_traced() -> Iterator[None]:
    """What torch warns while a layer is made (``nn.Transformer`` about nested tensors) is held
    until the whole list has traced: a list that fails says its one error line alone, and one
    that traces gets the warnings then, under the usual filters. Each is shown as if from its
    own module, so the real build that follows does not print it a second time."""
    with warnings.catch_warnings(record=True) as held:
        yield
    for caught in held:
        module = next((m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == caught.filename), None)
        registry = vars(module).setdefault("__warningregistry__", {}) if module is not None else None
        warnings.warn_explicit(
            caught.message,
            caught.category,
            caught.filename,
            caught.lineno,
            module=module.__name__ if module is not None else None,
            registry=registry,
        )


def smallest_input(layers: Any, input_shape: tuple[int, ...], num_classes: int | None = None) -> tuple[int, ...] | None:
    """The input with the smallest sides (each raised to at least S) that no layer finds too small.

    Each conv and pool's output grows with its input (floor((W - K + 2P)/S) + 1), so whether a
    side of S gets through is monotone in S: a binary search over the builder's own tracing
    (on the meta device) finds it. None when even the largest allowed side does not.
    """

    if len(input_shape) != 3:
        return None
    channels, height, width = input_shape

    def grown(side: int) -> tuple[int, int, int]:
        return channels, max(height, side), max(width, side)

    def gets_through(side: int) -> bool:
        try:
            trace_chain(layers, grown(side), where="model.layers", num_classes=num_classes)
        except InputTooSmall:
            return False
        except ShapeError:
            pass  # another complaint, once the input is large enough: not this question
        return True

    low, high = min(height, width), MAX_IMAGE_SIDE  # low is too small; high is the last hope
    if low >= high or not gets_through(high):
        return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if gets_through(middle) else (middle, high)
    return grown(high)


def build_from_infos(infos: list[LayerInfo], *, pretrained: bool = False) -> nn.Sequential:
    """Make the real modules; ``pretrained`` also loads each backbone's ``weights``."""
    model = nn.Sequential(*(info.cls(**info.kwargs) for info in infos))
    if pretrained:
        for info, module in zip(infos, model):
            if isinstance(module, Backbone):
                module.load_pretrained(key=f"{info.where}.backbone.weights")
    return model


def layer_records(infos: list[LayerInfo]) -> list[dict[str, Any]]:
    """The resolved layers as plain data (kept in checkpoints to rebuild without tracing)."""
    return [{"type": i.type, "kwargs": _plain(i.kwargs)} for i in infos]


def _plain(kwargs: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


def trace_records(
    records: list[dict[str, Any]], input_shape: tuple[int, ...] | list[int], num_classes: int | None = None
) -> list[LayerInfo]:
    """:func:`layer_records` output traced again, like a config's layers (shapes, parameters)."""
    return trace_layers([{rec["type"]: dict(rec["kwargs"])} for rec in records], input_shape, num_classes)


def build_from_records(
    records: list[dict[str, Any]],
    input_shape: tuple[int, ...] | list[int] | None = None,
    num_classes: int | None = None,
) -> nn.Sequential:
    """Rebuild a model from :func:`layer_records` output (e.g. from a checkpoint).

    With ``input_shape`` the records are traced first, exactly like a config's layers, so
    a damaged or hostile checkpoint fails in words before anything is allocated.
    """
    if input_shape is not None:
        return build_from_infos(trace_records(records, input_shape, num_classes))
    modules = []
    for index, rec in enumerate(records):
        _, cls, _ = resolve_layer_class(rec["type"], (), f"layer {index} ({rec['type']})")
        modules.append(cls(**rec["kwargs"]))
    return nn.Sequential(*modules)


def build_model(
    layers: Any, input_shape: tuple[int, ...] | list[int], num_classes: int | None = None, *, pretrained: bool = True
) -> nn.Sequential:
    """Build the checked ``nn.Sequential``; its forward on ``[B, C, H, W]`` gives logits.

    ``pretrained`` loads the weights a ``backbone`` layer names (downloading them if needed).
    """
    return build_from_infos(trace_layers(layers, input_shape, num_classes), pretrained=pretrained)
