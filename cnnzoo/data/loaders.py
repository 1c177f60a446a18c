"""Batches: datasets that return whole uint8 batches, in the order and with the seeds of
:class:`~cnnzoo.data.batch_order.EpochBatches`, and the loaders of both splits.

:class:`ImageDataset` returns whole uint8 batches (``__getitems__``) with augmentations applied
per image, seeded per batch, so a run is reproducible whatever the worker count, and a resumed
run sees exactly the batches the uninterrupted one saw. Normalisation to float happens on the
device (:func:`cnnzoo.runtime.device.to_model_input`). :func:`build_loaders` makes both splits' loaders.
"""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..console import console, warn
from ..errors import DataError
from ..runtime import distributed
from ..runtime.device import cpu_count
from . import preprocess
from .batch_augment import BatchAugment
from .batch_order import EpochBatches
from .cache import DecodedImages, decode_all, plan_cache, shared_cache_kind
from .sources.samples import DataSpec, Samples


class ImageDataset(torch.utils.data.Dataset):
    """A split as uint8 batches; reads the cache when there is one, else decodes files (streaming).

    With ``crop_min_area`` (training, uncached, the smaller share of ``data.augment.random_resized_crop``)
    each image is decoded at its full resolution (a large JPEG no smaller than its smallest crop
    needs) and the per-image ``augment`` crops it to ``size``.

    ``__getitems__`` takes ``(index, batch_seed)`` pairs from :class:`EpochBatches` and
    returns ``(images uint8 [B, C, H, W], labels int64 [B])``, and the batch seed as a third
    item with ``seeds`` (the batch is then augmented on the device, :mod:`~cnnzoo.data.batch_augment`).
    With ``multi_label_classes`` (a multi-label split of that many classes) the labels are
    multi-hot float32 ``[B, classes]``; ``labels`` stays each image's first class (-1: none),
    which the batch order samples from.
    """

    def __init__(
        self,
        samples: Samples,
        size: tuple[int, int],
        channels: int,
        *,
        decoded: DecodedImages | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seeds: bool = False,
        multi_label_classes: int | None = None,
        crop_min_area: float | None = None,
        fit: preprocess.Fit = preprocess.SQUASH,
        rows: list[int] | None = None,
    ):
        """``rows``: the images of ``samples`` this split holds (a fold of a pool), all by default."""
        self.samples, self.size, self.channels, self.fit = samples, size, channels, fit
        self.multi_label_classes = multi_label_classes
        self.seeds = seeds
        self.positions = False  # set by a distilling run: batches end with each image's row in ``samples``
        self.crop_min_area = crop_min_area if decoded is None and augment is not None else None
        self.pixels = decoded.pixels if decoded is not None else None
        self.augment = augment
        failed = set(decoded.failed) if decoded is not None else set()
        self.failed = failed
        self.indices = [i for i in (range(len(samples)) if rows is None else rows) if i not in failed]
        self.labels = torch.tensor([samples.labels[i] for i in self.indices], dtype=torch.int64)
        self.targets = self.labels  # what a batch carries
        if multi_label_classes is not None:
            self.targets = multi_hot([samples.label_sets[i] for i in self.indices], multi_label_classes)

    def __len__(self) -> int:
        return len(self.indices)

    def whole(self) -> ImageDataset:
        """The dataset of every readable image of ``samples`` (a fold's pool), unaugmented: what a
        cache computed once for all folds runs over; this dataset itself when it holds them all."""
        every = [i for i in range(len(self.samples)) if i not in self.failed]
        if every == self.indices:
            return self
        whole = copy.copy(self)
        whole.indices, whole.augment = every, None
        whole.labels = torch.tensor([self.samples.labels[i] for i in every], dtype=torch.int64)
        whole.targets = whole.labels
        if self.multi_label_classes is not None:
            whole.targets = multi_hot([self.samples.label_sets[i] for i in every], self.multi_label_classes)
        return whole

    @property
    def streaming(self) -> bool:
        """Decoded every epoch (no pixel cache): the frozen-feature cache does not apply."""
        return self.pixels is None

    @property
    def full_resolution(self) -> bool:
        """Decoded at full resolution for a random-resized-crop."""
        return self.crop_min_area is not None

    def _decode(self, i: int) -> torch.Tensor:
        if self.crop_min_area is not None:
            image = self.samples.read_full(
                i, self.channels, crop_to=self.size, min_area=self.crop_min_area, fit=self.fit
            )
            return torch.from_numpy(image).permute(2, 0, 1)
        return torch.from_numpy(self.samples.read(i, self.size, self.channels, self.fit)).permute(2, 0, 1)

    def _read(self, positions: list[int]) -> tuple[torch.Tensor | list[torch.Tensor], list[int]]:
        """The images at ``positions`` (a batch, or a list when decoded) and the positions kept."""
        if self.pixels is not None:
            rows = torch.tensor([self.indices[p] for p in positions])
            return self.pixels[rows], positions
        images, kept = [], []
        for p in positions:
            i = self.indices[p]
            try:
                images.append(self._decode(i))
                kept.append(p)
            except Exception as exc:
                warn(f"skipped unreadable image {self.samples.describe(i)} ({type(exc).__name__}: {exc})")
        return images, kept

    def any_readable(self) -> bool:
        """Whether some image of the split can be read: the cache kept one, or (decoded each epoch)
        one decodes, tried in order until one does."""
        for i in self.indices:
            if self.pixels is not None:
                return True
            try:
                self._decode(i)
                return True
            except Exception:  # PIL and the libraries raise many types for a broken image
                continue
        return False

    def __getitems__(self, pairs: list[tuple[int, int]]) -> tuple[torch.Tensor, ...]:
        positions = [p for p, _ in pairs]
        images, kept = self._read(positions)
        if self.augment is not None and len(kept):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(pairs[0][1])
                images = [self.augment(img) for img in images]
        if not len(kept):
            images = torch.empty((0, self.channels, *self.size), dtype=torch.uint8)
        elif isinstance(images, list):
            images = torch.stack(images)
        out = (images.contiguous(), self.targets[kept])
        if self.seeds:
            out += (torch.tensor(pairs[0][1] if pairs else 0),)
        if self.positions:  # each image's row in ``samples``, last (a teacher's cached answers are looked up by it)
            out += (torch.tensor([self.indices[p] for p in kept], dtype=torch.int64),)
        return out

    def __getitem__(self, position: int) -> tuple[torch.Tensor, Any]:
        images, labels, *_ = self.__getitems__([(position, 0)])
        return images[0], (labels[0] if labels.dim() > 1 else int(labels[0]))

    @property
    def multi_label(self) -> bool:
        return self.targets.dim() > 1

    def class_counts(self, num_classes: int) -> list[int]:
        """Images per class (multi-label: images that have the class)."""
        if self.multi_label:
            return self.targets.sum(0).long().tolist()
        return torch.bincount(self.labels, minlength=num_classes).tolist()


def multi_label_weights(targets: torch.Tensor) -> torch.Tensor | None:
    """Multi-label's balanced sampler: each image drawn in proportion to its rarest class's
    1 / count (images with none of the classes count as a class of their own)."""
    if not len(targets):
        return None
    counts = targets.sum(0).clamp(min=1)
    empty = targets.sum(1) == 0
    rarest = (targets / counts).max(dim=1).values
    return torch.where(empty, 1.0 / empty.sum().clamp(min=1), rarest).double()


def multi_hot(label_sets: list[list[int]], num_classes: int) -> torch.Tensor:
    """float32 [N, classes]: 1 where an image has the class."""
    out = torch.zeros((len(label_sets), num_classes), dtype=torch.float32)
    rows = [i for i, labels in enumerate(label_sets) for _ in labels]
    cols = [c for labels in label_sets for c in labels]
    if rows:
        out[torch.tensor(rows), torch.tensor(cols)] = 1.0
    return out


def _passthrough(batch: Any) -> Any:
    return batch


# torch's and torchdata's own warning for more workers than cores, a paragraph naming their
# internals, is said by choose_workers in one line instead
warnings.filterwarnings("ignore", message=r"This DataLoader will create \d+ worker processes in total")


def choose_workers(setting: Any, *, cached: bool, augmented: bool, cuda: bool) -> int:
    """Loader processes for ``data.workers: auto``.

    * cached, no augmentation: none, a slice of a tensor costs less than handing it over;
    * training on the CPU from the cache: the model's threads already use every core, and
      on 2 cores a worker doing augmentation made steps ~15% slower than augmenting
      in the main process (scripts/bench_train.py), so workers only where cores abound;
    * on CUDA, or decoding JPEGs every epoch (no cache): up to one per spare core.
    """
    cores = max(1, cpu_count() // distributed.local_world())  # the machine's processes share its cores
    if setting != "auto":
        if int(setting) > cores:
            warn(
                f"data.workers: {int(setting)} loader processes for {cores} CPU cores: they compete with "
                "training for the cores and may make it slower; data.workers: auto chooses for this machine"
            )
        return int(setting)
    if cached and not augmented:
        return 0
    if cuda:
        return min(8, cores)
    if cached:
        return 0 if cores <= 4 else min(4, cores // 4)
    return max(1, min(4, cores - 1)) if cores > 1 else 0


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    workers: int,
    balanced: bool = False,
    pin_memory: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> torch.utils.data.DataLoader:
    """Batches from :class:`EpochBatches`; ``shard`` is (rank, world size) in a DDP run."""
    targets = getattr(dataset, "targets", dataset.labels)  # multi-hot [N, classes] for multi-label
    sampler = EpochBatches(
        dataset.labels,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        balanced=balanced,
        shard=shard,
        weights=multi_label_weights(targets) if balanced and targets.dim() > 1 else None,
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=_passthrough,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        multiprocessing_context="fork" if workers > 0 and sys.platform.startswith("linux") else None,
    )


@dataclass(kw_only=True)
class Loaders:
    """Both splits as datasets (decoded once unless ``data.cache: none``) and loaders over them."""

    train_set: ImageDataset
    val_set: ImageDataset
    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    # data.augment on the training device, for training batches that carry their seed
    batch_augment: BatchAugment | None = None


def _cache_kind(cfg: Config, spec: DataSpec) -> str:
    """``data.cache`` for this run: ``auto`` chooses by the size of both splits' pixels
    (:func:`cnnzoo.data.cache.plan_cache`); in a DDP run a cache is one file that every process maps."""
    nbytes = (len(spec.train) + len(spec.val)) * spec.channels * spec.image_size[0] * spec.image_size[1]
    kind = plan_cache(cfg.data.cache, nbytes, cfg.data.cache_dir)
    if cfg.data.cache == "auto" and kind != "none":
        return "disk" if shared_cache_kind("auto", "data.cache") == "disk" else kind
    return kind


def _decoded(cfg: Config, spec: DataSpec, samples: Samples, kind: str) -> DecodedImages | None:
    """``samples`` decoded once into the cache, unless ``kind`` is none (in a DDP run local rank 0
    builds a cache on disk before the others read it)."""
    if kind == "none":
        return None
    with distributed.main_first(shared=kind != "ram"):
        decoded = decode_all(
            samples,
            spec.image_size,
            spec.channels,
            kind=kind,
            cache_dir=Path(cfg.data.cache_dir) if cfg.data.cache_dir else None,
            workers=cpu_count(),
            fit=spec.fit,
        )
    console.log(f"cache {samples.name}: {decoded.describe()}")
    return decoded


def _datasets(
    cfg: Config, spec: DataSpec, *, kind: str, augment, batch_augment: BatchAugment | None
) -> tuple[ImageDataset, ImageDataset]:
    """Both splits as datasets, decoded once into the cache unless ``kind`` is none. A fold's
    splits (``data.folds``) are rows of one pool, decoded once for every fold."""
    crop = cfg.data.augment.random_resized_crop
    pool = spec.fold_pool
    multi = len(spec.classes) if spec.multi_label else None
    if pool is not None:
        decoded = _decoded(cfg, spec, pool.samples, kind)
        parts = [(pool.samples, decoded, pool.train_rows), (pool.samples, decoded, pool.val_rows)]
    else:
        parts = [(split, _decoded(cfg, spec, split, kind), None) for split in (spec.train, spec.val)]
    datasets = []
    for (samples, decoded, rows), training in zip(parts, (True, False)):
        datasets.append(
            ImageDataset(
                samples,
                spec.image_size,
                spec.channels,
                decoded=decoded,
                augment=augment if training else None,
                seeds=batch_augment is not None and training,
                multi_label_classes=multi,
                crop_min_area=crop[0] if crop and training else None,
                fit=spec.fit,
                rows=rows,
            )
        )
    return datasets[0], datasets[1]


def build_loaders(cfg: Config, spec: DataSpec, *, augment, cuda: bool) -> Loaders:
    """Decode both splits once into the cache (unless ``data.cache: none``), then loaders over them.

    Cached images are augmented on the batch, on the device (``data.augment.where``), unless it
    says ``image``; ``augment`` is the per-image pipeline. In a DDP run the loaders shard every
    epoch between the processes.
    """

    kind = _cache_kind(cfg, spec)
    cached = kind != "none"
    on_batch = cached and cfg.data.augment.where != "image"
    batch_augment = BatchAugment.build(cfg.data.augment, spec.image_size) if on_batch else None
    if batch_augment is not None:
        augment = None  # the per-image pipeline is not needed
    train_set, val_set = _datasets(cfg, spec, kind=kind, augment=augment, batch_augment=batch_augment)
    for dataset, what in ((train_set, "training"), (val_set, "validation")):
        if not dataset.any_readable():  # an epoch of nothing would still write a best.pt of nothing
            raise DataError(
                f"{spec.root}: none of the {len(dataset.samples)} {what} images can be read (each is skipped as "
                f"unreadable); cnnzoo data check names them. Replace or remove those files"
            )
    workers = choose_workers(cfg.data.workers, cached=cached, augmented=augment is not None, cuda=cuda)
    shard = distributed.shard()
    train_loader = make_loader(
        train_set,
        cfg.train.batch_size,
        shuffle=True,
        seed=cfg.seed,
        workers=workers,
        balanced=cfg.data.sampler == "balanced",
        pin_memory=cuda,
        shard=shard,
    )
    val_loader = make_loader(
        val_set,
        cfg.train.batch_size * 2,
        shuffle=False,
        seed=cfg.seed,
        workers=0 if cached else workers,
        balanced=False,
        pin_memory=cuda,
        shard=shard,
    )
    per_process = f", {shard[1]} processes" if shard[1] > 1 else ""
    console.log(
        f"data: {len(train_set)} training and {len(val_set)} validation images, "
        f"{len(spec.classes)} classes, {spec.channels}x{spec.image_size[0]}x{spec.image_size[1]}"
        f"{'' if spec.resize == 'squash' else f' ({spec.resize})'}, "
        f"cache {'on' if cached else 'off (decoded each epoch)'}, "
        f"{workers} loader workers{per_process}"
        f"{', random-resized-crop from full resolution' if train_set.full_resolution else ''}"
        f"{', augmentation on the batch' if batch_augment is not None else ''}"
    )
    return Loaders(
        train_set=train_set, val_set=val_set, train=train_loader, val=val_loader, batch_augment=batch_augment
    )
