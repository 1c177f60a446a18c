"""Blocks that hold their own layer lists: ``residual``, ``branches`` and ``squeeze_excite``.

A block is one layer of the top-level ``nn.Sequential`` (one row in ``cnnzoo summary``,
``model[i]`` for hooks) whose inner lists are written like ``model.layers`` and built by
the same tracer, so every inner layer gets the same shape checks and messages. The
builder hands each block its ``input_shape`` (as it hands ``in_channels`` to a conv), so
a block rebuilt from a checkpoint traces itself exactly as it did in training.

* ``residual: {layers: [...], shortcut: auto | identity | [...], activation: relu}``:
  ``activation(layers(x) + shortcut(x))``. ``auto`` is the identity when the shapes
  agree, else a 1x1 conv (no bias) + batchnorm with the stride and channels that make
  them agree (ResNet's projection shortcut); ``activation: null`` for none (MobileNetV2).
* ``branches: {paths: [[...], [...]], merge: concat | add}``: Inception-style parallel
  paths over the same input, concatenated along channels or added.
* ``squeeze_excite: {reduction: 4}``: channel attention (Hu et al. 2018): global average
  pool, 1x1 conv down by ``reduction``, ReLU, 1x1 conv back, sigmoid, scale the input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ShapeError, shape_text


def _chain(layers: Any, input_shape: list[int], part: str) -> tuple[nn.Sequential, tuple[int, ...], list]:
    """Trace and build an inner layer list; errors say which part of the block failed."""
    # lazy: the documented cycle; layers imports this module, and a block traces its lists with layers' tracer
    from .layers import build_from_infos, trace_chain

    try:
        infos = trace_chain(layers, tuple(input_shape), where=part)
    except ShapeError as exc:
        raise type(exc)(f"{part}: {exc}") from None  # InputTooSmall stays itself
    return build_from_infos(infos), infos[-1].output_shape, infos


def _activation(name: str | None) -> nn.Module:
    if name is None:
        return nn.Identity()
    from .layers import resolve_layer_class  # lazy: the documented cycle (see _chain)

    _, cls, defaults = resolve_layer_class(str(name), (), f"activation {name}")
    return cls(**defaults)


class Residual(nn.Module):
    """``activation(layers(x) + shortcut(x))``, with the shortcut inferred when omitted."""

    def __init__(
        self, layers: list, input_shape: list[int], *, shortcut: Any = "auto", activation: str | None = "relu"
    ):
        super().__init__()
        self.body, out_shape, body_infos = _chain(layers, input_shape, "layers")
        self.inner = {"layers": body_infos}
        in_shape = tuple(input_shape)
        if shortcut == "auto":
            shortcut = "identity" if out_shape == in_shape else _projection(in_shape, out_shape)
        if shortcut == "identity":
            if out_shape != in_shape:
                raise ShapeError(
                    f"shortcut identity: the layers turn {shape_text(in_shape)} into "
                    f"{shape_text(out_shape)}, so x cannot be added; leave shortcut out to infer one"
                )
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut, short_shape, short_infos = _chain(shortcut, input_shape, "shortcut")
            self.inner["shortcut"] = short_infos
            if short_shape != out_shape:
                raise ShapeError(
                    f"shortcut: gives {shape_text(short_shape)} but the layers give "
                    f"{shape_text(out_shape)}; "
                    f"both must agree to be added"
                )
        self.activation = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.shortcut(x))


def _projection(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list:
    """ResNet's projection shortcut from one feature map shape to another, or an error in words."""
    if len(in_shape) == 3 and len(out_shape) == 3:
        for stride in range(1, max(in_shape[1:]) + 1):  # a 1x1 conv gives floor((W - 1) / S) + 1
            if all((w - 1) // stride + 1 == o for w, o in zip(in_shape[1:], out_shape[1:])):
                return [
                    {"conv": {"out_channels": out_shape[0], "kernel_size": 1, "stride": stride, "bias": False}},
                    "batchnorm",
                ]
    raise ShapeError(
        f"cannot infer a shortcut from {shape_text(in_shape)} to {shape_text(out_shape)}; "
        f"write shortcut: [...] with layers that make {shape_text(out_shape)}"
    )


class Branches(nn.Module):
    """Parallel paths over the same input, merged by channel concatenation or addition."""

    def __init__(self, paths: list, input_shape: list[int], merge: str = "concat"):
        super().__init__()
        if not isinstance(paths, list) or len(paths) < 2:
            raise ShapeError("paths: give at least two lists of layers, e.g. paths: [[conv: ...], [pool]]")
        if merge not in ("concat", "add"):
            raise ShapeError(f"merge: got {merge!r}, expected concat or add")
        built = [_chain(path, input_shape, f"path {i}") for i, path in enumerate(paths)]
        self.paths = nn.ModuleList(module for module, _, _ in built)
        self.inner = {f"path {i}": infos for i, (_, _, infos) in enumerate(built)}
        self.merge = merge
        shapes = [shape for _, shape, _ in built]
        rule = (lambda s: s) if merge == "add" else (lambda s: s[1:])
        if any(rule(s) != rule(shapes[0]) for s in shapes):
            need = "the same shape" if merge == "add" else "the same height and width"
            raise ShapeError(
                f"merge {merge}: the paths give {', '.join(shape_text(s) for s in shapes)}; they need {need}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [path(x) for path in self.paths]
        return torch.cat(outputs, dim=1) if self.merge == "concat" else torch.stack(outputs).sum(0)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: rescale each channel by a gate learned from all channels."""

    def __init__(self, input_shape: list[int], reduction: int = 4):
        super().__init__()
        if len(input_shape) != 3:
            raise ShapeError(f"needs a feature map CxHxW, got {shape_text(input_shape)}")
        if not isinstance(reduction, int) or isinstance(reduction, bool) or reduction < 1:
            raise ShapeError(f"reduction: got {reduction!r}, expected a positive integer")
        channels = input_shape[0]
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )
        self.inner: dict[str, list] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


BLOCKS: dict[str, type[nn.Module]] = {"Residual": Residual, "Branches": Branches, "SqueezeExcite": SqueezeExcite}
