"""After training: fit the "unknown" score on best.pt's weights and store it with its threshold (issue 31).

:func:`fit_unknown` runs once, on rank 0, after the epochs. It reads ``best.pt``, runs the
training images (un-augmented) and the validation images through the network, and stores in
``best.pt`` (rewritten atomically):

- ``meta.unknown``: the score (``train.unknown.score``), the threshold that keeps
  ``train.unknown.keep`` of the validation images as known, and how it was fitted;
- for the ``knn`` score, ``unknown_bank``: the L2-normalised penultimate features of up to
  :data:`MAX_BANK` training images, which the network carries as a buffer
  (:class:`cnnzoo.inference.scored.ScoredNetwork`) into every export.

No validation split (nothing to set the threshold on), a multi-label model (an image with no label
past its threshold is already its "none of these") or ``train.unknown.enabled: false``: one line,
and best.pt stays as it was. See docs/unknown.md for the measurements behind the default score.

Floor 7 (training): imports checkpoint, console, data loaders, evaluation.metrics, inference.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import checkpoint as ckpt_io
from ..config.schema import UnknownConfig
from ..console import console
from ..data import loaders as loaders_mod
from ..evaluation.metrics import predict_loader
from ..inference import unknown
from ..inference.scored import head_split
from ..inference.torch_models import Model
from ..runtime.device import Feed

MAX_BANK = 2048  # training images whose features the knn score compares with (evenly spaced when more)


def fit_unknown(
    run_dir: Path,
    loaders: loaders_mod.Loaders,
    *,
    settings: UnknownConfig,
    batch_size: int,
    multi_label: bool,
    device: Any = None,
) -> dict[str, Any] | None:
    """Fit and store the unknown score in ``run_dir/best.pt`` (run on ``device``, training's); returns
    ``meta.unknown`` (None: skipped, with the line that says why)."""
    if not settings.enabled:
        return None
    if multi_label:
        console.log("unknown: not fitted for a multi-label model (an image with no label past its threshold says none)")
        return None
    path = run_dir / "best.pt"
    if not len(loaders.val_set) or not path.is_file():
        console.log("unknown: no validation split to set its threshold on; predict answers no unknown")
        return None
    ckpt = ckpt_io.load_checkpoint(path)
    model = Model(ckpt, str(device) if device is not None else None)
    feed = Feed(device=model.device, norm=model.norm, channels_last=model.channels_last)
    score = settings.score
    split = head_split(model.module)
    if score == "knn" and split is None:
        console.log("unknown: the knn score needs a Linear head; the network has none, so energy is used")
        score = "energy"
    body, head = split if split is not None else (model.module, None)
    val_features = _outputs(body, loaders.val_set, feed, batch_size)
    entry: dict[str, Any] = {"score": score, "keep": float(settings.keep)}
    if score == "knn":
        train_features = _outputs(body, loaders.train_set, feed, batch_size)
        bank = _bank(train_features)
        val_scores = unknown.knn_score(val_features, bank, settings.k)
        ckpt["unknown_bank"] = torch.from_numpy(bank)
        entry.update(k=int(min(settings.k, len(bank))), bank_images=len(bank))
    else:
        logits = val_features if head is None else _head(head, val_features)
        val_scores = unknown.logit_score(score, logits)
    threshold = unknown.threshold_keeping(val_scores, settings.keep)
    entry.update(threshold=threshold, validation_images=len(val_scores))
    ckpt["meta"]["unknown"] = entry
    ckpt.pop("path", None)
    ckpt_io.save_atomic(ckpt, path)
    kept = float(np.mean(val_scores <= threshold))
    console.log(
        f"unknown: {score} score fitted; threshold {threshold:.4g} keeps {100 * kept:.1f}% of "
        f"{len(val_scores)} validation images (train.unknown.keep {settings.keep:g}); stored in {path}"
    )
    return entry


def _outputs(net: torch.nn.Module, dataset: loaders_mod.ImageDataset, feed: Feed, batch_size: int) -> np.ndarray:
    """``net``'s output on every image of ``dataset`` as it is (no augmentation), in order."""
    plain = copy.copy(dataset)
    plain.augment, plain.seeds, plain.crop_min_area = None, False, None
    loader = loaders_mod.make_loader(plain, batch_size, shuffle=False, seed=0, workers=0)
    outputs, _ = predict_loader(net, loader, feed.without_autocast())
    return outputs.flatten(1).numpy()


def _head(head: torch.nn.Module, features: np.ndarray) -> np.ndarray:
    parameter = next(head.parameters())
    with torch.inference_mode():
        x = torch.from_numpy(features).to(parameter.device, parameter.dtype)
        return head(x).float().cpu().numpy()


def _bank(features: np.ndarray) -> np.ndarray:
    """Up to :data:`MAX_BANK` rows, evenly spaced, L2-normalised (float32)."""
    if len(features) > MAX_BANK:
        features = features[np.linspace(0, len(features) - 1, MAX_BANK).round().astype(int)]
    norms = np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return (features / norms).astype(np.float32)
