"""``cnnzoo evaluate``: score a checkpoint on a labelled split and explain the errors.

Without ``--data`` the checkpoint's own config says where the data is, and the split is
rebuilt exactly as training built it (the same seeded hold-out for a single folder),
so the accuracy reported here for the validation split equals the ``val_acc`` that
training recorded for the same checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import checkpoint as ckpt_io
from .. import runs
from ..config import Config, load_config
from ..console import console
from ..data import hf, loaders, manifest, shard_files, shards, sources
from ..errors import DataError, UserError
from ..files import write_bytes, write_text
from ..inference.torch_models import Model
from ..inference.tta import AveragedViews
from ..pages import figure_png
from ..plots import confusion_figure, plot_pr_curves
from ..runtime.device import Feed
from . import metrics, multilabel
from .metrics import predict_loader
from .page import ReportInputs, write_report_html


def _split_from_folder(folder: Path, split: str | None, classes: list[str]) -> sources.Samples:
    """``folder`` is a data root with split folders, or itself a folder of class folders."""
    if not folder.is_dir():
        raise DataError(f"--data: folder not found: {folder}")
    wanted = [split] if split else ["test", "validation"]
    for name in wanted:
        for candidate in sources.SPLIT_FOLDERS[name]:
            if (folder / candidate).is_dir():
                folder = folder / candidate
                break
        else:
            continue
        break
    else:
        if split and any((folder / n).is_dir() for names in sources.SPLIT_FOLDERS.values() for n in names):
            raise DataError(f"--data {folder}: has no {split}/ split")
    present = [p.name for p in sources.class_dirs(folder)] if folder.is_dir() else []
    missing = [c for c in classes if c not in present]
    extra = [c for c in present if c not in classes]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing class folder{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        if extra:
            parts.append(f"class folder{'s' if len(extra) > 1 else ''} {', '.join(extra)} unknown to the model")
        raise DataError(f"--data {folder}: {'; '.join(parts)}; the model's classes are {', '.join(classes)}")
    samples, _, skipped = sources.scan_folder(folder, split or folder.name, classes)
    if skipped:
        console.warn(f"skipped {skipped} files that are not images under {folder}")
    return samples


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
    heading = (
        f"checkpoint {report['checkpoint']} (epoch {report['epoch']}) on {report['split']}: "
        f"{report['num_images']} images from {report['data']}"
    )
    if report.get("task") == "multi":
        return multilabel.format_report(report, heading)
    out = [
        heading,
        f"loss {report['loss']:.4f}   accuracy {100 * report['accuracy']:.2f}%   "
        f"top-{report['top_k']} accuracy {100 * report['top_k_accuracy']:.2f}%",
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
) -> dict[str, Any]:
    """Score ``checkpoint`` (default: the newest run's best.pt); write eval.json, a plot and (unless
    ``html_report`` is false) report.html; ``outputs`` lists the files written. ``tta`` averages the
    probabilities of five views of each image (:mod:`cnnzoo.inference.tta`)."""
    path = runs.resolve_checkpoint(checkpoint, runs_root)
    ckpt = ckpt_io.load_checkpoint(path)
    path = Path(ckpt["path"])  # a run folder stands for its best.pt
    cfg = load_config(ckpt["config"])
    if split not in (None, "test", "validation"):
        raise UserError(f"--split {split}: use test or validation")
    multi = ckpt["meta"].get("task") == "multi"
    samples, where = _samples_for(cfg, list(ckpt["meta"]["classes"]), data=data, split=split, multi_label=multi)
    model = Model(ckpt, device)  # the memory format training used, for the same numbers
    model.tta = tta
    logits, labels, rows = _logits(model, samples, batch_size=batch_size or cfg.train.batch_size * 2, progress=progress)
    if len(labels) == 0:
        raise DataError(f"{where}: no readable images to evaluate")
    report = {
        "checkpoint": str(path),
        "epoch": ckpt.get("epoch"),
        "data": where,
        "split": samples.name,
        "tta": tta,
    }
    out_dir = Path(out) if out else path.parent
    if multi:
        report.update(_multi_label_scores(logits, labels, model))
        report["outputs"] = _write_multi_label_report(report, out_dir, logits, labels)
        return report
    report.update(_scores(logits, labels, model.classes, top_k))
    page = _page(report, logits, samples, rows, model) if html_report else None
    report["outputs"] = _write_report(report, out_dir, page)
    return report


def _page(
    report: dict[str, Any], logits: torch.Tensor, samples: sources.Samples, rows: torch.Tensor | None, model: Model
) -> ReportInputs | None:
    """What report.html shows, or None for streamed shards (with a line saying so)."""
    if rows is None:
        console.log(
            "report.html: not written for streamed shards (its pages show the images, which a stream does not keep)"
        )
        return None
    return _page_inputs(report, metrics.probabilities(logits).numpy(), samples, rows.numpy(), model.channels)


def _multi_label_scores(logits: torch.Tensor, targets: torch.Tensor, model: Model) -> dict[str, Any]:
    """A multi-label model's report fields (:func:`cnnzoo.evaluation.multilabel.report_fields`) and its loss."""
    scores = torch.sigmoid(logits).numpy()
    fields = multilabel.report_fields(scores, targets.numpy(), model.thresholds, model.classes)
    return {**fields, "loss": metrics.plain_loss_sum(logits, targets).item() / len(targets)}


def _write_multi_label_report(
    report: dict[str, Any], out_dir: Path, logits: torch.Tensor, targets: torch.Tensor
) -> list[str]:
    """eval.json and pr_curves.png (a precision-recall curve per class, its threshold marked)."""
    scores, truth = torch.sigmoid(logits).numpy(), targets.numpy()
    curves, points = {}, {}
    for k, name in enumerate(report["classes"]):
        if truth[:, k].any():
            precision, recall, _ = multilabel.pr_curve(scores[:, k], truth[:, k])
            curves[name] = ([0.0, *recall], [precision[0], *precision])
            s = report["per_class"][name]
            points[name] = (s["recall"], s["precision"])
    title = f"{report['split']}: mAP {100 * report['map']:.1f}% ({report['num_images']} images)"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "eval.json", json.dumps(report, indent=2) + "\n")
        plot_pr_curves(curves, points, out_dir / "pr_curves.png", title)
    except OSError as exc:
        raise UserError(
            f"--out {out_dir}: cannot write the report there ({exc.strerror or exc}); choose another folder with --out"
        ) from None
    return [str(out_dir / "eval.json"), str(out_dir / "pr_curves.png")]


def _samples_for(
    cfg: Config, classes: list[str], *, data: str | Path | None, split: str | None, multi_label: bool = False
) -> tuple[sources.Samples, str]:
    """The images to score and where they come from: ``data``'s, or the split training built."""
    if data is not None and manifest.is_manifest(data):
        return sources.manifest_split(cfg, Path(data), split, classes, multi_label=multi_label), str(Path(data))
    if data is not None and multi_label:
        raise DataError(
            f"--data {data}: a multi-label model is scored on a manifest (a CSV with space-separated tags, "
            f"or 0/1 columns), not a folder of class folders"
        )
    if data is not None and hf.is_hf_dataset(str(data)):
        return sources.hf_split(cfg, str(data), split, classes), str(data)
    if data is not None and shard_files.is_shards(str(data)):
        return shards.shard_split(str(data), split, classes), str(data)
    if data is not None:
        return _split_from_folder(Path(data), split, classes), str(Path(data))
    try:
        with console.scoped(True):  # the data's own lines are training's, not this report's
            spec = sources.load_data(cfg)
    except DataError as exc:
        raise DataError(
            f"{exc} (the data this checkpoint was trained on); pass --data DIR to evaluate on another folder"
        ) from None
    if split == "test" and spec.test is None:
        raise DataError(f"{spec.root}: has no test/ split; use --split validation or --data DIR")
    samples = spec.test if (split == "test" or (split is None and spec.test is not None)) else spec.val
    return samples, spec.root or cfg.data.source


def _logits(
    model: Model, samples: sources.Samples, *, batch_size: int, progress: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The model's logits for every readable image, run as training validated, their labels, and
    which of ``samples`` each row is (an unreadable image is skipped; None for streamed shards,
    whose samples have no positions to go back to)."""
    cuda = model.device.type == "cuda"
    feed = Feed(device=model.device, norm=model.norm, channels_last=model.channels_last)
    if samples.shards is not None:
        size, channels = model.image_size, model.channels
        loader = shards.eval_loader(samples, model.classes, size=size, channels=channels, batch_size=batch_size)
        bar = console.bar(len(loader), "evaluate") if progress else None
        return (*predict_loader(_module(model), loader, feed, bar=bar), None)
    # each image labelled with its own position, so that the rows say which images they are
    numbered = dataclasses.replace(samples, labels=list(range(len(samples))))
    dataset = loaders.ImageDataset(numbered, model.image_size, model.channels)
    workers = loaders.choose_workers("auto", cached=False, augmented=False, cuda=cuda)
    loader = loaders.make_loader(dataset, batch_size, shuffle=False, seed=0, workers=workers, pin_memory=cuda)
    bar = console.bar(len(loader), "evaluate") if progress else None
    logits, rows = predict_loader(_module(model), loader, feed, bar=bar)
    if model.multi_label:
        labels = loaders.multi_hot([samples.label_sets[r] for r in rows.tolist()], len(model.classes))
    else:
        labels = torch.as_tensor([samples.labels[r] for r in rows.tolist()], dtype=torch.int64)
    return logits, labels, rows


def _module(model: Model) -> torch.nn.Module:
    """What scores a batch: the network, or with ``--tta`` the network over five views averaged."""
    return AveragedViews(model.module) if model.tta else model.module


def _scores(logits: torch.Tensor, labels: torch.Tensor, classes: list[str], top_k: int) -> dict[str, Any]:
    """Loss, accuracy, top-k accuracy, per-class scores and the confusion matrix, as report fields."""
    predicted = metrics.predictions(logits)
    matrix = metrics.confusion_matrix(labels.tolist(), predicted.tolist(), len(classes))
    scores = metrics.per_class_scores(matrix, classes)
    n, k = len(labels), min(top_k, len(classes))
    return {
        "classes": classes,
        "num_images": n,
        "loss": metrics.plain_loss_sum(logits, labels).item() / n,
        "accuracy": (predicted == labels).sum().item() / n,
        "top_k": k,
        "top_k_accuracy": metrics.top_k_correct(metrics.probabilities(logits), labels, k) / n,
        "per_class": scores["per_class"],
        "averages": scores["averages"],
        "confusion_matrix": matrix,
    }


def _page_inputs(
    report: dict[str, Any], probabilities: np.ndarray, samples: sources.Samples, rows: np.ndarray, channels: int
) -> ReportInputs:
    """What report.html is drawn from: the probabilities of each scored image (NumPy, so any model
    format's), which of ``samples`` it is, and the images read with ``channels``."""
    return ReportInputs(
        title=f"{Path(report['checkpoint']).name} (epoch {report['epoch']}) on {report['split']} of {report['data']}",
        classes=report["classes"],
        probabilities=probabilities,
        labels=np.asarray([samples.labels[r] for r in rows], dtype=np.int64),
        image_names=[samples.describe(int(r)) for r in rows],
        image_pixels=lambda row, size: samples.read(int(rows[row]), size, channels),
        scores=report,
        explain_model=str(Path(report["checkpoint"]).resolve()),  # the command works from any folder
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
