"""A checkpoint's logits on a labelled split, run with torch exactly as training validated (the same
loader, memory format and autocast), so that ``evaluate``'s accuracy equals the ``val_acc`` training
recorded. :mod:`~cnnzoo.evaluation.evaluate` imports this module only for a checkpoint, so that an
export is evaluated without torch.

Imports torch, data loaders, inference.torch_models and runtime.device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import checkpoint as ckpt_io
from ..config import load_config
from ..console import console
from ..data import loaders, sources
from ..inference.torch_models import Model
from ..inference.tta import AveragedViews
from ..runtime.device import Feed
from .metrics import predict_loader
from .splits import Scored, samples_for, trained_rule


def score_checkpoint(
    path: Path,
    data: str | Path | None,
    *,
    split: str | None,
    batch_size: int | None,
    device: str | None,
    progress: bool,
    tta: bool = False,
    test_crop: float | None = None,
) -> Scored:
    """``path``'s logits on ``data`` (a folder; default: the data it was trained on, split as training split it);
    ``test_crop`` reads the images with that centred crop instead of the one the checkpoint stores."""
    ckpt = ckpt_io.load_checkpoint(path)
    if test_crop is not None:  # a candidate tried (training's choice after the epochs, the single-view bench)
        ckpt = {**ckpt, "meta": {**ckpt["meta"], "test_crop": float(test_crop)}}
    path = Path(ckpt["path"])  # a run folder stands for its best.pt
    cfg = load_config(ckpt["config"])
    multi = ckpt["meta"].get("task") == "multi"
    samples, where = samples_for(
        cfg,
        list(ckpt["meta"]["classes"]),
        data=data,
        split=split,
        multi_label=multi,
        rule=trained_rule(ckpt["meta"], cfg),
    )
    model = Model(ckpt, device)  # the memory format training used, for the same numbers
    module = AveragedViews(model.module) if tta else model.module  # --tta: five views averaged
    thresholds = list(model.thresholds) if multi else None
    batch_size = batch_size or cfg.train.batch_size * 2
    feed = Feed(device=model.device, norm=model.norm, channels_last=model.channels_last)
    about = {"checkpoint": str(path), "epoch": ckpt.get("epoch"), "tta": tta}
    scored_on = {  # what both ways of reading the split report beside the logits
        "samples": samples,
        "where": where,
        "classes": model.classes,
        "channels": model.channels,
        "fit": model.fit,
        "about": about,
        "thresholds": thresholds,
        "temperature": model.temperature,
    }
    size, channels, cuda = model.image_size, model.channels, model.device.type == "cuda"
    loader, by_position = sources.scoring_loader(
        samples, model.classes, size=size, channels=channels, batch_size=batch_size, cuda=cuda, fit=model.fit
    )
    bar = console.bar(len(loader), "evaluate") if progress else None
    logits, second = predict_loader(module, loader, feed, bar=bar)
    if not by_position:  # a stream yields labels, not positions to look them up by
        return Scored(logits=logits.numpy(), labels=second.numpy(), rows=None, **scored_on)
    rows = second
    labels = _labels(samples, rows.tolist(), model.classes, multi)
    return Scored(logits=logits.numpy(), labels=labels, rows=rows.numpy(), **scored_on)


def _labels(samples, rows: list[int], classes: list[str], multi: bool) -> np.ndarray:
    """The scored rows' labels: class indices, or multi-hot [N, classes] for a multi-label model."""
    if multi:
        return loaders.multi_hot([samples.label_sets[r] for r in rows], len(classes)).numpy()
    return np.asarray([samples.labels[r] for r in rows], dtype=np.int64)
