"""Samples and DataSpec: one split's images and labels, and what a ``data`` section resolves to.

One :class:`Samples` kind per place images live: :class:`FileSamples` (image files),
:class:`UrlSamples` (a remote manifest's images, fetched), :class:`ArraySamples` (an in-memory
array, or a Hugging Face dataset's images) and
:class:`ShardSamples` (WebDataset shards, streamed). Each says how its images are named, read,
subset, fingerprinted and encoded, so that callers need not ask which kind they hold.

Imports preprocess and remote_images (torch-free); NumPy, PIL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ...errors import DataError
from ...files import is_url
from .. import preprocess, remote_images

# an image's format (PIL's name) as the member extension the shard readers know (shard_files.IMAGE_KEYS)
_FORMAT_KEYS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif", "GIF": "gif"}


@dataclass(kw_only=True)
class Samples:
    """One split's labels, and (in each kind) where its images come from."""

    name: str
    labels: list[int]
    label_sets: list[list[int]] | None = None  # a manifest's labels per image (several for multi-label)
    _fingerprint: tuple[Any, str] | None = field(default=None, repr=False, compare=False)

    streamed = False  # read in order by the loader workers (shards), not by position

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, i: int) -> str:
        raise NotImplementedError

    def item(self, i: int) -> Any:
        """Image ``i`` as :func:`.preprocess.load_image` takes it (a path, an array or a PIL image)."""
        raise NotImplementedError

    def read(self, i: int, size: tuple[int, int], channels: int, fit: preprocess.Fit = preprocess.SQUASH) -> np.ndarray:
        return preprocess.load_image(self.item(i), size, channels, fit)

    def read_full(
        self,
        i: int,
        channels: int,
        *,
        crop_to: tuple[int, int],
        min_area: float,
        fit: preprocess.Fit = preprocess.SQUASH,
    ) -> np.ndarray:
        """Image ``i`` at the resolution a random-resized-crop needs (:func:`.preprocess.load_full_resolution`)."""
        return preprocess.load_full_resolution(self.item(i), channels, crop_to=crop_to, min_area=min_area, fit=fit)

    def files(self) -> list[str]:
        """The image files read (none for images held in memory or in shards)."""
        return []

    def subset(self, keep: list[int]) -> Samples:
        return dataclasses.replace(
            self,
            labels=[self.labels[i] for i in keep],
            label_sets=[self.label_sets[i] for i in keep] if self.label_sets is not None else None,
            _fingerprint=None,
            **self._picked(keep),
        )

    def _picked(self, keep: list[int]) -> dict[str, Any]:
        """The kind's own fields for the images at ``keep``."""
        raise NotImplementedError

    def joined(self, other: Samples, name: str) -> Samples:
        """This split's images followed by ``other``'s (same kind): the pool k-fold splits."""
        sets = None if self.label_sets is None or other.label_sets is None else self.label_sets + other.label_sets
        return dataclasses.replace(
            self,
            name=name,
            labels=self.labels + other.labels,
            label_sets=sets,
            _fingerprint=None,
            **self._joined(other),
        )

    def _joined(self, other: Samples) -> dict[str, Any]:
        """The kind's own fields for this split's images followed by ``other``'s."""
        raise DataError(
            f"data.folds: the {self.name} and {other.name} splits of this source cannot be pooled into folds"
        )

    def fingerprint(self) -> str:
        """Changes when any image's name, label or content changes (see each kind's ``_hash``); kept
        while no file's status changes, so that the image cache and the feature cache of one run
        hash the images once."""
        status = self._status()
        if self._fingerprint is not None and self._fingerprint[0] == status:
            return self._fingerprint[1]
        self._fingerprint = (status, self._hash().hexdigest())
        return self._fingerprint[1]

    def _status(self) -> Any:
        return None

    def _hash(self) -> Any:
        raise NotImplementedError

    def encoded(self, i: int) -> tuple[str, bytes] | None:
        """Image ``i``'s bytes as a shard stores them, under the member extension of their format;
        None for a file that cannot be read as an image."""
        raise NotImplementedError


@dataclass(kw_only=True)
class FileSamples(Samples):
    """Images in files (a folder's or a manifest's)."""

    paths: list[str]

    def describe(self, i: int) -> str:
        return self.paths[i]

    def item(self, i: int) -> str:
        return self.paths[i]

    def files(self) -> list[str]:
        return self.paths

    def _picked(self, keep: list[int]) -> dict[str, Any]:
        return {"paths": [self.paths[i] for i in keep]}

    def _open(self, i: int) -> Any:
        return open(self.paths[i], "rb")

    def _joined(self, other: Samples) -> dict[str, Any]:
        if not isinstance(other, FileSamples):
            return super()._joined(other)
        return {"paths": self.paths + other.paths}

    def _status(self) -> Any:
        # any write changes a file's ctime, which no tool sets back
        return [(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for st in map(os.stat, self.paths)]

    def _hash(self) -> Any:
        """The bytes are hashed, since a size and modification time can stay the same over a change
        (a copy that keeps times, an edit within the clock's step). Reading the files costs ~0.15 s
        for 3,000 JPEGs (90 MB) from the page cache, against seconds to decode them."""
        h = hashlib.sha1()
        for path, label in zip(self.paths, self.labels):
            h.update(f"{path}\0{label}\0".encode())
            with open(path, "rb") as f:
                h.update(hashlib.sha1(f.read()).digest())
        return h

    def encoded(self, i: int) -> tuple[str, bytes] | None:
        """The file as it is (no re-encoding), under the extension of its format as read from the
        file (not its name, which may have none); a format the readers do not name (PPM) as PNG."""
        try:
            with self._open(i) as f, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a huge image's DecompressionBombWarning: copied, not decoded here
                image = Image.open(f)  # the header only: what the file is
                key = _FORMAT_KEYS.get(image.format or "")
                if key is not None:
                    f.seek(0)
                    return key, f.read()
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                return "png", buffer.getvalue()
        except Exception:  # PIL raises several types for a file that is not an image it can read; OSError: unreadable
            return None


@dataclass(kw_only=True)
class UrlSamples(FileSamples):
    """Images at URLs (a remote manifest's rows), fetched by whoever reads them (the loader
    workers), through ``cache`` when there is one (:mod:`cnnzoo.data.remote_images`)."""

    cache: Any = None  # a remote_images.ImageCache, or None

    def item(self, i: int) -> io.BytesIO:
        return io.BytesIO(remote_images.fetch(self.paths[i], self.cache))

    def _open(self, i: int) -> Any:
        return self.item(i)

    def _joined(self, other: Samples) -> dict[str, Any]:
        return {"paths": self.paths + other.paths} if isinstance(other, UrlSamples) else super()._joined(other)

    def _status(self) -> Any:
        return None

    def _hash(self) -> Any:
        """The URLs and labels: an object is not fetched to be fingerprinted (see docs/remote-data.md)."""
        h = hashlib.sha1()
        for url, label in zip(self.paths, self.labels):
            h.update(f"{url}\0{label}\0".encode())
        return h


@dataclass(kw_only=True)
class ArraySamples(Samples):
    """Images in memory: a uint8 array [N, H, W] or [N, H, W, C] (torchvision sets), or a Hugging
    Face dataset's image column (PIL images, decoded on access)."""

    array: Any
    origin: str  # names the source in messages and cache keys

    def describe(self, i: int) -> str:
        return f"{self.origin}[{i}]"

    def item(self, i: int) -> Any:
        return self.array[i]

    @property
    def decoded(self) -> bool:
        """Whether the images are a NumPy array already (not a dataset that decodes each on access)."""
        return isinstance(self.array, np.ndarray)

    def _picked(self, keep: list[int]) -> dict[str, Any]:
        return {"array": self.array[keep]}

    def _joined(self, other: Samples) -> dict[str, Any]:
        if not (self.decoded and isinstance(other, ArraySamples) and other.decoded):
            raise DataError(
                f"data.folds: {self.origin}'s images are decoded on access (a Hugging Face dataset), so its splits "
                f"cannot be pooled into folds; export it as image files (a folder or a manifest) first"
            )
        return {"array": np.concatenate([self.array, other.array]), "origin": f"{self.origin}+{other.origin}"}

    def encoded(self, i: int) -> tuple[str, bytes] | None:
        """The image as PNG."""
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(self.array[i])).save(buffer, format="PNG")
        return "png", buffer.getvalue()

    def _hash(self) -> Any:
        h = hashlib.sha1()
        if hasattr(self.array, "fingerprint"):  # a Hugging Face dataset's images
            h.update(f"{self.origin}\0{self.array.fingerprint()}\0".encode())
        else:
            h.update(self.origin.encode())
            h.update(np.ascontiguousarray(self.array).tobytes())
        h.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        return h


@dataclass(kw_only=True)
class ShardSamples(Samples):
    """WebDataset shards, streamed (``labels`` then only counts the classes; of a multi-label set
    they are -1, one per sample, and ``class_counts`` counts the samples that have each class)."""

    shards: list[str]
    shard_counts: list[int]  # samples per shard
    class_counts: list[int] | None = None  # a multi-label set's samples per class
    multi_label: bool = False  # the samples carry label sets (cnnzoo.data.shard_labels)

    streamed = True

    def describe(self, i: int) -> str:
        return f"{self.name} sample {i} of {len(self.shards)} shards"

    def item(self, i: int) -> Any:
        raise DataError(f"{self.name}: a split of WebDataset shards is streamed; its samples have no positions")

    def subset(self, keep: list[int]) -> Samples:
        raise DataError(f"{self.name}: a split of WebDataset shards cannot be subset; split the shards instead")

    def joined(self, other: Samples, name: str) -> Samples:
        raise DataError(
            "data.folds: WebDataset shards are streamed, so they cannot be split into folds; use the images "
            "they were made from (a folder or a manifest)"
        )

    def fingerprint(self) -> str:
        """Names, sizes and times: hashing terabytes of shards is not on."""
        h = hashlib.sha1()
        for path, count in zip(self.shards, self.shard_counts):
            if is_url(path):  # an object's name and count: a HEAD per shard would cost a request each
                h.update(f"{path}\0{count}\0".encode())
                continue
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        return h.hexdigest()

    def encoded(self, i: int) -> tuple[str, bytes] | None:
        raise DataError(f"{self.name}: already WebDataset shards")


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
    resize: str = "squash"  # data.resize: how an image of another aspect ratio becomes image_size
    root: str | None = None
    skipped_files: int = 0
    multi_label: bool = False  # a manifest with several labels in a row
    one_hot: bool = False  # a manifest with one 0/1 column per class
    missing: list[str] = field(default_factory=list)  # manifest rows whose image is absent (missing_ok)
    source: str = "folder"  # the registry name of the source read (which builds the loaders)
    saved_root: str | None = None  # data.root as the saved config records it (resolved where it was a path)
    saved_source: str | None = None  # data.source as the saved config records it (as read: folder for user data)
    digest: str | None = None  # a manifest's file digest (manifest.file_digest), to know it again
    split_rule: dict[str, Any] = field(default_factory=dict)  # how the data was read and split (see meta)
    fold_pool: Any = None  # data.folds: the pooled images train and val are rows of (sources.fold_split.FoldPool)

    @property
    def fit(self) -> preprocess.Fit:
        """How images are brought to ``image_size`` (:class:`.preprocess.Fit`)."""
        return preprocess.Fit.of(self.resize, self.mean)

    def meta(self) -> dict[str, Any]:
        """Plain data a checkpoint carries so that a model can predict on its own."""
        return {
            "classes": list(self.classes),
            "channels": self.channels,
            "image_size": list(self.image_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
            "data_root": self.root,
            # what evaluate needs to find this data again and split it as training did, checkpoint
            # or export: a few settings and a manifest's digest, the same size for any number of rows
            "data": {**self.split_rule, **({"digest": self.digest} if self.digest else {})},
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
