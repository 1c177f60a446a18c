"""The output size of a conv or pool layer, worked out before the layer is made:
``out = floor((W − K_eff + 2P) / S) + 1`` on each side, with ``K_eff = D·(K − 1) + 1``.

Owns :class:`InputTooSmall` (the refusal a larger input would cure, which makes the tracer look
for the smallest input that works), :func:`check_spatial` (the rule applied, its arithmetic in
the message) and :func:`size_arithmetic` (the same arithmetic in words, as ``cnnzoo explain``'s
page shows it). Imports only errors; torch-free.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ShapeError, shape_text

SPATIAL_2D = ("Conv2d", "MaxPool2d", "AvgPool2d")  # the layers whose output size follows the rule


class InputTooSmall(ShapeError):
    """A layer that would make an empty feature map: a larger input would get through."""


def _pair(v: Any, key: str, label: str) -> tuple[int, int]:
    items = list(v) if isinstance(v, (list, tuple)) else [v]
    if not 1 <= len(items) <= 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise ShapeError(f"{label}: {key} must be an integer or [height, width] integers, got {v!r}")
    return (items[0], items[-1])


def _spatial_terms(type_name: str, kwargs: dict, label: str):
    """(kernel, stride, dilation, padding, rounding) per axis of a conv or pool layer; None
    when its output size does not follow from them (no kernel_size, or padding='same')."""
    if "kernel_size" not in kwargs:
        return None  # torch's own message about the missing argument is clear enough
    k = _pair(kwargs["kernel_size"], "kernel_size", label)
    is_conv = type_name == "Conv2d"
    stride = kwargs.get("stride", 1 if is_conv else kwargs["kernel_size"])
    s = _pair(kwargs["kernel_size"] if stride is None and not is_conv else stride, "stride", label)
    d = _pair(kwargs.get("dilation", 1), "dilation", label)
    padding = kwargs.get("padding", 0)
    if isinstance(padding, str):
        if padding == "same":
            return None
        padding = 0
    p = _pair(padding, "padding", label)
    return k, s, d, p, math.ceil if kwargs.get("ceil_mode") else math.floor


def _axis_size(w: int, axis: tuple[int, int, int, int], rounding) -> tuple[int, str]:
    """The output-size rule on one axis (kernel, stride, padding, dilation), and its arithmetic in words."""
    k, s, p, d = axis
    k_eff = d * (k - 1) + 1
    out = rounding((w - k_eff + 2 * p) / s) + 1
    return out, f"({w} − {k_eff} + 2·{p})/{s} + 1 = {out}"


def size_arithmetic(type_name: str, kwargs: dict, input_shape: tuple[int, ...]) -> str | None:
    """``H: (32 − 3 + 2·1)/1 + 1 = 32, W: ...`` for a conv or pool layer; None for other layers."""
    if len(input_shape) != 3 or type_name not in SPATIAL_2D:
        return None
    terms = _spatial_terms(type_name, kwargs, type_name)
    if terms is None:
        return None
    k, s, d, p, rounding = terms
    steps = [_axis_size(w, axis, rounding)[1] for w, axis in zip(input_shape[1:], zip(k, s, p, d))]
    return steps[0] if steps[0] == steps[1] else f"H: {steps[0]}; W: {steps[1]}"


def check_spatial(type_name: str, kwargs: dict, shape: tuple[int, ...], label: str) -> None:
    """Apply out = floor((W − K_eff + 2P) / S) + 1 and refuse outputs below 1."""
    if len(shape) != 3:
        raise ShapeError(
            f"{label}: needs a feature map CxHxW, got {shape_text(shape)}; {type_name} cannot follow Flatten/Linear"
        )
    terms = _spatial_terms(type_name, kwargs, label)
    if terms is None:
        return
    k, s, d, p, rounding = terms
    if min(k) < 1 or min(s) < 1 or min(d) < 1 or min(p) < 0:
        raise ShapeError(
            f"{label}: kernel_size, stride and dilation must be at least 1 and padding at "
            f"least 0; got kernel {list(k)}, stride {list(s)}, dilation {list(d)}, padding {list(p)}"
        )
    for w, ki, si, pi, di in zip(shape[1:], k, s, p, d):
        out, arithmetic = _axis_size(w, (ki, si, pi, di), rounding)
        if out < 1:
            k_eff = di * (ki - 1) + 1
            dil = f" (kernel {ki} with dilation {di} spans {k_eff})" if di != 1 else ""
            raise InputTooSmall(f"{label}: input {shape_text(shape)} is smaller than the kernel{dil}: {arithmetic}")


def describe(type_name: str, kwargs: dict) -> str:
    """A layer as the tracer's messages name it: its type and what sets its output size."""
    shown = {k: v for k, v in kwargs.items() if k in ("kernel_size", "stride", "padding", "dilation")}
    args = ", ".join(f"{k}={v}" for k, v in shown.items())
    return f"{type_name}, {args}" if args else type_name
