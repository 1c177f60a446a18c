"""The HTML page of an explanation, and :func:`explain`, which writes it.

The file embeds every picture (base64 PNG) and a few lines of JavaScript to enlarge a
picture on click; it opens with no network. ``--png DIR`` writes the pictures as files.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from .. import checkpoint as ckpt_io
from .. import runs
from ..errors import UserError, shape_text
from ..files import write_bytes, write_text
from ..inference import is_export
from ..inference.torch_models import Model
from ..model.shapes import size_arithmetic
from ..pages import OFFLINE_POLICY, ZOOM_SCRIPT, embedded_img
from .report import LayerView, Picture, Report, build_report


def _img(p: Picture) -> str:
    return embedded_img(p.png, alt=p.name, caption=p.caption, css_class=p.size)


def _layer_section(index: int, view: LayerView) -> str:
    info = view.info
    args = ", ".join(f"{k}={v}" for k, v in info.kwargs.items() if k not in ("in_channels", "in_features"))
    arithmetic = size_arithmetic(info.type, info.kwargs, info.input_shape)
    rule = f'<p class="rule">{html.escape(arithmetic)}</p>' if arithmetic else ""
    shape = shape_text(info.output_shape)
    return (
        f'<section class="layer" id="layer-{index}"><h3>{index}. {html.escape(info.type)}</h3>'
        f'<p class="args">{html.escape(args) or "&nbsp;"}</p>'
        f'<p class="shape">{html.escape(shape_text(info.input_shape))} → {shape}; '
        f'{info.params:,} parameters</p>{rule}<p class="note">{html.escape(view.note)}</p>'
        f'<div class="grid">{"".join(_img(p) for p in view.pictures)}</div></section>'
    )


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


_STYLE = """\
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; } h3 { font-size: 1rem; margin: 0 0 .3rem; }
.stage { display: flex; gap: 1rem; align-items: flex-start; overflow-x: auto; border-top: 1px solid #ddd;
          padding: .8rem 0; }
.layer { min-width: 14rem; max-width: 30rem; }
.args, .shape, .rule, .note { margin: .1rem 0; font-size: .85rem; color: #555; }
.rule { font-family: ui-monospace, monospace; color: #1a5; }
.grid { display: flex; flex-wrap: wrap; gap: .3rem; margin-top: .4rem; }
figure { margin: 0; } figcaption { font-size: .7rem; color: #777; max-width: 8rem; }
img { image-rendering: pixelated; width: 5rem; cursor: zoom-in; border-radius: .2rem; }
.strip img { width: auto; max-width: 100%; } .large img { width: 11rem; } .large figcaption { max-width: 11rem; }
img.big, .large img.big { width: 32rem; max-width: 32rem; cursor: zoom-out; }
.row { display: grid; grid-template-columns: 10rem 24rem 4rem; gap: .5rem; align-items: center; margin: .2rem 0; }
.track { background: #eee; height: .9rem; border-radius: .3rem; }
.bar { background: #2a6ad8; height: .9rem; border-radius: .3rem; }
.row.chosen span:first-child { font-weight: 600; } .pct { text-align: right; }
.prediction { display: flex; flex-wrap: wrap; gap: 0 3rem; align-items: flex-start; } #gradcam { max-width: 28rem; }
"""


def _prediction(report: Report) -> str:
    """The page's opening: every class's probability, most probable first, beside the Grad-CAM
    picture of the explained class."""
    bars = "".join(
        f'<div class="row{" chosen" if k == report.target else ""}"><span>{html.escape(c)}</span>'
        f'<div class="track"><div class="bar" style="width:{100 * p:.1f}%"></div></div>'
        f'<span class="pct">{100 * p:.1f}%</span></div>'
        for k, (c, p) in sorted(
            enumerate(zip(report.classes, report.probabilities.tolist())), key=lambda item: -item[1][1]
        )
    )
    gradcam = (
        (
            f'<div id="gradcam"><h2>Grad-CAM: where the evidence for {html.escape(report.classes[report.target])} '
            f"is</h2><p>The gradient of that class's score weighs the feature maps of layer {report.cam_layer}; "
            f"red is where they raised it.</p>{_img(report.gradcam)}</div>"
        )
        if report.gradcam
        else ""
    )
    return (
        f'<div class="prediction"><div><h2>Class probabilities</h2><div id="probabilities">{bars}</div></div>'
        f"{gradcam}</div>"
    )


def render_html(report: Report) -> str:
    """The page: the prediction and Grad-CAM first, then the input, every layer and the first
    layer's filters."""
    stages = "".join(
        f'<div class="stage">{"".join(_layer_section(i, report.layers[i]) for i in group)}</div>'
        for group in _groups(report.layers)
    )
    filters = (
        (
            f'<h2>Learned filters of the first conv layer</h2><div class="grid">'
            f"{''.join(_img(p) for p in report.filters)}</div>"
        )
        if report.filters
        else ""
    )
    predicted = report.classes[int(report.probabilities.argmax())]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{OFFLINE_POLICY}
<title>cnnzoo explain: {html.escape(Path(report.image).name)}</title>
<style>
{_STYLE}</style></head><body>
<h1>{html.escape(report.image)}: {html.escape(predicted)} ({100 * float(report.probabilities.max()):.1f}%)</h1>
{_prediction(report)}
<h2>The input as the network sees it</h2><div class="grid">{"".join(_img(p) for p in report.input_pictures)}</div>
<h2>Layer by layer</h2>{stages}
{filters}
<script>
{ZOOM_SCRIPT}</script>
</body></html>
"""


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def explain(
    checkpoint: str | Path | None,
    image: str | Path,
    *,
    out: str | Path | None = None,
    target: str | None = None,
    png_dir: str | Path | None = None,
    runs_root: str | Path = "runs",
) -> tuple[Path, Report]:
    """Write the HTML report for ``image`` (and the PNGs to ``png_dir``); returns its path and the report."""

    source = runs.resolve_checkpoint(checkpoint, runs_root)
    if is_export(source):
        raise UserError(f"{source}: explain needs a checkpoint (.pt with weights), not an export")
    model = Model(ckpt_io.load_checkpoint(source), device="cpu")  # a TorchScript file is refused unopened
    source = Path(model.path)  # a run folder stands for its best.pt
    report = build_report(model, image, target=target)
    path = Path(out) if out else source.parent / "explain" / f"{_safe(Path(str(image)).stem)}.html"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, render_html(report))
        if png_dir is not None:
            folder = Path(png_dir)
            folder.mkdir(parents=True, exist_ok=True)
            pictures = [*report.input_pictures, *(p for v in report.layers for p in v.pictures), *report.filters]
            for picture in pictures + ([report.gradcam] if report.gradcam else []):
                write_bytes(folder / f"{_safe(picture.name)}.png", picture.png)
    except OSError as exc:
        raise UserError(f"{exc.filename or path}: cannot write the report ({exc.strerror or exc})") from None
    return path, report
