"""The features ``data issues`` ranks a data set on: a config's backbone, pooled, for every image.

Every labelled split of the data is pooled (train, validation and a labelled test split), each
image decoded once (:func:`cnnzoo.data.cache.decode_all`, the same pixels training sees) and run
through the config's ``backbone`` layer with its weights, in eval mode; the output is averaged
over its spatial positions, for the image and for its horizontal flip. The result,
float32 ``[N, 2, C]``, is kept as a reusable ``.npy`` file in the cache home keyed by the images
(names, labels and bytes), the preprocessing and the backbone's weights, so a second look at the
same data costs seconds.

A config without a ``backbone`` layer is refused: a network trained from scratch has no
features worth comparing before it is trained (use a transfer config).

On the training floor (it builds the config's model): imports config, console, errors, files,
data (sources, cache, preprocess), model, runtime.device and training.inputs/setup.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..console import console
from ..data.cache import cached_array, decode_all
from ..data.sources.samples import DataSpec, Samples
from ..errors import ConfigError, DataError
from ..files import cache_folder
from ..model.backbones import Backbone, backbone_of
from ..runtime.device import cpu_count, norm_tensors, pick_device, to_model_input
from .inputs import load_data
from .recipe import seed_everything
from .setup import build_for_data

FEATURES_FORMAT = 1  # bump when the way the features are computed changes
NO_BACKBONE = (
    "data issues compares images by a pretrained backbone's features, and {config} has no backbone "
    "layer (a network trained from scratch has none before training); give a transfer config, "
    "e.g. -c clothing_transfer"
)


@dataclass
class PooledImages:
    """Every labelled image of the data, the splits pooled: names, labels, splits, features."""

    classes: list[str]
    names: list[str]  # how each image is named in messages and issues.csv (its path)
    labels: np.ndarray  # int64 [N]
    splits: list[str]  # the split each image came from
    samples: list[tuple[Samples, int]]  # (split, index) to read an image again (thumbnails)
    features: np.ndarray  # float32 [N, versions, C]: the image, then its horizontal flip
    backbone: str
    seconds: float = 0.0  # spent computing features (0 when the cache was reused)


def labelled_splits(spec: DataSpec) -> list[Samples]:
    """The splits whose images carry labels (a test split without labels is left out)."""
    found = [spec.train, spec.val]
    if spec.test is not None and len(spec.test) and all(label >= 0 for label in spec.test.labels):
        found.append(spec.test)
    return [s for s in found if len(s)]


def require_backbone(model: torch.nn.Module, config_name: str) -> Backbone:
    backbone = backbone_of(model)
    if backbone is None:
        raise ConfigError(NO_BACKBONE.format(config=config_name))
    return backbone


def _key(backbone: Backbone, splits: list[Samples], spec: DataSpec) -> str:
    h = hashlib.sha1(f"{FEATURES_FORMAT}|{backbone.name}|{spec.image_size}|{spec.channels}|{spec.fit}".encode())
    h.update(f"{spec.mean}|{spec.std}".encode())
    for split in splits:
        h.update(f"{split.name}|{split.fingerprint()}".encode())
    for key, tensor in backbone.state_dict().items():
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


@torch.inference_mode()
def _fill(backbone: Backbone, pixels: list[torch.Tensor], *, spec: DataSpec, store: torch.Tensor) -> None:
    device = pick_device("auto")
    backbone.to(device).eval()
    mean, std = norm_tensors(spec.mean, spec.std, device)
    total = sum(len(p) for p in pixels)
    bar = console.bar(total * 2, "features", unit="img")
    row, batch = 0, 64
    try:
        for split_pixels in pixels:
            for begin in range(0, len(split_pixels), batch):
                x = to_model_input(split_pixels[begin : begin + batch], mean, std, device=device)
                for version, flipped in enumerate((x, x.flip(-1))):
                    out = backbone(flipped).float()
                    pooled = out.mean(dim=(-2, -1)) if out.ndim == 4 else out.flatten(1)
                    store[row : row + len(x), version] = pooled.cpu()
                    bar.update(len(x))
                row += len(x)
    finally:
        bar.close()


def pooled_images(
    spec: DataSpec, model: torch.nn.Module, *, config_name: str, cache_dir: Path | None = None
) -> PooledImages:
    """Decode and embed every labelled image of ``spec`` with ``model``'s backbone (cached on disk)."""
    if spec.multi_label:
        raise DataError(
            f"{spec.root}: data issues ranks single-label data; this manifest gives several labels per image"
        )
    backbone = require_backbone(model, config_name)
    splits = labelled_splits(spec)
    pixels, names, labels, split_names, where = [], [], [], [], []
    for split in splits:
        decoded = decode_all(
            split, spec.image_size, spec.channels, kind="auto", cache_dir=cache_dir, workers=cpu_count(), fit=spec.fit
        )
        kept = [i for i in range(len(split)) if i not in set(decoded.failed)]
        pixels.append(decoded.pixels[torch.tensor(kept, dtype=torch.int64)])
        names += [split.describe(i) for i in kept]
        labels += [split.labels[i] for i in kept]
        split_names += [split.name] * len(kept)
        where += [(split, i) for i in kept]
    if not names:
        raise DataError(f"{spec.root}: no image can be read; cnnzoo data check names them")
    with torch.inference_mode():
        cpu = torch.device("cpu")
        probe = backbone.eval()(to_model_input(pixels[0][:1], *norm_tensors(spec.mean, spec.std, cpu), device=cpu))
    shape = (len(names), 2, probe.shape[1])
    folder = cache_folder(cache_dir)
    path = folder / f"issue-features-{_key(backbone, splits, spec)}.npy"
    start = time.perf_counter()
    cached = cached_array(
        path,
        shape,
        np.float32,
        key="data issues features",
        fill=lambda s: _fill(backbone, pixels, spec=spec, store=s) or {},
    )
    seconds = 0.0 if cached.reused else time.perf_counter() - start
    console.log(
        f"features: {len(names)} images x 2 versions of {shape[2]} from {backbone.name}"
        + (f" in {seconds:.0f}s" if seconds else f", reused ({cached.location})")
    )
    return PooledImages(
        classes=list(spec.classes),
        names=names,
        labels=np.asarray(labels, dtype=np.int64),
        splits=split_names,
        samples=where,
        features=cached.tensor.numpy().copy(),
        backbone=backbone.name,
        seconds=seconds,
    )


def data_and_model(cfg: Config) -> tuple[DataSpec, torch.nn.Module]:
    """The data ``cfg`` names and its model, built with the backbone's pretrained weights."""

    spec = load_data(cfg)
    if spec.source == "shards" or getattr(spec.train, "streamed", False):
        raise DataError(
            f"{spec.root}: data issues reads image files or arrays; WebDataset shards stream and are not supported"
        )
    seed_everything(cfg.seed)  # a backbone without pretrained weights (weights: null) is drawn from the seed
    _, model = build_for_data(cfg, spec, pretrained=True)
    return spec, model
