"""The frozen-feature cache of transfer learning: a data cache of what the frozen layers compute.

While the first stages of a ``backbone`` are frozen (and in eval mode), their output
for an image never changes, so recomputing it every epoch is wasted work: on a CPU it is
most of the work. :func:`cache_cut` decides where to cut the model into the frozen prefix
it caches and the trainable :class:`Suffix` (or says why the cache does not apply);
:func:`build` runs the frozen prefix once over every decoded image, in each flipped
version that augmentation can produce, and keeps the results in RAM or in a
memory-mapped ``.npy`` file keyed by the images, the preprocessing and the frozen
weights (so a second run reuses it). Training then runs only the suffix on batches of
cached features (:class:`FeatureDataset`); each epoch picks a flipped or unflipped
version per image, seeded like the image augmentation.

Augmentations other than flips change the pixels every epoch, so they turn the cache
off (the log says so); so does a trainable layer before the backbone.

It runs the model's prefix, so it sits on the training floor: it imports the config, the
console, errors, files, the model's backbones, the runtime's device and the data layer's
caches and datasets. :mod:`cnnzoo.training.transfer` decides when it is used.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import AugmentConfig
from ..console import console
from ..data import loaders as loaders_mod
from ..data import preprocess
from ..data.cache import cached_array, keeping
from ..errors import DataError, shape_text
from ..files import cache_folder
from ..model.backbones import Backbone
from ..runtime.device import Feed

FEATURE_FORMAT = 2  # bump when the way features are computed or stored changes


@dataclass(kw_only=True)
class CacheCut:
    """Where to cut the model and which flipped versions of each image to precompute."""

    model: nn.Sequential
    index: int  # position of the backbone in the model
    cut: int  # backbone stages 0..cut-1 are frozen and cached
    flips: list[tuple[bool, bool]]  # (horizontal, vertical) versions
    flip_p: tuple[float, float]  # probability of each flip at training time

    @property
    def backbone(self) -> Backbone:
        return self.model[self.index]

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part: layers before the backbone and its first ``cut`` stages."""
        for layer in self.model[: self.index]:
            x = layer(x)
        bb = self.backbone
        return bb(x) if self.cut == len(bb.stages) else bb.run(x, 0, self.cut)

    def suffix(self) -> Suffix:
        return Suffix(self.backbone, self.cut, list(self.model[self.index + 1 :]))


class Suffix(nn.Module):
    """The trainable rest: backbone stages from ``cut`` on, then the head layers."""

    def __init__(self, backbone: Backbone, cut: int, head: list[nn.Module]):
        super().__init__()
        self.backbone, self.cut, self.head = backbone, cut, nn.Sequential(*head)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = (
            features
            if self.cut == len(self.backbone.stages)
            else self.backbone.run(features, self.cut, len(self.backbone.stages))
        )
        return self.head(x)


def _flip_versions(
    aug: AugmentConfig, mixing: Sequence[str] = ()
) -> tuple[str | None, list[tuple[bool, bool]], tuple[float, float]]:
    """(why the cache cannot apply or None, the versions to compute, the flip probabilities).
    ``mixing``: the ``train`` keys that mix images (MixUp, CutMix), which need pixels too."""
    other = [f"data.augment.{key}" for key in aug.pixel_changing()] + [f"train.{key}" for key in mixing]
    if other == ["train.distill.teacher"]:
        return "train.distill.teacher needs each batch's images, so the frozen stages run on every batch", [], (0, 0)
    if other:
        return (
            (
                f"{other[0]} changes the pixels every epoch, so the frozen stages run "
                f"on every batch (flips alone would keep the cache)"
            ),
            [],
            (0.0, 0.0),
        )
    h, v = aug.flip_probabilities
    flips = [(fh, fv) for fh in ((False, True) if h else (False,)) for fv in ((False, True) if v else (False,))]
    return None, flips, (h, v)


def cache_cut(
    model: nn.Sequential,
    aug: AugmentConfig,
    *,
    setting: str,
    pixel_cache: str,
    cut: int | None = None,
    mixing: Sequence[str] = (),
) -> tuple[CacheCut | None, str]:
    """A :class:`CacheCut` when the frozen-feature cache applies, else None and the reason.

    ``cut`` caches fewer stages than are frozen now (those that stay frozen in a later
    training stage too, so one cache serves both); by default every frozen stage.
    """
    found = [i for i, m in enumerate(model) if isinstance(m, Backbone)]
    if not found:
        return None, "no backbone layer"
    index = found[0]
    backbone = model[index]
    if setting == "none":
        return None, "data.feature_cache: none"
    if pixel_cache == "none":
        return None, "data.cache: none (the feature cache is built from the decoded-image cache)"
    if backbone.frozen_stages == 0 or cut == 0:
        return None, "every backbone stage is trainable now"
    if any(p.requires_grad for layer in model[:index] for p in layer.parameters()):
        return None, "a layer before the backbone has trainable parameters"
    reason, flips, flip_p = _flip_versions(aug, mixing)
    if reason:
        return None, reason
    cut = backbone.frozen_stages if cut is None else min(cut, backbone.frozen_stages)
    return CacheCut(model=model, index=index, cut=cut, flips=flips, flip_p=flip_p), ""


# ----------------------------------------------------------------------------- building


@dataclass
class FeatureStore:
    """A split's cached features: float32 ``[N, versions, *shape]`` and where they live."""

    features: torch.Tensor
    location: str
    seconds: float = 0.0

    def describe(self) -> str:
        size = self.features.numel() * 4 / 2**20
        where = "in RAM" if self.location == "ram" else f"on disk ({self.location})"
        n, versions = self.features.shape[:2]
        shape = shape_text(self.features.shape[2:])
        if not self.seconds:
            return f"{n} images x {versions} versions of {shape}, {size:.0f} MB, reused {where}"
        return (
            f"{n} images x {versions} versions of {shape} in {self.seconds:.1f}s "
            f"({n * versions / self.seconds:.0f} img/s), {size:.0f} MB {where}"
        )


def _weights_digest(p: CacheCut) -> str:
    h = hashlib.sha1()
    h.update(f"{p.backbone.name}|{p.cut}|{len(p.backbone.stages)}".encode())
    modules = list(p.model[: p.index]) + [
        p.backbone.body.get_submodule(u) for stage in p.backbone.stages[: p.cut] for u in stage
    ]
    for module in modules:
        for key, tensor in module.state_dict().items():
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _chain_matches(p: CacheCut, x: torch.Tensor) -> bool:
    """A timm model's forward is checked once to be the chain of its stages before cutting it."""
    bb = p.backbone
    if p.cut == len(bb.stages) or not bb.is_timm:
        return True
    whole = bb(x)
    chained = bb.run(bb.run(x, 0, p.cut), p.cut, len(bb.stages))
    return whole.shape == chained.shape and torch.allclose(whole, chained, rtol=1e-4, atol=1e-4)


@torch.inference_mode()
def build(
    p: CacheCut,
    dataset: loaders_mod.ImageDataset,
    split: str,
    *,
    feed: Feed,
    flips: list[tuple[bool, bool]],
    setting: str = "ram",
    cache_dir: Path | None = None,
) -> FeatureStore | None:
    """Run the frozen prefix over every image of ``dataset`` in each version of ``flips``.

    ``setting`` is ``data.feature_cache``: ``ram``, or ``disk``/``auto`` for a memory-mapped
    file that later runs reuse (RAM when the folder cannot be written). Returns None when
    a timm model turns out not to be a plain chain of its stages.
    """
    start = time.perf_counter()
    p.model.eval()
    n = len(dataset)
    rows = torch.tensor(dataset.indices, dtype=torch.int64)
    probe = feed.inputs(dataset.pixels[rows[:2]])
    if not _chain_matches(p, probe):
        return None
    shape = (n, len(flips), *p.prefix(probe).shape[1:])
    path, key = None, None
    on_disk = setting in ("disk", "auto")  # auto: reused across runs, and the OS keeps it in memory
    if on_disk or keeping():
        fitted = "" if dataset.fit == preprocess.SQUASH else f"|{dataset.fit}"  # squash: the keys made before
        images = f"{dataset.samples.fingerprint()}|{dataset.size}|{dataset.channels}{fitted}"
        key = hashlib.sha1(
            f"{FEATURE_FORMAT}|{shape}|{flips}|{images}|{feed.describe()}|{_weights_digest(p)}".encode()
        ).hexdigest()[:20]
    if on_disk:
        folder = cache_folder(cache_dir)
        path = folder / f"features-{split}-{key}.npy"

    def fill(store: torch.Tensor) -> dict:
        bar = console.bar(n * len(flips), f"features {split}", unit="img")
        try:
            _fill(p, dataset, rows, flips=flips, feed=feed, store=store, bar=bar)
        finally:
            bar.close()
        _check_finite(store, dataset)
        return {}

    content = f"features|{split}|{key}" if key else None
    cached = cached_array(path, shape, np.float32, key="data.feature_cache", fill=fill, content=content)
    return FeatureStore(cached.tensor, cached.location, 0.0 if cached.reused else time.perf_counter() - start)


def _check_finite(store: torch.Tensor, dataset: loaders_mod.ImageDataset) -> None:
    """Features that are NaN or infinite would train a NaN model without a word: refuse them."""
    bad = (~torch.isfinite(store.flatten(1))).any(1)
    if bool(bad.any()):
        first = dataset.samples.describe(dataset.indices[int(bad.nonzero()[0])])
        raise DataError(
            f"data.feature_cache: the frozen layers give NaN or infinite values for "
            f"{int(bad.sum())} image(s), first {first}; the backbone's weights are damaged "
            f"(or train.amp overflows: try train.amp: none)"
        )


def _fill(
    p: CacheCut,
    dataset: loaders_mod.ImageDataset,
    rows: torch.Tensor,
    *,
    flips: list[tuple[bool, bool]],
    feed: Feed,
    store: torch.Tensor,
    bar,
    batch: int = 64,
) -> None:
    for begin in range(0, len(rows), batch):
        x = feed.inputs(dataset.pixels[rows[begin : begin + batch]])
        for v, (fh, fv) in enumerate(flips):
            dims = [d for d, on in ((-1, fh), (-2, fv)) if on]
            flipped = x.flip(dims) if dims else x
            with feed.autocast():
                store[begin : begin + len(flipped), v] = p.prefix(flipped).float().cpu()
            bar.update(len(flipped))


class FeatureDataset(torch.utils.data.Dataset):
    """Cached features as batches, like :class:`cnnzoo.data.loaders.ImageDataset` returns images.

    Each image's version (flipped or not) is drawn per epoch from the batch seed that
    :class:`cnnzoo.data.batch_order.EpochBatches` hands out, so runs and resumes repeat exactly.
    """

    def __init__(
        self,
        store: FeatureStore,
        labels: torch.Tensor,
        flips: list[tuple[bool, bool]],
        flip_p: tuple[float, float] = (0.0, 0.0),
        *,
        rows: torch.Tensor | None = None,
    ):
        """``rows``: the store's row of each image (a fold's images in its pool's store), in order by default."""
        self.features, self.labels, self.flips, self.flip_p = store.features, labels, flips, flip_p
        self.rows = rows

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, pairs: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.tensor([i for i, _ in pairs], dtype=torch.int64)
        stored = positions if self.rows is None else self.rows[positions]
        versions = torch.zeros(len(pairs), dtype=torch.int64)
        if len(self.flips) > 1:
            g = torch.Generator().manual_seed(pairs[0][1])
            draws = torch.rand(len(pairs), 2, generator=g) < torch.tensor(self.flip_p)
            lookup = {flip: k for k, flip in enumerate(self.flips)}  # holds every flip whose p > 0
            versions = torch.tensor([lookup[(bool(h), bool(v))] for h, v in draws.tolist()], dtype=torch.int64)
        return self.features[stored, versions].contiguous(), self.labels[positions]


def store_rows(dataset: loaders_mod.ImageDataset) -> torch.Tensor | None:
    """Where each image of ``dataset`` is in the store built over ``dataset.whole()``: None when
    that is the dataset itself, else the positions of its images among the whole pool's."""
    whole = dataset.whole()
    if whole is dataset:
        return None
    at = {row: k for k, row in enumerate(whole.indices)}
    return torch.tensor([at[row] for row in dataset.indices], dtype=torch.int64)
