"""WebDataset shards as training data: streamed, scored (``evaluate --data``) and written from
any source (``cnnzoo data shards``); the files themselves are :mod:`cnnzoo.data.shard_files`'s.

Streaming (:class:`ShardStream`): images are decoded in the loader workers every epoch and never
cached, so memory stays flat however many there are. Training augments each image from its full
resolution when ``data.augment.random_resized_crop`` is on (the ImageNet recipe). Shards are split
over processes and loader workers (by shard when there are enough, else by sample), and an epoch
is a defined number of batches, the same on every process: ``N // (world * batch_size)``, each
worker reading its shards round and round until its share is taken, so DDP never waits on a
process that ran out of data. A sample that cannot be used (its image does not decode, its label
is not valid) or a shard that breaks off is skipped: the first few per shard and pass are named
in warnings, the rest counted. A pass of a worker in which no sample is usable ends the run with
one line naming its shards (it could never fill its batches), and an error raised in a loader
worker reaches the command as that one line, not as the worker's traceback.

Floor 5, like the rest of :mod:`cnnzoo.data`; training reaches it through
:func:`stream_loaders` (:mod:`cnnzoo.training.setup`), in place of :func:`cnnzoo.data.loaders.build_loaders`.
"""

from __future__ import annotations

import io
import itertools
import math
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..console import console, warn
from ..errors import DataError, UserError, short_reason
from ..runtime import distributed
from . import preprocess
from .batch_order import mix_seed
from .loaders import Loaders, choose_workers, multi_hot
from .resume_state import stateful_loader
from .shard_files import MemberError, class_of, class_set_of, image_of, iter_shard
from .sources.samples import DataSpec, ShardSamples
from .stream_skips import Skips

SHUFFLE_BUFFER = 256  # samples (their encoded bytes) each worker mixes before decoding
_BUFFER_NAME = re.compile(r" <_io\.BytesIO object at 0x[0-9a-f]+>")


# -------------------------------------------------------------------------------------- streaming


@dataclass(kw_only=True)
class StreamSettings:
    size: tuple[int, int]
    channels: int
    batch_size: int
    fit: preprocess.Fit = preprocess.SQUASH
    seed: int = 0
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    full_resolution: bool = False  # decode at full size for a random-resized-crop
    crop_min_area: float = 0.08  # the crop's smallest share of the image (how far a JPEG may be reduced)
    shard: tuple[int, int] = (0, 1)  # (rank, world)


class ShardStream(torch.utils.data.IterableDataset):
    """A split's shards as uint8 batches ``(images [B, C, H, W], labels [B])``, decoded in the
    workers; ``train`` streams a fixed number of full batches per process and epoch, shuffled,
    validation every sample once."""

    streaming = True

    def __init__(self, samples: ShardSamples, classes: list[str], settings: StreamSettings, *, train: bool):
        self.shards, self.counts = list(samples.shards), list(samples.shard_counts)
        self.classes, self.settings, self.train, self.epoch = classes, settings, train, 0
        self.index = {name: i for i, name in enumerate(classes)}
        self.multi_label = bool(getattr(samples, "multi_label", False))  # batches carry multi-hot targets
        known = getattr(samples, "class_counts", None)
        self.counts_by_class = (
            np.asarray(known, dtype=np.int64)
            if known is not None
            else np.bincount(np.asarray(samples.labels, dtype=np.int64), minlength=len(classes))
        )
        self.total = len(samples)
        self.skips = Skips()
        # torchdata's Stateful protocol (state_dict / load_state_dict): how far this worker's pass got
        self.progress: dict[str, int] = {"epoch": 0, "samples": 0, "batches": 0}
        self.resume_at: dict[str, int] | None = None

    def state_dict(self) -> dict[str, int]:
        """Where this worker's training pass stands: the samples it drew from its shuffled share
        and the batches it made of them (StatefulDataLoader reads it after each batch)."""
        return dict(self.progress)

    def load_state_dict(self, state: dict[str, int]) -> None:
        """The next training pass of the same epoch goes on from ``state`` (:meth:`state_dict`'s)."""
        keys = ("epoch", "samples", "batches")
        if not isinstance(state, dict) or not all(
            isinstance(state.get(k), int) and not isinstance(state.get(k), bool) and state[k] >= 0 for k in keys
        ):
            raise DataError(f"a stream's saved state is not valid: {str(state)[:200]}; start a new run")
        self.resume_at = {key: state[key] for key in keys}

    def __len__(self) -> int:
        return self.total

    def class_counts(self, num_classes: int) -> list[int]:
        return np.pad(self.counts_by_class, (0, max(0, num_classes - len(self.counts_by_class)))).tolist()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def steps(self) -> int:
        """Training batches per process and epoch: the same on every process."""
        world = self.settings.shard[1]
        return max(1, self.total // (world * self.settings.batch_size))

    def batches(self, workers: int) -> int:
        """Batches one process reads in an epoch with ``workers`` loader workers."""
        if self.train:
            return self.steps()
        rank, world = self.settings.shard
        slots = world * max(1, workers)
        per_slot = [self._slot_size(rank * max(1, workers) + w, slots) for w in range(max(1, workers))]
        return sum(math.ceil(n / (self.settings.batch_size)) for n in per_slot)

    def _slot_size(self, slot: int, slots: int) -> int:
        if len(self.shards) >= slots:
            return sum(self.counts[slot::slots])
        return len(range(slot, self.total, slots))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = self.settings.shard
        slot, slots = rank * workers + worker, world * workers
        self.skips = Skips()  # this pass's, in this worker
        if not self.train:
            yield from self._batches(self._samples(slot, slots, 0), slot, quota=None)
            if not self.skips.used and (self.skips.tried or self.skips.damaged):
                raise DataError(self.skips.unusable(self._slot_shards(slot, slots)))
            self.skips.summary()
            return
        steps = self.steps()
        quota = steps // workers + (worker < steps % workers)
        resume, self.resume_at = self.resume_at, None
        start = (resume["samples"], resume["batches"]) if resume and resume["epoch"] == self.epoch else (0, 0)
        if quota > start[1]:
            samples = self._shuffled(self._cycle(slot, slots), slot)
            yield from self._batches(samples, slot, quota=quota, start=start)
            self.skips.summary()

    def _slot_shards(self, slot: int, slots: int) -> list[str]:
        return self.shards[slot::slots] if len(self.shards) >= slots else self.shards

    def _samples(self, slot: int, slots: int, round_: int) -> Iterator[dict[str, Any]]:
        """One pass over this slot's share: whole shards when there are enough, else every slots-th sample."""
        order = list(self.shards)
        if self.train:
            order = [
                order[i]
                for i in np.random.default_rng([self.settings.seed, self.epoch, round_]).permutation(len(order))
            ]
        damaged = self.skips.damage
        if len(order) >= slots:
            for path in order[slot::slots]:
                yield from self._read_shard(path, on_damage=damaged)
            return
        for j, sample in enumerate(s for path in order for s in self._read_shard(path, on_damage=damaged)):
            if j % slots == slot:
                yield sample

    def _read_shard(self, path: str, *, on_damage: Callable[[str, str], None]) -> Iterator[dict[str, Any]]:
        """One shard's samples (a subclass reads another kind of shard: :mod:`cnnzoo.data.hf_stream`)."""
        return iter_shard(path, on_damage=on_damage)

    def _cycle(self, slot: int, slots: int) -> Iterator[dict[str, Any]]:
        """This slot's share round and round, so that it always has its quota of batches."""
        round_, first_round = 0, 0
        while True:
            produced = 0
            for sample in self._samples(slot, slots, round_):
                produced += 1
                yield sample
            first_round = first_round or produced
            # the shuffle buffer holds samples back: once a whole round's worth was tried and none
            # was usable, none ever will be, and the quota could never be filled
            if not produced or (not self.skips.used and self.skips.tried >= first_round):
                raise DataError(self.skips.unusable(self._slot_shards(slot, slots)))
            self.skips.summary()
            round_ += 1

    def _shuffled(self, samples: Iterator[dict[str, Any]], slot: int) -> Iterator[dict[str, Any]]:
        rng = np.random.default_rng([self.settings.seed, self.epoch, slot, 7])
        buffer: list[dict[str, Any]] = []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= SHUFFLE_BUFFER:
                k = int(rng.integers(len(buffer)))
                buffer[k], buffer[-1] = buffer[-1], buffer[k]
                yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer

    def _batches(
        self, samples: Iterator[dict[str, Any]], slot: int, *, quota: int | None, start: tuple[int, int] = (0, 0)
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of usable samples; ``start``: (samples, batches) of this pass a resumed run used
        already (those samples are read again, to reach the same place in the shuffle, not decoded)."""
        s = self.settings
        images: list[torch.Tensor] = []
        labels: list[Any] = []
        drawn, made = start
        if drawn:
            samples = itertools.islice(samples, drawn, None)
        self.progress = {"epoch": self.epoch, "samples": drawn, "batches": made}
        draws = _BatchDraws(mix_seed(s.seed, self.epoch, slot, made))
        for sample in samples:
            drawn += 1
            with draws.active():
                decoded = self._decode(sample)
            if decoded is None:
                continue
            images.append(decoded[0])
            labels.append(decoded[1])
            if len(images) == s.batch_size:
                self.progress = {"epoch": self.epoch, "samples": drawn, "batches": made + 1}
                yield torch.stack(images), self._targets(labels)
                images, labels, made = [], [], made + 1
                if quota is not None and made >= quota:
                    return
                draws = _BatchDraws(mix_seed(s.seed, self.epoch, slot, made))
        if images and quota is None:
            yield torch.stack(images), self._targets(labels)

    def _targets(self, labels: list[Any]) -> torch.Tensor:
        """A batch's class numbers (int64 [B]), or multi-hot float32 [B, classes] of its label sets."""
        if self.multi_label:
            return multi_hot(labels, len(self.classes))
        return torch.tensor(labels, dtype=torch.int64)

    def _label(self, sample: dict[str, Any]) -> Any:
        """A sample's class number, or its label set's numbers (multi-label); MemberError when not valid."""
        return class_set_of(sample, self.index) if self.multi_label else class_of(sample, self.index)

    def _decode(self, sample: dict[str, Any]) -> tuple[torch.Tensor, Any] | None:
        """A sample's image (augmented when training) and label; None, counted in :attr:`skips`,
        when it cannot be used."""
        s = self.settings
        ext = "?"
        try:
            label = self._label(sample)
            ext, data = image_of(sample)
            full = s.crop_min_area if s.full_resolution and self.train else None
            image = _decode_image(data, s, crop_min_area=full)
        except Exception as exc:  # a corrupt member must never stop the run
            reason = str(exc) if isinstance(exc, MemberError) else f"{type(exc).__name__}: {short_reason(exc, 120)}"
            reason = _BUFFER_NAME.sub("", reason)  # PIL names the in-memory file it could not identify
            self.skips.skip(str(sample.get("__url__")), f"{sample.get('__key__')}.{ext} ({reason})")
            return None
        self.skips.used += 1
        self.skips.flush()
        if self.train and s.augment is not None:
            image = s.augment(image)
        return image, label


class _BatchDraws:
    """One batch's augmentation draws: torch's global generator (the transforms draw from it) seeded
    per batch, and swapped in only while an image is augmented. A stream read in the training
    process (no loader workers) then leaves the training's own draws (dropout) alone, so they
    are the same however the epoch's batches were reached (a run resumed mid-epoch)."""

    def __init__(self, seed: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.state = torch.get_rng_state()

    @contextmanager
    def active(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.state)
            yield
            self.state = torch.get_rng_state()


def _decode_image(data: bytes, s: StreamSettings, *, crop_min_area: float | None) -> torch.Tensor:
    """uint8 CxHxW: brought to ``s.size`` as ``s.fit`` says, or (with ``crop_min_area``) at the
    resolution a random crop needs."""
    if crop_min_area is not None:
        image = preprocess.load_full_resolution(
            io.BytesIO(data), s.channels, crop_to=s.size, min_area=crop_min_area, fit=s.fit
        )
        return torch.from_numpy(image).permute(2, 0, 1)
    img = preprocess.open_image(io.BytesIO(data), s.size, s.channels)
    return torch.from_numpy(preprocess.load_image(img, s.size, s.channels, s.fit)).permute(2, 0, 1)


class StreamLoader:
    """What the training loop asks of a loader, over a :class:`ShardStream` (or another stream with
    ``batches(workers)``, ``set_epoch`` and the Stateful protocol): ``len``, ``iter`` and
    ``batch_sampler.set_epoch``; and ``state_dict`` / ``load_state_dict``, where a run stands inside
    an epoch (:mod:`cnnzoo.data.resume_state`). Workers start again each epoch, so they see its number."""

    def __init__(self, stream: Any, *, workers: int, pin_memory: bool):
        self.dataset, self.batch_sampler, self.workers, self.pin_memory = stream, stream, workers, pin_memory
        self.current: Any = None  # this epoch's StatefulDataLoader
        self.pending: dict[str, Any] | None = None  # the state the next pass resumes from

    def state_dict(self) -> dict[str, Any]:
        """Where this epoch's pass stands: every worker's stream state, as of the last batch handed out."""
        return self.current.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = state

    def __len__(self) -> int:
        return self.dataset.batches(self.workers)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            yield from self._loader()
        except UserError as exc:  # raised in a worker: torch adds the worker's traceback to the message
            raise type(exc)(worker_message(exc)) from None

    def _loader(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = stateful_loader(
            self.dataset,
            batch_size=None,
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            prefetch_factor=4 if self.workers > 0 else None,
            multiprocessing_context="fork" if self.workers > 0 and sys.platform.startswith("linux") else None,
        )
        if self.pending is not None:
            loader.load_state_dict(self.pending)
            self.pending = None
        self.current = loader
        return iter(loader)


def worker_message(exc: Exception) -> str:
    """An error's own message, without what torch wraps around one raised in a loader worker
    ("Caught DataError in DataLoader worker process 0. Original Traceback ...": its last line
    is ``module.Type: message``)."""
    text = str(exc)
    if not text.startswith("Caught "):
        return text
    last = text.rstrip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def stream_settings(cfg: Config, spec: DataSpec, *, augment: Callable | None) -> StreamSettings:
    """The training stream's settings, from the config's data and batch size (validation's: twice
    the batch, no augmentation)."""
    return StreamSettings(
        size=spec.image_size,
        channels=spec.channels,
        batch_size=cfg.train.batch_size,
        fit=spec.fit,
        seed=cfg.seed,
        augment=augment,
        full_resolution=bool(cfg.data.augment.random_resized_crop),
        crop_min_area=(cfg.data.augment.random_resized_crop or [0.08])[0],
        shard=distributed.shard(),
    )


def stream_loaders(cfg: Config, spec: DataSpec, *, augment: Callable | None, cuda: bool) -> Loaders:
    """Both splits streamed from their shards (:class:`cnnzoo.data.loaders.Loaders`); no cache."""
    if cfg.data.cache in ("ram", "disk"):
        warn(f"data.cache: {cfg.data.cache} does not apply to WebDataset shards: they are streamed")
    workers = choose_workers(cfg.data.workers, cached=False, augmented=True, cuda=cuda)
    batch = cfg.train.batch_size
    settings = stream_settings(cfg, spec, augment=augment)
    train_set, val_set = stream_splits(ShardStream, spec, settings)
    world = settings.shard[1]
    console.log(
        f"data: {len(train_set)} training and {len(val_set)} validation images in "
        f"{len(train_set.shards)} + {len(val_set.shards)} WebDataset shards, {len(spec.classes)} classes, "
        f"{spec.channels}x{spec.image_size[0]}x{spec.image_size[1]}; streamed (data.cache: {cfg.data.cache} -> none): "
        f"decoded in {workers} loader workers each epoch, {train_set.steps()} steps of {batch} per epoch"
        + (f" on each of {world} processes" if world > 1 else "")
    )
    return stream_pair(train_set, val_set, workers=workers, cuda=cuda)


def stream_splits(kind: type[ShardStream], spec: DataSpec, settings: StreamSettings) -> tuple[Any, Any]:
    """The training split's stream of ``kind`` (ShardStream or a subclass) and the validation
    split's: twice the batch, no augmentation."""
    val_settings = StreamSettings(**{**settings.__dict__, "batch_size": settings.batch_size * 2, "augment": None})
    return kind(spec.train, spec.classes, settings, train=True), kind(spec.val, spec.classes, val_settings, train=False)


def stream_pair(train_set: Any, val_set: Any, *, workers: int, cuda: bool) -> Loaders:
    """Both streams behind the loaders training asks for (:class:`StreamLoader`)."""
    return Loaders(
        train_set=train_set,
        val_set=val_set,
        train=StreamLoader(train_set, workers=workers, pin_memory=cuda),
        val=StreamLoader(val_set, workers=workers, pin_memory=cuda),
    )


def eval_loader(
    samples: ShardSamples,
    classes: list[str],
    *,
    size: tuple[int, int],
    channels: int,
    batch_size: int,
    fit: preprocess.Fit = preprocess.SQUASH,
) -> Any:
    """Every sample of a split's shards once, for ``evaluate``."""
    settings = StreamSettings(size=size, channels=channels, batch_size=batch_size, fit=fit)
    return StreamLoader(ShardStream(samples, classes, settings, train=False), workers=0, pin_memory=False)
