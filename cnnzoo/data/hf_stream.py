"""A local Hugging Face dataset streamed (``data.source: hf`` with ``data.stream``): its images are
decoded batch by batch in the loader workers every epoch, never all into the cache first.

The split's rows (the memory-mapped Arrow table :mod:`cnnzoo.data.hf` opened, images undecoded) are
read as K shards of contiguous rows (the library's ``Dataset.shard(K, k, contiguous=True)``, read
in Arrow batches: the shards ``to_iterable_dataset(num_shards=K)`` would make, without its own
splitting over loader workers, which would take a second share of a worker's shards away), and
everything else is the WebDataset stream's
(:class:`~cnnzoo.data.shards.ShardStream`): the shards dealt over processes and loader workers, an
epoch of the same number of full batches on every process, a shuffle buffer, the per-image
augmentation, a sample that cannot be used skipped and named. Labels (and label sets) come from the
split's own lists, in row order. The stream's ``state_dict`` / ``load_state_dict`` (torchdata's
Stateful protocol, plain ints) are the shards' too, so a run resumes mid-epoch at the next unseen batch.

Floor 5, like the rest of :mod:`cnnzoo.data`; imports config, console, errors, cache, hf, loaders,
shards and the sources' samples.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..config import Config
from ..console import console
from ..errors import DataError
from . import hf
from .cache import plan_cache
from .loaders import Loaders, choose_workers
from .shard_files import SKIPPED
from .shards import ShardStream, StreamSettings, stream_pair, stream_settings, stream_splits
from .sources.samples import DataSpec, Samples, ShardSamples

MAX_SHARDS = 64  # row ranges per split: enough to deal whole ranges to many readers, few enough to shuffle well
ROWS_READ = 64  # rows taken from the Arrow table at a time
_MAGIC = ((b"\x89PNG", "png"), (b"\xff\xd8", "jpg"), (b"RIFF", "webp"), (b"GIF8", "gif"), (b"BM", "bmp"))


def streams(cfg: Config, spec: DataSpec) -> bool:
    """Whether a Hugging Face dataset is streamed: ``data.stream`` true, or ``auto`` and the cache
    would be ``none`` (``data.cache: none``, or ``auto`` finding room for it neither in memory nor on disk)."""
    setting = cfg.data.stream
    if setting is not True and setting is not False:
        nbytes = (len(spec.train) + len(spec.val)) * spec.channels * spec.image_size[0] * spec.image_size[1]
        setting = plan_cache(cfg.data.cache, nbytes, cfg.data.cache_dir, say=False) == "none"
        if setting:
            console.log(
                f"data.stream: auto -> streamed: the decoded cache ({nbytes / 2**30:,.2f} GB) does not fit "
                f"(data.cache: {cfg.data.cache})"
            )
    return bool(setting)


class HFStream(ShardStream):
    """A split of a local Hugging Face dataset as uint8 batches, its row ranges read as shards."""

    def __init__(self, samples: Samples, classes: list[str], settings: StreamSettings, *, train: bool):
        images = samples.array  # type: ignore[attr-defined]
        if not isinstance(images, hf.DatasetImages):
            raise DataError(f"{samples.describe(0)}: only a Hugging Face dataset's split is streamed")
        dataset, self.folder, self.origin = images.dataset, images.folder, samples.origin  # type: ignore[attr-defined]
        k = max(1, min(MAX_SHARDS, len(dataset)))
        self.rows = dataset.select_columns([images.column])
        self.column, self.k = images.column, k
        counts = [len(dataset.shard(num_shards=k, index=i, contiguous=True)) for i in range(k)]
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
        self.targets = samples.label_sets if samples.label_sets is not None else samples.labels
        multi = samples.label_sets is not None
        class_counts = np.zeros(len(classes), dtype=np.int64)
        for target in self.targets:
            class_counts[target if multi else [target]] += 1
        listed = ShardSamples(
            name=samples.name,
            labels=[-1] * len(samples),
            shards=[f"{self.origin} rows {s}-{s + n - 1}" for s, n in zip(self.starts, counts)],
            shard_counts=counts,
            class_counts=class_counts.tolist(),
            multi_label=multi,
        )
        super().__init__(listed, classes, settings, train=train)
        self.shard_of = {name: i for i, name in enumerate(self.shards)}

    def _read_shard(self, path: str, *, on_damage: Callable[[str, str], None]) -> Iterator[dict[str, Any]]:
        """Shard ``path``'s rows, each as a sample: its image bytes and its row's target."""
        index = self.shard_of[path]
        part = self.rows.shard(num_shards=self.k, index=index, contiguous=True)
        values = (value for rows in part.iter(batch_size=ROWS_READ) for value in rows[self.column])
        for j, value in enumerate(values):
            position = self.starts[index] + j
            sample: dict[str, Any] = {"__key__": f"row {position}", "__url__": path, "__target__": position}
            try:
                data = _image_bytes(value, self.folder)
                sample[_kind(data)] = data
            except Exception as exc:  # a row without an image, or a file that cannot be read
                sample[SKIPPED] = f"{type(exc).__name__}: {exc}"
            yield sample

    def _label(self, sample: dict[str, Any]) -> Any:
        return self.targets[sample["__target__"]]


def _image_bytes(value: Any, folder: Any) -> bytes:
    """A row's image as stored: its bytes, or its local file's (never a URL, as :mod:`cnnzoo.data.hf` reads rows)."""
    stored = value if isinstance(value, dict) else {}
    if stored.get("bytes") is not None:
        return bytes(stored["bytes"])
    path = stored.get("path")
    if isinstance(path, str) and path and "://" not in path and "::" not in path:
        with open(path if os.path.isabs(path) else folder / path, "rb") as f:
            return f.read()
    raise ValueError(f"no image in the row (no bytes, and the path {path!r} is not a local file)")


def _kind(data: bytes) -> str:
    """The image member's name for messages (the decoder reads the bytes whatever it is called)."""
    return next((name for magic, name in _MAGIC if data.startswith(magic)), "jpg")


def stream_loaders(cfg: Config, spec: DataSpec, *, augment: Callable | None, cuda: bool) -> Loaders:
    """Both splits of a Hugging Face dataset streamed (:class:`cnnzoo.data.loaders.Loaders`); no cache."""
    workers = choose_workers(cfg.data.workers, cached=False, augmented=True, cuda=cuda)
    settings = stream_settings(cfg, spec, augment=augment)
    train_set, val_set = stream_splits(HFStream, spec, settings)
    world = settings.shard[1]
    console.log(
        f"data: {len(train_set)} training and {len(val_set)} validation images of {spec.root}, "
        f"{len(spec.classes)} classes, {spec.channels}x{spec.image_size[0]}x{spec.image_size[1]}; streamed "
        f"(data.stream): decoded in {workers} loader workers each epoch, {train_set.steps()} steps of "
        f"{settings.batch_size} per epoch" + (f" on each of {world} processes" if world > 1 else "")
    )
    return stream_pair(train_set, val_set, workers=workers, cuda=cuda)
