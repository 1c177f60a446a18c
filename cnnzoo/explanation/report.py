"""What ``explain`` shows, computed: every layer's output for one image, the pictures made from them
(feature maps, vectors, the first layer's filters, the input's channels) and a Grad-CAM map."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import matplotlib
import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.preprocess import normalize_array
from ..errors import UserError
from ..inference.classifier import probabilities
from ..model.backbones import Backbone
from ..model.layers import LayerInfo
from ..pages import array_png as _png

MAX_MAPS = 32  # feature maps shown per layer, most active first
POOLS = ("MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d")


@dataclass(kw_only=True)
class Picture:
    name: str  # file name stem for --png
    png: bytes
    caption: str = ""
    size: str = "map"  # how wide the page shows it: map, strip or large


@dataclass(kw_only=True)
class LayerView:
    info: LayerInfo
    output: torch.Tensor  # one image's output, [C, H, W] or [N]
    pictures: list[Picture] = field(default_factory=list)
    note: str = ""


def _colour(
    values: np.ndarray, cmap: str = "viridis", low: float | None = None, high: float | None = None
) -> np.ndarray:
    """Values -> uint8 RGB through a matplotlib colour map, scaled to [low, high] (default min, max)."""

    low = float(values.min()) if low is None else low
    high = float(values.max()) if high is None else high
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return (matplotlib.colormaps[cmap](np.clip(scaled, 0, 1))[..., :3] * 255).astype(np.uint8)


def feature_maps(output: torch.Tensor, stem: str, cap: int = MAX_MAPS) -> tuple[list[Picture], str]:
    """A [C, H, W] output as one picture per map, the most active (mean value) first."""
    maps = output.detach().float().cpu().numpy()
    order = np.argsort(-maps.mean(axis=(1, 2)), kind="stable")[:cap]
    pictures = [
        Picture(
            name=f"{stem}-map{int(c):03d}",
            png=_png(_colour(maps[c])),
            caption=f"map {int(c)}: mean {maps[c].mean():.2f}, max {maps[c].max():.2f}",
        )
        for c in order
    ]
    note = (
        f"{len(order)} of {len(maps)} maps, the most active first"
        if len(order) < len(maps)
        else f"{len(maps)} maps, the most active first"
    )
    return pictures, note


def vector_strip(output: torch.Tensor, stem: str) -> tuple[list[Picture], str]:
    """A [N] output as a heat strip, 64 values a row."""
    values = output.detach().float().cpu().numpy().ravel()
    width = min(64, len(values))
    rows = -(-len(values) // width)
    padded = np.full(rows * width, np.nan)
    padded[: len(values)] = values
    grid = padded.reshape(rows, width)
    rgb = _colour(np.nan_to_num(grid, nan=float(values.min())), "magma")
    rgb[np.isnan(grid)] = 255
    top = np.argsort(-values)[:5]
    note = (
        f"{len(values)} values, min {values.min():.2f}, max {values.max():.2f}; "
        f"largest at {', '.join(str(int(i)) for i in top)}"
    )
    return [Picture(name=f"{stem}-values", png=_png(rgb, scale=6), caption="", size="strip")], note


def conv_filters(weight: torch.Tensor, stem: str) -> list[Picture]:
    """First-layer filters [O, I, k, k]: in colour for RGB input, else the mean over inputs."""
    w = weight.detach().float().cpu().numpy()
    pictures = []
    for o in range(min(len(w), 64)):
        f = w[o]
        if f.shape[0] == 3:
            rgb = ((f - f.min()) / (f.max() - f.min() + 1e-12) * 255).astype(np.uint8).transpose(1, 2, 0)
        else:
            rgb = _colour(f.mean(axis=0), "gray")
        pictures.append(
            Picture(name=f"{stem}-filter{o:03d}", png=_png(np.ascontiguousarray(rgb), 48), caption=f"filter {o}")
        )
    return pictures


def heat_overlay(pixels_hwc: np.ndarray, cam: np.ndarray) -> bytes:
    """The input with a Grad-CAM map ([H, W] in [0, 1]) laid over it."""
    base = pixels_hwc if pixels_hwc.shape[2] == 3 else np.repeat(pixels_hwc, 3, axis=2)
    heat = _colour(cam, "jet", 0.0, 1.0).astype(np.float32)
    blended = (0.55 * base.astype(np.float32) + 0.45 * heat).clip(0, 255).astype(np.uint8)
    return _png(blended, 224)


def _cam_layer(infos: list[LayerInfo]) -> int | None:
    """The layer whose output Grad-CAM weighs: the last one with feature maps, or the layer
    before a pooling layer there (the same features on a finer grid)."""
    spatial = [i for i, info in enumerate(infos) if len(info.output_shape) == 3 and min(info.output_shape[1:]) >= 2]
    if not spatial:
        return None
    index = spatial[-1]
    while infos[index].type in POOLS and index - 1 in spatial:
        index -= 1
    return index


def _score(logits: torch.Tensor, target: int) -> torch.Tensor:
    if logits.shape[1] == 1:  # one-logit head: class 1 is the logit, class 0 its negative
        return logits[0, 0] if target == 1 else -logits[0, 0]
    return logits[0, target]


def run_layers(module: nn.Sequential, x: torch.Tensor, *, cam_index: int | None, target: int | None):
    """Outputs of every layer (and of a backbone's stages), the logits, and the Grad-CAM map.

    The network runs once, layer by layer, with gradients on; the output of layer
    ``cam_index`` is cut from the graph before it so its gradient can be taken.
    """

    outputs: list[torch.Tensor] = []
    stage_outputs: dict[int, list[torch.Tensor]] = {}
    cam_input: torch.Tensor | None = None
    hooks = []
    for index, layer in enumerate(module):
        if isinstance(layer, Backbone):
            stage_outputs[index] = []
            for stage in layer.stages:
                unit = layer.body.get_submodule(stage[-1])
                hooks.append(
                    unit.register_forward_hook(
                        lambda _m, _i, out, store=stage_outputs[index]: store.append(out[0].detach().clone())
                    )
                )
    try:
        with torch.enable_grad():
            for index, layer in enumerate(module):
                x = layer(x)
                outputs.append(x[0].detach().clone())
                if index == cam_index:
                    cam_input = x.detach().requires_grad_(True)
                    x = cam_input.clone()  # an in-place layer after this one must not touch the leaf
            logits = x
            chosen = int(probabilities(logits.detach().numpy()).argmax(1)[0]) if target is None else target
            cam = None
            if cam_input is not None:
                (grad,) = torch.autograd.grad(_score(logits, chosen), cam_input)
                weights = grad[0].mean(dim=(1, 2))
                cam = torch.relu((weights[:, None, None] * cam_input[0]).sum(0)).detach()
    finally:
        for h in hooks:
            h.remove()
    return outputs, stage_outputs, logits.detach(), chosen, cam


@dataclass(kw_only=True)
class Report:
    image: str
    classes: list[str]
    probabilities: np.ndarray
    target: int
    input_pictures: list[Picture]
    layers: list[LayerView]
    filters: list[Picture]
    gradcam: Picture | None
    cam_layer: str | None
    cam: np.ndarray | None  # Grad-CAM heat [H, W] in [0, 1] at the input size: what the overlay shows


def _input_pictures(pixels_hwc: np.ndarray, x: torch.Tensor, mean: list[float], std: list[float]) -> list[Picture]:
    pictures = [
        Picture(
            name="input",
            png=_png(pixels_hwc[:, :, 0] if pixels_hwc.shape[2] == 1 else pixels_hwc, 128),
            caption=f"resized to {pixels_hwc.shape[0]}x{pixels_hwc.shape[1]}",
            size="large",
        )
    ]
    for c, channel in enumerate(x[0].numpy()):
        pictures.append(
            Picture(
                name=f"input-channel{c}",
                png=_png(_colour(channel, "gray"), 128),
                caption=f"channel {c}: (x/255 − {mean[c]:.3f})/{std[c]:.3f}, "
                f"{channel.min():.2f} to {channel.max():.2f}",
                size="large",
            )
        )
    return pictures


def build_report(model, image: Any, *, target: str | None = None, cap: int = MAX_MAPS) -> Report:
    """Run ``model`` (a checkpoint :class:`cnnzoo.inference.torch_models.Model`) on ``image`` and collect
    every picture."""
    name = str(image)
    array, reason = model.try_preprocess(image)
    if array is None:
        raise UserError(f"{name}: cannot read image ({reason})")
    target_index = _target_index(target, model.classes)
    module = model.module.to("cpu", memory_format=torch.contiguous_format).eval()
    x = torch.from_numpy(normalize_array(array[None], model.mean, model.std))
    infos = model.infos
    cam_index = _cam_layer(infos)
    outputs, stage_outputs, logits, chosen, cam = run_layers(module, x, cam_index=cam_index, target=target_index)
    views = [
        _layer_view(index, info, output, stage_outputs.get(index, []), cap)
        for index, (info, output) in enumerate(zip(infos, outputs))
    ]
    first_conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)  # a backbone's too
    gradcam, full = None, None
    if cam is not None:
        full = _cam_at_input_size(cam, array.shape[:2])
        gradcam = Picture(
            name="gradcam",
            png=heat_overlay(array, full),
            caption=f"Grad-CAM for {model.classes[chosen]} at layer {cam_index} ({infos[cam_index].type})",
            size="large",
        )
    return Report(
        image=name,
        classes=model.classes,
        # multi-label: a sigmoid each; calibrated as predict serves them
        probabilities=probabilities(logits.numpy(), multi_label=model.multi_label, temperature=model.temperature)[0],
        target=chosen,
        input_pictures=_input_pictures(array, x, model.mean, model.std),
        layers=views,
        filters=conv_filters(first_conv.weight, "filters") if first_conv is not None else [],
        gradcam=gradcam,
        cam_layer=f"{cam_index} ({infos[cam_index].type})" if cam_index is not None else None,
        cam=full,
    )


def _target_index(target: str | None, classes: list[str]) -> int | None:
    """``--target``: a class name, or a class index written as digits; None for the predicted class."""
    if target is None:
        return None
    if target in classes:
        return classes.index(target)
    if target.isdigit() and int(target) < len(classes):
        return int(target)
    raise UserError(f"--target {target}: not a class of this model; its classes: {', '.join(classes)}")


def _layer_view(index: int, info: LayerInfo, output: torch.Tensor, stages: list[torch.Tensor], cap: int) -> LayerView:
    """One layer's output as pictures, a backbone's stages (in the order they run) first."""
    stem = f"layer{index:02d}-{info.type}"
    view = LayerView(info=info, output=output)
    view.pictures, view.note = feature_maps(output, stem, cap) if output.ndim == 3 else vector_strip(output, stem)
    inner = []
    for s, stage in enumerate(stages):
        if stage.ndim == 3:
            pictures, _ = feature_maps(stage, f"{stem}-stage{s}", min(cap, 8))
            for p in pictures:
                p.caption = f"stage {s} {tuple(stage.shape)}: " + p.caption
            inner += pictures
    view.pictures = inner + view.pictures
    return view


def _cam_at_input_size(cam: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A Grad-CAM map scaled to [0, 1] and resized (bilinear) to the input's ``size`` = (H, W)."""
    peak = float(cam.max())
    small = (cam / peak).numpy() if peak > 0 else cam.numpy()
    full = Image.fromarray(small.astype(np.float32), mode="F").resize((size[1], size[0]), Image.BILINEAR)
    return np.clip(np.asarray(full), 0, 1)
