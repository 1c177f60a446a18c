"""``cnnzoo evaluate``: score a model on a labelled split and explain the errors.

A checkpoint without ``--data`` finds its data in its own config, and the split is rebuilt exactly
as training built it (the same seeded hold-out for a single folder), so the accuracy reported here
for the validation split equals the ``val_acc`` that training recorded for the same checkpoint.

An ``.onnx`` or OpenVINO ``.xml`` (FP32 or INT8) or ``.tflite`` export is scored without torch, through its own predict
path (:meth:`cnnzoo.inference.classifier.Classifier.batches`, its preprocessing and checked
logits), on ``--data`` or on the data root its metadata names. Both kinds are scored by one NumPy
implementation (:mod:`~cnnzoo.evaluation.scores`) and drawn by the same page.

Torch-free at import: only a checkpoint imports torch (:mod:`~cnnzoo.evaluation.checkpoints`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import runs
from ..console import console
from ..errors import DataError, UserError
from ..files import write_bytes, write_text
from ..inference import Classifier, is_export, load
from ..inference.classifier import probabilities
from ..pages import figure_png
from ..plots import confusion_figure, plot_pr_curves
from . import multilabel, scores, unknown_eval
from .analysis import calibration_error
from .page import ReportInputs, write_report_html
from .splits import Scored, check_split, export_config, export_data, samples_for, trained_rule
from .streams import stream_batches

EXPORT_BATCH = 64  # images per forward pass of an export, as predict's default


def _table(matrix: list[list[int]], classes: list[str]) -> str:
    corner = "true \\ pred"
    width = max(len(corner), max(len(c) for c in classes))
    cell = max(5, max(len(str(v)) for row in matrix for v in row) + 1)
    abbreviations = [c[: cell - 1] for c in classes]
    lines = [f"{corner:<{width}}" + "".join(f"{a:>{cell}}" for a in abbreviations)]
    for name, row in zip(classes, matrix):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    classes = report["classes"]
    width = max(12, max(len(c) for c in classes))
    heading = f"{_model_words(report)} on {report['split']}: {report['num_images']} images from {report['data']}"
    if report.get("task") == "multi":
        return multilabel.format_report(report, heading)
    top_k = (  # only where k is below the number of classes (else it is 100% by construction)
        f"   top-{report['top_k']} accuracy {100 * report['top_k_accuracy']:.2f}%" if report.get("top_k") else ""
    )
    out = [
        heading,
        f"loss {report['loss']:.4f}   accuracy {100 * report['accuracy']:.2f}%{top_k}",
        *_calibration_line(report),
        "",
        f"{'class':<{width}}  precision  recall      f1  support",
    ]
    for name in classes:
        s = report["per_class"][name]
        out.append(f"{name:<{width}}  {s['precision']:9.3f}  {s['recall']:6.3f}  {s['f1']:6.3f}  {s['support']:7d}")
    for avg in ("macro", "weighted"):
        s = report["averages"][avg]
        out.append(
            f"{avg + ' avg':<{width}}  {s['precision']:9.3f}  {s['recall']:6.3f}  {s['f1']:6.3f}  "
            f"{report['num_images']:7d}"
        )
    out += [
        "",
        "confusion matrix (rows: true class, columns: predicted class)",
        _table(report["confusion_matrix"], classes),
    ]
    return "\n".join(out)


def _calibration_line(report: dict[str, Any]) -> list[str]:
    """The expected calibration error as served, and without the model's temperature when it has one
    (none for a report without it)."""
    if "ece" not in report:
        return []
    t = report.get("temperature")
    if t is None:
        return [f"expected calibration error {100 * report['ece']:.2f}% (not calibrated)"]
    said = f"temperature {t:.3f}" if isinstance(t, float) else "a temperature per class"
    return [
        f"expected calibration error {100 * report['ece']:.2f}% "
        f"(calibrated, {said}; {100 * report['ece_uncalibrated']:.2f}% without it)"
    ]


def _model_words(report: dict[str, Any]) -> str:
    """What was scored, in words: ``checkpoint PATH (epoch N)`` or ``INT8 ONNX export PATH (epoch N)``."""
    if "checkpoint" in report:
        return f"checkpoint {report['checkpoint']} (epoch {report['epoch']})"
    kind = {"onnx": "ONNX", "tflite": "TFLite", "openvino": "OpenVINO"}.get(report["format"], report["format"])
    return f"{'INT8 ' if report.get('int8') else ''}{kind} export {report['model']} (epoch {report['epoch']})"


def evaluate(
    checkpoint: str | Path | None = None,
    data: str | Path | None = None,
    *,
    split: str | None = None,
    top_k: int = 5,
    batch_size: int | None = None,
    out: str | Path | None = None,
    device: str | None = None,
    runs_root: str | Path = "runs",
    progress: bool = True,
    html_report: bool = True,
    tta: bool = False,
    unknown: str | Path | None = None,
    unknown_threshold: float | None = None,
) -> dict[str, Any]:
    """Score ``checkpoint`` (default: the newest run's best.pt), or an ``.onnx`` / ``.tflite`` /
    OpenVINO ``.xml`` export (without torch); write eval.json, a plot and (unless ``html_report`` is
    false) report.html beside the model or in ``out``; ``outputs`` lists the files written. ``tta``
    (checkpoints) averages the probabilities of five views of each image (:mod:`cnnzoo.inference.tta`).
    ``unknown`` (a folder or manifest of photos of none of the classes) adds the ``unknown_*`` fields
    (:mod:`~cnnzoo.evaluation.unknown_eval`), at ``unknown_threshold`` or the model's own."""
    check_split(split)
    path = runs.resolve_checkpoint(checkpoint, runs_root)
    strangers = _unknown_check(path, unknown, unknown_threshold, device) if unknown is not None else None
    options = {"split": split, "batch_size": batch_size, "device": device, "progress": progress}
    if is_export(path):
        if tta:
            raise UserError(f"--tta: runs on checkpoints (torch), not on the export {path.name}")
        scored = score_export(path, data, **options)
    else:
        from .checkpoints import score_checkpoint  # lazy: the torch-free boundary: only a checkpoint imports torch

        scored = score_checkpoint(path, data, **options, tta=tta)
    if len(scored.labels) == 0:
        raise DataError(f"{scored.where}: no readable images to evaluate")
    out_dir = Path(out) if out else default_out(scored.about)
    if scored.thresholds is not None:
        return _multi_label_report(scored, out_dir)
    probs = probabilities(scored.logits, temperature=scored.temperature)  # the one rule every format follows
    report = {
        **scored.about,
        "data": scored.where,
        "split": scored.samples.name,
        **scores.summary(scored.logits, probs, scored.labels, scored.classes, top_k),
        **calibration_fields(scored, probs),
    }
    if html_report and scored.rows is None:
        console.log(
            "report.html: not written for streamed shards (its pages show the images, which a stream does not keep)"
        )
    if strangers is not None:
        report.update(_unknown_fields(strangers, scored, batch_size or EXPORT_BATCH, unknown_threshold))
    page = _page_inputs(report, probs, scored) if html_report and scored.rows is not None else None
    report["outputs"] = _write_report(report, out_dir, page)
    return report


def _unknown_fields(strangers: tuple, scored: Scored, batch: int, threshold: float | None) -> dict[str, Any]:
    """``--unknown``'s figures: the scored split's images as known, the given photos as unknown."""
    model, paths = strangers
    batches = labelled_batches(model, scored.samples, batch_size=batch, errors=[], progress=False)
    known = (pixels for _, pixels, _ in batches)
    return unknown_eval.unknown_report(model, known, paths, batch_size=batch, threshold=threshold)


def _unknown_check(path: Path, unknown: str | Path, threshold: float | None, device: str | None) -> tuple:
    """(the model as predict runs it, the ``--unknown`` images), refused before anything is scored:
    no images there, a model without an unknown score, a threshold out of its range."""
    paths = unknown_eval.unknown_images(unknown)
    model = load(path, device)
    unknown_eval.check_model(model)
    model.unknown_threshold_for(threshold=threshold)
    return model, paths


def _multi_label_report(scored: Scored, out_dir: Path) -> dict[str, Any]:
    """A multi-label model's report (:func:`cnnzoo.evaluation.multilabel.report_fields`, its loss)
    and files: eval.json and pr_curves.png (a precision-recall curve per class, its threshold marked)."""
    # a sigmoid per class, as predict and training compute it (calibrated, with thresholds to match)
    probs = probabilities(scored.logits, multi_label=True, temperature=scored.temperature)
    truth = scored.labels
    report = {
        **scored.about,
        "data": scored.where,
        "split": scored.samples.name,
        **multilabel.report_fields(probs, truth, scored.thresholds, scored.classes),
        "loss": scores.loss_sum(scored.logits, truth) / len(truth),
        **calibration_fields(scored, probs),
    }
    curves, points = {}, {}
    for k, name in enumerate(report["classes"]):
        if truth[:, k].any():
            precision, recall, _ = multilabel.pr_curve(probs[:, k], truth[:, k])
            curves[name] = ([0.0, *recall], [precision[0], *precision])
            points[name] = (report["per_class"][name]["recall"], report["per_class"][name]["precision"])
    title = f"{report['split']}: mAP {100 * report['map']:.1f}% ({report['num_images']} images)"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "eval.json", json.dumps(report, indent=2) + "\n")
        plot_pr_curves(curves, points, out_dir / "pr_curves.png", title)
    except OSError as exc:
        raise UserError(
            f"--out {out_dir}: cannot write the report there ({exc.strerror or exc}); choose another folder with --out"
        ) from None
    report["outputs"] = [str(out_dir / "eval.json"), str(out_dir / "pr_curves.png")]
    return report


def calibration_fields(scored: Scored, probs: np.ndarray) -> dict[str, Any]:
    """``ece``: the expected calibration error of the probabilities as the model serves them
    (``probs``: divided by its temperature, when it carries one); ``ece_uncalibrated``: of the raw
    softmax (or sigmoids); ``temperature``: the model's (None without one)."""
    multi = scored.thresholds is not None
    raw = probabilities(scored.logits, multi_label=multi) if scored.temperature is not None else probs
    t = scored.temperature
    return {
        "ece": calibration_error(probs, scored.labels),
        "ece_uncalibrated": calibration_error(raw, scored.labels),
        "temperature": t.tolist() if isinstance(t, np.ndarray) else t,
    }


def default_out(about: dict[str, Any]) -> Path:
    """Where the files go without ``out``: a checkpoint's folder; for an export, ``eval-<file>/``
    beside it, so that scoring ``best.int8.onnx`` never replaces the checkpoint's eval.json."""
    if "checkpoint" in about:
        return Path(about["checkpoint"]).parent
    model = Path(about["model"])
    return model.parent / f"eval-{model.name}"


def score_export(
    path: Path,
    data: str | Path | None,
    *,
    split: str | None,
    batch_size: int | None,
    device: str | None,
    progress: bool,
) -> Scored:
    """An ONNX, OpenVINO or TFLite export's logits on ``data`` (default: the data it trained on, split as
    training split it, from its metadata), read and run by the export's own predict path; any
    source (folders, manifests, Hugging Face folders, shards); torch is never imported."""
    model: Classifier = load(path, device)
    multi = model.meta.get("task") == "multi"
    cfg = export_config(path, model.meta)
    folder, rule = (data, trained_rule(model.meta)) if data is not None else export_data(path, model.meta)
    samples, where = samples_for(cfg, model.classes, data=folder, split=split, multi_label=multi, rule=rule)
    errors: list = []
    logits, rows, labels = [], [], []
    batches = labelled_batches(model, samples, batch_size=batch_size or EXPORT_BATCH, errors=errors, progress=progress)
    for positions, pixels, batch_labels in batches:
        logits.append(model.logits_and_probabilities(pixels)[0])
        rows.extend(positions)
        labels.extend(batch_labels)
    for name, reason in errors:
        console.warn(f"skipped {name}: cannot read image ({reason})")
    about = {
        "model": str(path),
        "format": model.format,
        "int8": "int8" in model.meta,
        "epoch": model.meta.get("epoch"),
        "tta": False,  # test-time augmentation runs on checkpoints only
    }
    outputs = len(model.classes)
    return Scored(
        logits=np.concatenate(logits) if logits else np.zeros((0, outputs), np.float32),
        labels=label_array(labels, outputs, multi),
        rows=None if samples.streamed else np.asarray(rows, dtype=np.int64),
        samples=samples,
        where=where,
        classes=model.classes,
        channels=model.channels,
        fit=model.fit,
        about=about,
        thresholds=list(model.thresholds) if multi else None,
        temperature=model.temperature,
    )


def labelled_batches(model: Classifier, samples, *, batch_size: int, errors: list, progress: bool):
    """(positions, uint8 pixels, labels) per batch of ``samples`` as the export reads images: a
    split's images by position (files, or images in memory), or a stream of shards in order."""
    if samples.streamed:
        yield from stream_batches(model, samples, batch_size=batch_size, errors=errors)
        return
    items = [samples.item(i) for i in range(len(samples))]
    sets = samples.label_sets if model.multi_label else None  # a multi-label model scores every label
    for positions, pixels in model.batches(
        items, batch_size=batch_size, errors=errors, progress=progress, task="evaluate"
    ):
        yield positions, pixels, [sets[r] if sets is not None else samples.labels[r] for r in positions]


def label_array(labels: list, outputs: int, multi: bool) -> np.ndarray:
    """Class indices, or multi-hot [N, classes] for a multi-label model."""
    if not multi:
        return np.asarray(labels, dtype=np.int64)
    hot = np.zeros((len(labels), outputs), dtype=np.float32)
    for row, indices in enumerate(labels):
        hot[row, list(indices)] = 1
    return hot


def _page_inputs(report: dict[str, Any], probs: np.ndarray, scored: Scored) -> ReportInputs:
    """What report.html is drawn from: the probabilities of each scored image (NumPy, so any model
    format's), which of the samples it is, and the images read with the model's channels."""
    samples, rows = scored.samples, scored.rows
    checkpoint = report.get("checkpoint")
    return ReportInputs(
        title=f"{Path(checkpoint or report['model']).name} (epoch {report['epoch']}) "
        f"on {report['split']} of {report['data']}",
        classes=report["classes"],
        probabilities=probs,
        labels=scored.labels,
        image_names=[samples.describe(int(r)) for r in rows],
        image_pixels=lambda row, size: samples.read(int(rows[row]), size, scored.channels, scored.fit),
        scores=report,
        # explain needs the checkpoint (gradients); the command works from any folder
        explain_model=str(Path(checkpoint).resolve()) if checkpoint else None,
        uncalibrated=probabilities(scored.logits) if scored.temperature is not None else None,
    )


def _write_report(report: dict[str, Any], out_dir: Path, page: ReportInputs | None) -> list[str]:
    """eval.json, confusion_matrix.png and (given ``page``) report.html in ``out_dir``; their paths."""
    title = f"{report['split']}: accuracy {100 * report['accuracy']:.1f}% ({report['num_images']} images)"
    written = [out_dir / "eval.json", out_dir / "confusion_matrix.png"]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "eval.json", json.dumps(report, indent=2) + "\n")
        confusion_png = figure_png(confusion_figure(report["confusion_matrix"], report["classes"], title))
        write_bytes(out_dir / "confusion_matrix.png", confusion_png)
        if page is not None:
            page.confusion_png = confusion_png
            written.append(write_report_html(out_dir / "report.html", page))
    except OSError as exc:
        raise UserError(
            f"--out {out_dir}: cannot write the report there ({exc.strerror or exc}); choose another folder with --out"
        ) from None
    return [str(p) for p in written]
