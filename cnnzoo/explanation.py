"""``cnnzoo explain``: what a trained network does to one image, layer by layer, in one HTML file.

In the spirit of CNN Explainer, but for the user's own model: the input as the network
sees it, then every layer in order with its summary row (type, arguments, output shape
and, for conv and pool layers, the ``(W − K + 2P)/S + 1`` arithmetic) and its output:
feature maps as a grid (the most active first, capped), the flattened vector and dense
activations as strips, the class probabilities as bars. Conv → ReLU → pool runs sit side
by side. Also the first conv layer's learned filters, and a Grad-CAM heat map (which
parts of the image raised the score of the predicted class, or of ``--target``).

The file embeds every picture (base64 PNG) and a few lines of JavaScript to enlarge a
picture on click; it opens with no network. ``--png DIR`` writes the pictures as files.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .inference import probabilities
from .layers import LayerInfo, size_arithmetic

MAX_MAPS = 32  # feature maps shown per layer, most active first
POOLS = ("MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d")


@dataclass
class Picture:
    name: str  # file name stem for --png
    png: bytes
    caption: str = ""
    size: str = "map"  # how wide the page shows it: map, strip or large


@dataclass
class LayerView:
    info: LayerInfo
    output: torch.Tensor  # one image's output, [C, H, W] or [N]
    pictures: list[Picture] = field(default_factory=list)
    note: str = ""


# ----------------------------------------------------------------------------- pictures

def _png(rgb: np.ndarray, min_side: int = 64, scale: Optional[int] = None) -> bytes:
    """uint8 HxWx3 (or HxW) -> PNG bytes, enlarged with square pixels to at least ``min_side``
    (or by ``scale``)."""
    from PIL import Image

    image = Image.fromarray(rgb)
    scale = scale or max(1, -(-min_side // max(1, min(image.size))))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _colour(values: np.ndarray, cmap: str = "viridis", low: Optional[float] = None,
            high: Optional[float] = None) -> np.ndarray:
    """Values -> uint8 RGB through a matplotlib colour map, scaled to [low, high] (default min, max)."""
    import matplotlib

    low = float(values.min()) if low is None else low
    high = float(values.max()) if high is None else high
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return (matplotlib.colormaps[cmap](np.clip(scaled, 0, 1))[..., :3] * 255).astype(np.uint8)


def feature_maps(output: torch.Tensor, stem: str, cap: int = MAX_MAPS) -> tuple[list[Picture], str]:
    """A [C, H, W] output as one picture per map, the most active (mean value) first."""
    maps = output.detach().float().cpu().numpy()
    order = np.argsort(-maps.mean(axis=(1, 2)), kind="stable")[:cap]
    pictures = [Picture(f"{stem}-map{int(c):03d}", _png(_colour(maps[c])),
                        f"map {int(c)}: mean {maps[c].mean():.2f}, max {maps[c].max():.2f}") for c in order]
    note = (f"{len(order)} of {len(maps)} maps, the most active first" if len(order) < len(maps)
            else f"{len(maps)} maps, the most active first")
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
    note = (f"{len(values)} values, min {values.min():.2f}, max {values.max():.2f}; "
            f"largest at {', '.join(str(int(i)) for i in top)}")
    return [Picture(f"{stem}-values", _png(rgb, scale=6), "", "strip")], note


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
        pictures.append(Picture(f"{stem}-filter{o:03d}", _png(np.ascontiguousarray(rgb), 48), f"filter {o}"))
    return pictures


def heat_overlay(pixels_hwc: np.ndarray, cam: np.ndarray) -> bytes:
    """The input with a Grad-CAM map ([H, W] in [0, 1]) laid over it."""
    base = pixels_hwc if pixels_hwc.shape[2] == 3 else np.repeat(pixels_hwc, 3, axis=2)
    heat = _colour(cam, "jet", 0.0, 1.0).astype(np.float32)
    blended = (0.55 * base.astype(np.float32) + 0.45 * heat).clip(0, 255).astype(np.uint8)
    return _png(blended, 224)


# ----------------------------------------------------------------------------- running the network

def _cam_layer(infos: list[LayerInfo]) -> Optional[int]:
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


def run_layers(module: nn.Sequential, x: torch.Tensor, cam_index: Optional[int], target: Optional[int]):
    """Outputs of every layer (and of a backbone's stages), the logits, and the Grad-CAM map.

    The network runs once, layer by layer, with gradients on; the output of layer
    ``cam_index`` is cut from the graph before it so its gradient can be taken.
    """
    from .backbones import Backbone

    outputs: list[torch.Tensor] = []
    stage_outputs: dict[int, list[torch.Tensor]] = {}
    cam_input: Optional[torch.Tensor] = None
    hooks = []
    for index, layer in enumerate(module):
        if isinstance(layer, Backbone):
            stage_outputs[index] = []
            for stage in layer.stages:
                unit = layer.body.get_submodule(stage[-1])
                hooks.append(unit.register_forward_hook(
                    lambda _m, _i, out, store=stage_outputs[index]: store.append(out[0].detach().clone())))
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


# ----------------------------------------------------------------------------- the report

@dataclass
class Report:
    image: str
    classes: list[str]
    probabilities: np.ndarray
    target: int
    input_pictures: list[Picture]
    layers: list[LayerView]
    filters: list[Picture]
    gradcam: Optional[Picture]
    cam_layer: Optional[str]
    cam: Optional[np.ndarray]  # Grad-CAM heat [H, W] in [0, 1] at the input size: what the overlay shows


def _input_pictures(pixels_hwc: np.ndarray, x: torch.Tensor, mean: list[float], std: list[float]) -> list[Picture]:
    pictures = [Picture("input", _png(pixels_hwc[:, :, 0] if pixels_hwc.shape[2] == 1 else pixels_hwc, 128),
                        f"resized to {pixels_hwc.shape[0]}x{pixels_hwc.shape[1]}", "large")]
    for c, channel in enumerate(x[0].numpy()):
        pictures.append(Picture(f"input-channel{c}", _png(_colour(channel, "gray"), 128),
                                f"channel {c}: (x/255 − {mean[c]:.3f})/{std[c]:.3f}, "
                                f"{channel.min():.2f} to {channel.max():.2f}", "large"))
    return pictures


def build_report(model, image: Any, target: Optional[str] = None, cap: int = MAX_MAPS) -> Report:
    """Run ``model`` (a checkpoint :class:`cnnzoo.predict.Model`) on ``image`` and collect every picture."""
    from .preprocess import normalize_array

    name = str(image)
    array, reason = model.try_preprocess(image)
    if array is None:
        raise UserError(f"{name}: cannot read image ({reason})")
    target_index = None
    if target is not None:
        if target in model.classes:
            target_index = model.classes.index(target)
        elif target.isdigit() and int(target) < len(model.classes):
            target_index = int(target)
        else:
            raise UserError(f"--target {target}: not a class of this model; its classes: {', '.join(model.classes)}")
    module = model.module.to("cpu", memory_format=torch.contiguous_format).eval()
    x = torch.from_numpy(normalize_array(array[None], model.mean, model.std))
    infos = model.infos
    cam_index = _cam_layer(infos)
    outputs, stage_outputs, logits, chosen, cam = run_layers(module, x, cam_index, target_index)

    views = []
    for index, (info, output) in enumerate(zip(infos, outputs)):
        stem = f"layer{index:02d}-{info.type}"
        view = LayerView(info, output)
        if output.ndim == 3:
            view.pictures, view.note = feature_maps(output, stem, cap)
        else:
            view.pictures, view.note = vector_strip(output, stem)
        inner = []  # a backbone's stages, in the order they run, before its final output
        for s, stage in enumerate(stage_outputs.get(index, [])):
            if stage.ndim == 3:
                pictures, _ = feature_maps(stage, f"{stem}-stage{s}", min(cap, 8))
                for p in pictures:
                    p.caption = f"stage {s} {tuple(stage.shape)}: " + p.caption
                inner += pictures
        view.pictures = inner + view.pictures
        views.append(view)

    first_conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)  # a backbone's too
    filters = conv_filters(first_conv.weight, "filters") if first_conv is not None else []
    gradcam, full = None, None
    if cam is not None:
        from PIL import Image

        peak = float(cam.max())
        small = (cam / peak).numpy() if peak > 0 else cam.numpy()
        full = np.asarray(Image.fromarray(small.astype(np.float32), mode="F").resize(
            (array.shape[1], array.shape[0]), Image.BILINEAR))
        gradcam = Picture("gradcam", heat_overlay(array, np.clip(full, 0, 1)),
                          f"Grad-CAM for {model.classes[chosen]} at layer {cam_index} ({infos[cam_index].type})",
                          "large")
    return Report(name, model.classes, probabilities(logits.numpy())[0], chosen,
                  _input_pictures(array, x, model.mean, model.std), views, filters, gradcam,
                  f"{cam_index} ({infos[cam_index].type})" if cam_index is not None else None,
                  np.clip(full, 0, 1) if full is not None else None)


def _img(p: Picture) -> str:
    data = base64.b64encode(p.png).decode()
    caption = f"<figcaption>{html.escape(p.caption)}</figcaption>" if p.caption else ""
    return (f'<figure class="{p.size}"><img src="data:image/png;base64,{data}" alt="{html.escape(p.name)}">'
            f'{caption}</figure>')


def _layer_section(index: int, view: LayerView) -> str:
    info = view.info
    args = ", ".join(f"{k}={v}" for k, v in info.kwargs.items() if k not in ("in_channels", "in_features"))
    arithmetic = size_arithmetic(info.type, info.kwargs, info.input_shape)
    rule = f'<p class="rule">{html.escape(arithmetic)}</p>' if arithmetic else ""
    shape = "x".join(map(str, info.output_shape))
    return (f'<section class="layer" id="layer-{index}"><h3>{index}. {html.escape(info.type)}</h3>'
            f'<p class="args">{html.escape(args) or "&nbsp;"}</p>'
            f'<p class="shape">{html.escape("x".join(map(str, info.input_shape)))} → {shape}; '
            f'{info.params:,} parameters</p>{rule}<p class="note">{html.escape(view.note)}</p>'
            f'<div class="grid">{"".join(_img(p) for p in view.pictures)}</div></section>')


GROUP_STARTS = ("Conv2d", "Backbone", "Residual", "Branches")


def _groups(views: list[LayerView]) -> list[list[int]]:
    """Layer indices in rows: a row starts at each conv (or backbone, block), and where the
    feature maps end (flatten and the dense layers), so conv → ReLU → pool sit side by side."""
    groups: list[list[int]] = []
    for i, view in enumerate(views):
        ends_maps = view.output.ndim != 3 and i > 0 and views[i - 1].output.ndim == 3
        if not groups or view.info.type in GROUP_STARTS or ends_maps:
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def render_html(report: Report) -> str:
    bars = "".join(
        f'<div class="row{" chosen" if k == report.target else ""}"><span>{html.escape(c)}</span>'
        f'<div class="track"><div class="bar" style="width:{100 * p:.1f}%"></div></div>'
        f'<span class="pct">{100 * p:.1f}%</span></div>'
        for k, (c, p) in sorted(enumerate(zip(report.classes, report.probabilities.tolist())),
                                key=lambda item: -item[1][1]))
    stages = "".join(f'<div class="stage">{"".join(_layer_section(i, report.layers[i]) for i in group)}</div>'
                     for group in _groups(report.layers))
    filters = (f'<h2>Learned filters of the first conv layer</h2><div class="grid">'
               f'{"".join(_img(p) for p in report.filters)}</div>') if report.filters else ""
    gradcam = (f'<h2>Grad-CAM: where the evidence for {html.escape(report.classes[report.target])} is</h2>'
               f'<p>The gradient of that class\'s score weighs the feature maps of layer {report.cam_layer}; '
               f'red is where they raised it.</p>{_img(report.gradcam)}') if report.gradcam else ""
    predicted = report.classes[int(report.probabilities.argmax())]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cnnzoo explain: {html.escape(Path(report.image).name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
h1 {{ font-size: 1.4rem; }} h2 {{ font-size: 1.15rem; margin-top: 2rem; }} h3 {{ font-size: 1rem; margin: 0 0 .3rem; }}
.stage {{ display: flex; gap: 1rem; align-items: flex-start; overflow-x: auto; border-top: 1px solid #ddd; padding: .8rem 0; }}
.layer {{ min-width: 14rem; max-width: 30rem; }}
.args, .shape, .rule, .note {{ margin: .1rem 0; font-size: .85rem; color: #555; }}
.rule {{ font-family: ui-monospace, monospace; color: #1a5; }}
.grid {{ display: flex; flex-wrap: wrap; gap: .3rem; margin-top: .4rem; }}
figure {{ margin: 0; }} figcaption {{ font-size: .7rem; color: #777; max-width: 8rem; }}
img {{ image-rendering: pixelated; width: 5rem; cursor: zoom-in; border-radius: .2rem; }}
.strip img {{ width: auto; max-width: 100%; }} .large img {{ width: 11rem; }} .large figcaption {{ max-width: 11rem; }}
img.big, .large img.big {{ width: 32rem; max-width: 32rem; cursor: zoom-out; }}
.row {{ display: grid; grid-template-columns: 10rem 24rem 4rem; gap: .5rem; align-items: center; margin: .2rem 0; }}
.track {{ background: #eee; height: .9rem; border-radius: .3rem; }} .bar {{ background: #2a6ad8; height: .9rem; border-radius: .3rem; }}
.row.chosen span:first-child {{ font-weight: 600; }} .pct {{ text-align: right; }}
</style></head><body>
<h1>{html.escape(report.image)}: {html.escape(predicted)} ({100 * float(report.probabilities.max()):.1f}%)</h1>
<h2>The input as the network sees it</h2><div class="grid">{"".join(_img(p) for p in report.input_pictures)}</div>
<h2>Layer by layer</h2>{stages}
<h2>Class probabilities</h2><div id="probabilities">{bars}</div>
{gradcam}
{filters}
<script>
document.querySelectorAll("img").forEach((img) => img.addEventListener("click", () => img.classList.toggle("big")));
</script>
</body></html>
"""


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def explain(checkpoint: Optional[str | Path], image: str | Path, out: Optional[str | Path] = None,
            target: Optional[str] = None, png_dir: Optional[str | Path] = None,
            runs_root: str | Path = "runs") -> tuple[Path, Report]:
    """Write the HTML report for ``image`` (and the PNGs to ``png_dir``); returns its path and the report."""
    from . import checkpoint as ckpt_io
    from .inference import is_onnx
    from .predict import Model

    source = Path(checkpoint) if checkpoint else ckpt_io.default_checkpoint(runs_root)
    if is_onnx(source):
        raise UserError(f"{source}: explain needs a checkpoint (.pt with weights), not an export")
    model = Model(ckpt_io.load_checkpoint(source), device="cpu")  # a TorchScript file is refused unopened
    source = Path(model.path)  # a run folder stands for its best.pt
    report = build_report(model, image, target)
    path = Path(out) if out else source.parent / "explain" / f"{_safe(Path(str(image)).stem)}.html"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_html(report), encoding="utf-8")
        if png_dir is not None:
            folder = Path(png_dir)
            folder.mkdir(parents=True, exist_ok=True)
            pictures = [*report.input_pictures, *(p for v in report.layers for p in v.pictures), *report.filters]
            for picture in pictures + ([report.gradcam] if report.gradcam else []):
                (folder / f"{_safe(picture.name)}.png").write_bytes(picture.png)
    except OSError as exc:
        raise UserError(f"{exc.filename or path}: cannot write the report ({exc.strerror or exc})") from None
    return path, report
