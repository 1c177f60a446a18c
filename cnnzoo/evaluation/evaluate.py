"""``cnnzoo evaluate``: score a checkpoint on a labelled split and explain the errors.

Without ``--data`` the checkpoint's own config says where the data is, and the split is
rebuilt exactly as training built it (the same seeded hold-out for a single folder),
so the accuracy reported here for the validation split equals the ``val_acc`` that
training recorded for the same checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from .. import checkpoint as ckpt_io
from .. import runs
from ..config import load_config
from ..console import console
from ..data import loaders, sources
from ..errors import DataError, UserError
from ..inference.torch_models import Model
from ..plots import plot_confusion
from ..runtime.device import Feed
from . import metrics
from .metrics import predict_loader


def _split_from_folder(folder: Path, split: Optional[str], classes: list[str]) -> sources.Samples:
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
    out = [f"checkpoint {report['checkpoint']} (epoch {report['epoch']}) on {report['split']}: "
           f"{report['num_images']} images from {report['data']}",
           f"loss {report['loss']:.4f}   accuracy {100 * report['accuracy']:.2f}%   "
           f"top-{report['top_k']} accuracy {100 * report['top_k_accuracy']:.2f}%", "",
           f"{'class':<{width}}  precision  recall      f1  support"]
    for name in classes:
        s = report["per_class"][name]
        out.append(f"{name:<{width}}  {s['precision']:9.3f}  {s['recall']:6.3f}  {s['f1']:6.3f}  {s['support']:7d}")
    for avg in ("macro", "weighted"):
        s = report["averages"][avg]
        out.append(f"{avg + ' avg':<{width}}  {s['precision']:9.3f}  {s['recall']:6.3f}  {s['f1']:6.3f}  "
                   f"{report['num_images']:7d}")
    out += ["", "confusion matrix (rows: true class, columns: predicted class)",
            _table(report["confusion_matrix"], classes)]
    return "\n".join(out)


def evaluate(checkpoint: Optional[str | Path] = None, data: Optional[str | Path] = None,
             *, split: Optional[str] = None, top_k: int = 5, batch_size: Optional[int] = None,
             out: Optional[str | Path] = None, device: Optional[str] = None,
             runs_root: str | Path = "runs", progress: bool = True) -> dict[str, Any]:
    """Score ``checkpoint`` (default: the newest run's best.pt); write eval.json and a plot."""

    path = Path(checkpoint) if checkpoint else runs.default_checkpoint(runs_root)
    ckpt = ckpt_io.load_checkpoint(path)
    path = Path(ckpt["path"])  # a run folder stands for its best.pt
    meta = ckpt["meta"]
    classes = list(meta["classes"])
    size, channels = tuple(meta["image_size"]), int(meta["channels"])
    cfg = load_config(ckpt["config"])
    if split not in (None, "test", "validation"):
        raise UserError(f"--split {split}: use test or validation")
    if data is not None:
        samples = _split_from_folder(Path(data), split, classes)
        where = str(Path(data))
    else:
        try:
            spec = sources.load_data(cfg, log=lambda *_: None)
        except DataError as exc:
            raise DataError(f"{exc} (the data this checkpoint was trained on); "
                            f"pass --data DIR to evaluate on another folder") from None
        if split == "test" and spec.test is None:
            raise DataError(f"{spec.root}: has no test/ split; use --split validation or --data DIR")
        samples = spec.test if (split == "test" or (split is None and spec.test is not None)) else spec.val
        where = spec.root or cfg.data.source
    model = Model(ckpt, device)  # the memory format training used, for the same numbers
    dev = model.device
    dataset = loaders.ImageDataset(samples, size, channels)
    workers = loaders.choose_workers("auto", cached=False, augmented=False, cuda=dev.type == "cuda")
    loader = loaders.make_loader(dataset, batch_size or cfg.train.batch_size * 2, shuffle=False, seed=0,
                                 workers=workers, pin_memory=dev.type == "cuda")
    bar = console.bar(len(loader), "evaluate") if progress else None
    logits, labels = predict_loader(model.module, loader, Feed(device=dev, norm=model.norm,
                                                               channels_last=model.channels_last), bar=bar)
    if len(labels) == 0:
        raise DataError(f"{where}: no readable images to evaluate")
    probs = metrics.probabilities(logits)
    predicted = metrics.predictions(logits)
    matrix = metrics.confusion_matrix(labels.tolist(), predicted.tolist(), len(classes))
    scores = metrics.per_class_scores(matrix, classes)
    n = len(labels)
    k = min(top_k, len(classes))
    report = {
        "checkpoint": str(path), "epoch": ckpt.get("epoch"), "data": where,
        "split": samples.name, "classes": classes, "num_images": n,
        "loss": metrics.plain_loss_sum(logits, labels).item() / n,
        "accuracy": (predicted == labels).sum().item() / n,
        "top_k": k, "top_k_accuracy": metrics.top_k_correct(probs, labels, k) / n,
        "per_class": scores["per_class"], "averages": scores["averages"],
        "confusion_matrix": matrix,
    }
    out_dir = Path(out) if out else path.parent

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
        plot_confusion(matrix, classes, out_dir / "confusion_matrix.png",
                       title=f"{samples.name}: accuracy {100 * report['accuracy']:.1f}% ({n} images)")
    except OSError as exc:
        raise UserError(f"--out {out_dir}: cannot write the report there ({exc.strerror or exc}); "
                        f"choose another folder with --out") from None
    report["outputs"] = [str(out_dir / "eval.json"), str(out_dir / "confusion_matrix.png")]
    return report
