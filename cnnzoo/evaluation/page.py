"""report.html, which ``evaluate`` writes beside eval.json: where the model fails, in one page.

The confusion matrix and per-class precision/recall/F1; the most confused pairs with example
images; the top losses (the images the model gets most wrong) with the ``cnnzoo explain``
command for each; a reliability diagram with the expected calibration error; per-class
precision-recall curves and their average precision. The figures come from
:mod:`~cnnzoo.evaluation.analysis`; the page embeds every picture (:mod:`cnnzoo.pages`) and
forbids itself any network request, so it opens offline as one file.

Torch-free: it reads probabilities and labels as NumPy arrays, so an ONNX evaluation writes it too.
"""

from __future__ import annotations

import html
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..files import write_text
from ..pages import OFFLINE_POLICY, ZOOM_SCRIPT, array_png, embedded_img, figure_png
from ..plots import confusion_figure, pyplot
from . import analysis

THUMBNAIL = 96  # pixels a side: the image as the model sees it (resized), small enough to embed dozens
TOP_LOSSES = 16
CONFUSED_PAIRS = 6
EXAMPLES_PER_PAIR = 4
LEGEND_CLASSES = 20  # past this many classes the PR chart leaves its legend out (the table has the APs)


@dataclass(kw_only=True)
class ReportInputs:
    """What the page is made from: the model's probabilities for each scored image, in one order."""

    title: str  # what was scored: checkpoint, split, data
    classes: list[str]
    probabilities: np.ndarray  # float [N, K]
    labels: np.ndarray  # int [N]
    image_names: list[str]  # a file path, or ``mnist[12]`` for an in-memory data set
    image_pixels: Callable[[int, tuple[int, int]], np.ndarray]  # (row, (H, W)) -> uint8 HxWxC
    scores: dict[str, Any]  # evaluate's report: per_class, averages, confusion_matrix, accuracy
    explain_model: str | None = None  # the checkpoint ``cnnzoo explain`` takes; None: no command
    confusion_png: bytes | None = None  # the confusion matrix already drawn (confusion_matrix.png)
    uncalibrated: np.ndarray | None = None  # a calibrated model's probabilities without its temperature


def _thumbnail(inputs: ReportInputs, row: int, caption: str) -> str:
    pixels = inputs.image_pixels(row, (THUMBNAIL, THUMBNAIL))
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    return embedded_img(array_png(pixels, THUMBNAIL), alt=inputs.image_names[row], caption=caption, css_class="thumb")


def _class_table(inputs: ReportInputs, curves: list[analysis.PRCurve]) -> str:
    rows = []
    for name, curve in zip(inputs.classes, curves):
        s = inputs.scores["per_class"][name]
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{s['precision']:.3f}</td><td>{s['recall']:.3f}</td>"
            f"<td>{s['f1']:.3f}</td><td>{curve.average_precision:.3f}</td><td>{s['support']}</td></tr>"
        )
    for avg in ("macro", "weighted"):
        s = inputs.scores["averages"][avg]
        rows.append(
            f'<tr class="avg"><td>{avg} avg</td><td>{s["precision"]:.3f}</td><td>{s["recall"]:.3f}</td>'
            f"<td>{s['f1']:.3f}</td><td></td><td>{len(inputs.labels)}</td></tr>"
        )
    return (
        '<table id="per-class"><thead><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>'
        f"<th>AP</th><th>support</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _confused_pairs(inputs: ReportInputs, predicted: np.ndarray, confidence: np.ndarray) -> str:
    pairs = analysis.most_confused(inputs.scores["confusion_matrix"], CONFUSED_PAIRS)
    if not pairs:
        return "<p>No image of this split is misclassified.</p>"
    sections = []
    for true, guess, count in pairs:
        rows = np.nonzero((inputs.labels == true) & (predicted == guess))[0]
        examples = sorted(rows.tolist(), key=lambda r: -confidence[r])[:EXAMPLES_PER_PAIR]  # the surest mistakes
        pictures = "".join(_thumbnail(inputs, r, f"{100 * confidence[r]:.0f}% sure") for r in examples)
        sections.append(
            f'<section class="pair"><h3>{html.escape(inputs.classes[true])} taken for '
            f"{html.escape(inputs.classes[guess])}: {count} image{'s' if count > 1 else ''}</h3>"
            f'<div class="grid">{pictures}</div></section>'
        )
    return "".join(sections)


def _explain_command(inputs: ReportInputs, row: int) -> str:
    name = inputs.image_names[row]
    if inputs.explain_model is None or not Path(name).is_file():
        return ""
    command = f"cnnzoo explain {shlex.quote(name)} --model {shlex.quote(inputs.explain_model)}"
    return f'<code class="explain">{html.escape(command)}</code>'


def _top_losses(inputs: ReportInputs, losses: np.ndarray) -> str:
    rows = []
    for row in analysis.top_losses(inputs.probabilities, inputs.labels, TOP_LOSSES):
        probs = inputs.probabilities[row]
        ranked = np.argsort(-probs, kind="stable")[:3]
        listed = ", ".join(f"{html.escape(inputs.classes[k])} {100 * probs[k]:.1f}%" for k in ranked)
        true = int(inputs.labels[row])
        rows.append(
            f'<tr class="loss"><td>{_thumbnail(inputs, row, "")}</td>'
            f'<td><p class="name">{html.escape(inputs.image_names[row])}</p>'
            f"<p>true <b>{html.escape(inputs.classes[true])}</b> ({100 * probs[true]:.1f}%), "
            f"predicted <b>{html.escape(inputs.classes[int(ranked[0])])}</b>; loss {losses[row]:.2f}</p>"
            f"<p>{listed}</p>{_explain_command(inputs, row)}</td></tr>"
        )
    return f'<table id="top-losses">{"".join(rows)}</table>'


def reliability_png(bins: list[analysis.CalibrationBin], ece: float, which: str = "") -> bytes:
    """Accuracy against confidence per bin (a calibrated model follows the diagonal), and how many
    images each bin holds; ``which`` names the probabilities in the title (before or after calibration)."""
    plt = pyplot()
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=[3, 1], sharex=True)
    centres = [(b.low + b.high) / 2 for b in bins]
    width = bins[0].high - bins[0].low
    filled = [b for b in bins if b.count]
    ax.bar([(b.low + b.high) / 2 for b in filled], [b.accuracy for b in filled], width=width, edgecolor="black")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="calibrated")
    ax.set(ylabel="accuracy", title=f"reliability{f' {which}' if which else ''}: ECE {100 * ece:.2f}%", ylim=(0, 1))
    ax.legend(loc="upper left")
    ax_count.bar(centres, [b.count for b in bins], width=width, color="gray")
    ax_count.set(xlabel="confidence (top-1 probability)", ylabel="images", xlim=(0, 1))
    fig.tight_layout()
    return figure_png(fig)


def _calibration_section(inputs: ReportInputs, bins: list[analysis.CalibrationBin], ece: float) -> str:
    """The reliability diagram of the probabilities as served; for a calibrated model also the one
    without its temperature (before), side by side."""
    intro = (
        "<h2>Calibration</h2><p>Images binned by the model's confidence; a calibrated model is right as often "
        "as it is sure (the diagonal). The expected calibration error is the images' mean gap between the two "
        f"({len(bins)} bins).</p>"
    )
    chart = lambda png, alt: embedded_img(png, alt=alt, css_class="chart")  # noqa: E731
    if inputs.uncalibrated is None:
        return intro + chart(reliability_png(bins, ece), "reliability diagram")
    before = analysis.calibration_bins(*analysis.confidence_and_correct(inputs.uncalibrated, inputs.labels))
    ece_before = analysis.expected_calibration_error(before)
    pictures = chart(reliability_png(before, ece_before, "before"), "reliability before calibration") + chart(
        reliability_png(bins, ece, "after"), "reliability after calibration"
    )
    return (
        f"{intro}<p>The model divides its logits by the temperature fitted on the validation split after "
        f'training: expected calibration error <span id="ece-uncalibrated">{100 * ece_before:.2f}%</span> '
        f"before, {100 * ece:.2f}% after.</p>"
        f'<div class="grid" id="reliability">{pictures}</div>'
    )


def pr_curves_png(curves: list[analysis.PRCurve], classes: list[str]) -> bytes:
    """Every class's one-vs-rest precision-recall curve on one chart."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, curve in zip(classes, curves):
        if curve.positives:
            ax.step(
                [0.0, *curve.recall],
                [1.0, *curve.precision],
                where="pre",
                label=f"{name} (AP {curve.average_precision:.2f})",
            )
    ax.set(
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1.01),
        ylim=(0, 1.05),
        title="precision-recall, one class vs the rest",
    )
    ax.grid(alpha=0.3)
    if len(classes) <= LEGEND_CLASSES:
        ax.legend(fontsize="small", loc="lower left")
    fig.tight_layout()
    return figure_png(fig)


_STYLE = """\
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; max-width: 70rem; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 2rem; } h3 { font-size: 1rem; margin: .6rem 0 .3rem; }
table { border-collapse: collapse; } td, th { padding: .2rem .6rem; text-align: right; border-bottom: 1px solid #eee; }
td:first-child, th:first-child { text-align: left; } tr.avg td { font-style: italic; }
#top-losses td { text-align: left; vertical-align: top; } #top-losses p { margin: .15rem 0; }
.name { font-size: .8rem; color: #555; word-break: break-all; }
code.explain { display: block; font-size: .8rem; background: #f4f4f4; padding: .2rem .4rem; user-select: all; }
.grid { display: flex; flex-wrap: wrap; gap: .4rem; }
figure { margin: 0; } figcaption { font-size: .75rem; color: #666; }
img { cursor: zoom-in; border-radius: .2rem; } .thumb img { width: 6rem; image-rendering: pixelated; }
.chart img { max-width: 100%; } img.big, .thumb img.big { width: 32rem; cursor: zoom-out; }
.summary { font-size: 1.05rem; }
"""


def render_report(inputs: ReportInputs) -> str:
    """The page's HTML, every picture embedded."""
    probs, labels = inputs.probabilities, inputs.labels
    predicted = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    bins = analysis.calibration_bins(confidence, predicted == labels)
    ece = analysis.expected_calibration_error(bins)
    calibration = _calibration_section(inputs, bins, ece)
    curves = analysis.per_class_curves(probs, labels)
    confusion_png = inputs.confusion_png or figure_png(
        confusion_figure(inputs.scores["confusion_matrix"], inputs.classes, inputs.title)
    )
    chart = lambda png, alt: embedded_img(png, alt=alt, css_class="chart")  # noqa: E731
    accuracy = inputs.scores["accuracy"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{OFFLINE_POLICY}<title>cnnzoo evaluate: {html.escape(inputs.title)}</title>
<style>
{_STYLE}</style></head><body>
<h1>{html.escape(inputs.title)}</h1>
<p class="summary" id="summary">accuracy {100 * accuracy:.2f}% on {len(labels)} images;
loss {inputs.scores["loss"]:.4f}; expected calibration error <span id="ece">{100 * ece:.2f}%</span></p>
<h2>Confusion matrix</h2>{chart(confusion_png, "confusion matrix")}
<h2>Per class</h2>{_class_table(inputs, curves)}
<p>AP: average precision, the area under the class's precision-recall curve (below).</p>
<h2>Most confused pairs</h2><p>The true class, what the model took it for, and the images it was surest about.</p>
<div id="confused">{_confused_pairs(inputs, predicted, confidence)}</div>
<h2>Top losses</h2><p>The {min(TOP_LOSSES, len(labels))} images the model gets most wrong (highest −log p(true class)),
with the command that shows what the network does to each.</p>
{_top_losses(inputs, analysis.losses(probs, labels))}
{calibration}
<h2>Precision-recall per class</h2>{chart(pr_curves_png(curves, inputs.classes), "precision-recall curves")}
<script>
{ZOOM_SCRIPT}</script>
</body></html>
"""


def write_report_html(path: str | Path, inputs: ReportInputs) -> Path:
    """Write :func:`render_report` to ``path`` (atomically); returns the path."""
    path = Path(path)
    write_text(path, render_report(inputs))
    return path
