"""Samples and DataSpec: one split's images and labels, and what a ``data`` section resolves to.

Imports preprocess (torch-free); NumPy.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import DataError
from .. import preprocess


@dataclass(kw_only=True)
class Samples:
    """One split: where each image comes from (file paths or an in-memory array) and its label."""

    name: str
    labels: list[int]
    paths: list[str] | None = None
    array: np.ndarray | None = None  # uint8 [N, H, W] or [N, H, W, C] (torchvision sets)
    origin: str = ""  # names an array source in messages and cache keys
    label_sets: list[list[int]] | None = None  # a manifest's labels per image (several for multi-label)
    shards: list[str] | None = None  # WebDataset shards (streamed; ``labels`` then only counts the classes)
    shard_counts: list[int] | None = None  # samples per shard
    _fingerprint: tuple[Any, str] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, i: int) -> str:
        if self.shards is not None:
            return f"{self.name} sample {i} of {len(self.shards)} shards"
        return self.paths[i] if self.paths is not None else f"{self.origin}[{i}]"

    def read(self, i: int, size: tuple[int, int], channels: int) -> np.ndarray:
        source = self.paths[i] if self.paths is not None else self.array[i]  # type: ignore[index]
        return preprocess.load_image(source, size, channels)

    def read_full(self, i: int, channels: int, *, crop_to: tuple[int, int], min_area: float) -> np.ndarray:
        """Image ``i`` at the resolution a random-resized-crop needs (:func:`.preprocess.load_full_resolution`)."""
        source = self.paths[i] if self.paths is not None else self.array[i]  # type: ignore[index]
        return preprocess.load_full_resolution(source, channels, crop_to=crop_to, min_area=min_area)

    def subset(self, keep: list[int]) -> Samples:
        if self.shards is not None:  # a stream's samples have no positions to pick
            raise DataError(f"{self.name}: a split of WebDataset shards cannot be subset; split the shards instead")
        return Samples(
            name=self.name,
            labels=[self.labels[i] for i in keep],
            paths=[self.paths[i] for i in keep] if self.paths is not None else None,
            array=self.array[keep] if self.array is not None else None,
            origin=self.origin,
            label_sets=[self.label_sets[i] for i in keep] if self.label_sets is not None else None,
        )

    def fingerprint(self) -> str:
        """Changes when any image's path, label or content changes: the bytes are hashed, since a
        size and modification time can stay the same over a change (a copy that keeps times, an
        edit within the clock's step). Reading the files costs ~0.15 s for 3,000 JPEGs (90 MB)
        from the page cache, against seconds to decode them. Kept while no file's status changes
        (any write changes a file's ctime, which no tool sets back), so that the image cache and
        the feature cache of one run hash the files once."""
        status = None
        if self.paths is not None:
            status = [(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for st in map(os.stat, self.paths)]
        if self._fingerprint is not None and self._fingerprint[0] == status:
            return self._fingerprint[1]
        h = hashlib.sha1()
        if self.shards is not None:  # names, sizes and times: hashing terabytes of shards is not on
            for path in self.shards:
                st = os.stat(path)
                h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
            return h.hexdigest()
        if self.paths is not None:
            for path, label in zip(self.paths, self.labels):
                h.update(f"{path}\0{label}\0".encode())
                with open(path, "rb") as f:
                    h.update(hashlib.sha1(f.read()).digest())
        elif hasattr(self.array, "fingerprint"):  # a Hugging Face dataset's images
            h.update(f"{self.origin}\0{self.array.fingerprint()}\0".encode())
            h.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        else:
            h.update(self.origin.encode())
            h.update(np.ascontiguousarray(self.array).tobytes())
            h.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        self._fingerprint = (status, h.hexdigest())
        return self._fingerprint[1]


@dataclass(kw_only=True)
class DataSpec:
    """What a config's ``data`` section resolves to."""

    classes: list[str]
    train: Samples
    val: Samples
    test: Samples | None
    channels: int
    image_size: tuple[int, int]  # (H, W)
    mean: list[float]
    std: list[float]
    root: str | None = None
    skipped_files: int = 0
    multi_label: bool = False  # a manifest with several labels in a row
    one_hot: bool = False  # a manifest with one 0/1 column per class
    missing: list[str] = field(default_factory=list)  # manifest rows whose image is absent (missing_ok)
    source: str = "folder"  # the registry name of the source read (which builds the loaders)
    saved_root: str | None = None  # data.root as the saved config records it (resolved where it was a path)

    def meta(self) -> dict[str, Any]:
        """Plain data a checkpoint carries so that a model can predict on its own."""
        return {
            "classes": list(self.classes),
            "channels": self.channels,
            "image_size": list(self.image_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": "bilinear",
            "data_root": self.root,
        }


def stratified_split(samples: Samples, fraction: float, seed: int) -> tuple[Samples, Samples]:
    """Hold out ``fraction`` of every class (at least one image where a class has two)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(samples.labels)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label in sorted(set(samples.labels)):
        idx = np.flatnonzero(labels == label)
        idx = idx[rng.permutation(len(idx))]
        n_val = min(len(idx) - 1, max(1, round(len(idx) * fraction))) if len(idx) > 1 else 0
        val_idx.extend(idx[:n_val].tolist())
        train_idx.extend(idx[n_val:].tolist())
    train, val = samples.subset(sorted(train_idx)), samples.subset(sorted(val_idx))
    train.name, val.name = "train", "validation"
    return train, val
