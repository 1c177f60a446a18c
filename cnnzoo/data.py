"""Data: finding images and classes, splitting, caching decoded pixels, and batching.

What this module owns, in the order training meets it:

* **Sources** (``data.source``): a folder in ImageFolder layout (``train/`` +
  ``validation/`` or ``val/``, optional ``test/``; or one folder of class folders split
  by ``data.val_fraction``), the built-in ``shapes`` generator, or torchvision's MNIST,
  Fashion-MNIST and CIFAR-10. Each split becomes a :class:`Samples` list.
* **The cache** (``data.cache``): every image is decoded and resized once
  (:func:`cnnzoo.preprocess.load_image`) into a uint8 ``[N, C, H, W]`` tensor in RAM or
  in a memory-mapped ``.npy`` file on disk, keyed by the files' paths and contents and
  by the image size and channels, so a changed image or setting rebuilds it. A file on
  disk is checked when opened (:func:`open_cached`: size, header, checksum) and rebuilt
  when it is not what was written (:func:`cached_array`, which the feature cache of
  :mod:`cnnzoo.transfer` uses too). Later epochs never touch a JPEG again.
* **Batches**: :class:`ImageDataset` returns whole uint8 batches (``__getitems__``) with
  augmentations from ``torchvision.transforms.v2`` applied per image, seeded per batch,
  so a run is reproducible whatever the worker count, and a resumed run sees exactly
  the batches the uninterrupted one saw. Normalisation to float happens on the device
  (:func:`cnnzoo.device.to_model_input`). :func:`build_loaders` makes both splits' loaders.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from . import checkpoint as ckpt_io
from . import preprocess
from .config import AugmentConfig, Config
from .console import console, warn
from .errors import ConfigError, DataError
from .versions import check as check_torch_pair

check_torch_pair()  # this module imports torchvision when it runs: a mismatched pair gets one line first

CACHE_FORMAT = 2  # bump when preprocessing or the cache files change, so old caches are not reused
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SPLIT_FOLDERS = {"validation": ("validation", "val"), "test": ("test",)}  # accepted folder names
NATIVE_SIZES = {"mnist": (1, 28), "fashion_mnist": (1, 28), "cifar10": (3, 32), "shapes": (3, 64)}


def cache_home() -> Path:
    """Where generated data sets and disk caches live: $CNNZOO_HOME or ~/.cache/cnnzoo."""
    return Path(os.environ.get("CNNZOO_HOME") or Path.home() / ".cache" / "cnnzoo")


# ----------------------------------------------------------------------------- samples

@dataclass
class Samples:
    """One split: where each image comes from (file paths or an in-memory array) and its label."""

    name: str
    labels: list[int]
    paths: Optional[list[str]] = None
    array: Optional[np.ndarray] = None  # uint8 [N, H, W] or [N, H, W, C] (torchvision sets)
    origin: str = ""  # names an array source in messages and cache keys
    _fingerprint: Optional[tuple[Any, str]] = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, i: int) -> str:
        return self.paths[i] if self.paths is not None else f"{self.origin}[{i}]"

    def read(self, i: int, size: tuple[int, int], channels: int) -> np.ndarray:
        source = self.paths[i] if self.paths is not None else self.array[i]  # type: ignore[index]
        return preprocess.load_image(source, size, channels)

    def subset(self, keep: list[int]) -> "Samples":
        return Samples(self.name, [self.labels[i] for i in keep],
                       [self.paths[i] for i in keep] if self.paths is not None else None,
                       self.array[keep] if self.array is not None else None, self.origin)

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
        if self.paths is not None:
            for path, label in zip(self.paths, self.labels):
                h.update(f"{path}\0{label}\0".encode())
                with open(path, "rb") as f:
                    h.update(hashlib.sha1(f.read()).digest())
        else:
            h.update(self.origin.encode())
            h.update(np.ascontiguousarray(self.array).tobytes())
            h.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        self._fingerprint = (status, h.hexdigest())
        return self._fingerprint[1]


@dataclass
class DataSpec:
    """What a config's ``data`` section resolves to."""

    classes: list[str]
    train: Samples
    val: Samples
    test: Optional[Samples]
    channels: int
    image_size: tuple[int, int]  # (H, W)
    mean: list[float]
    std: list[float]
    root: Optional[str] = None
    skipped_files: int = 0

    def meta(self) -> dict[str, Any]:
        """Plain data a checkpoint carries so that a model can predict on its own."""
        return {"classes": list(self.classes), "channels": self.channels,
                "image_size": list(self.image_size), "mean": list(self.mean),
                "std": list(self.std), "resize": "bilinear", "data_root": self.root}


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_splits(folder: Path) -> bool:
    return (folder / "train").is_dir() and any((folder / n).is_dir() for n in SPLIT_FOLDERS["validation"])


def check_layout(root: Path) -> None:
    """Refuse, with a did-you-mean, the usual wrong data.root of a folder without ``train/``:
    one or two levels above the data set (``downloads/`` holding ``clothing/train``), or a
    folder whose only folder holds the class folders. Read before any image is scanned.
    """
    if (root / "train").is_dir():
        return
    dirs = _class_dirs(root)
    nested = [d for d in dirs if _has_splits(d)]
    if not nested and len(dirs) <= 5:  # an unpacked archive often repeats its folder name
        nested = [g for d in dirs for g in _class_dirs(d) if _has_splits(g)]
    real: dict[Path, Path] = {}  # a data set and a link to it are one data set: name the real folder
    for d in sorted(nested, key=lambda d: d.resolve() != d.absolute()):  # not through a link first
        real.setdefault(d.resolve(), d)
    nested = sorted(real.values())
    if nested:
        where = nested[0] if len(nested) == 1 else None
        raise DataError(f"{root}: no train/ or class folders of images here, but "
                        + (f"{where} holds train/ and validation/; did you mean --data {where} (data.root: {where})?"
                           if where else f"these hold train/ and validation/: {', '.join(map(str, nested))}; "
                                         f"point --data (data.root) at one of them"))
    if len(dirs) == 1 and len(inner := _class_dirs(dirs[0])) >= 2 and not any(
            preprocess.is_image_file(p.name) for p in dirs[0].iterdir()):
        raise DataError(f"{root}: only one class folder ({dirs[0].name}), which holds class folders itself "
                        f"({', '.join(d.name for d in inner[:5])}{', ...' if len(inner) > 5 else ''}); "
                        f"did you mean --data {dirs[0]} (data.root: {dirs[0]})?")


def _split_hint(root: Path) -> str:
    """For a data.root that is a data set's train/ folder: the folder that has the splits."""
    parent = root.resolve().parent
    if root.resolve().name == "train" and _has_splits(parent):
        return f"; did you mean data.root: {parent}? It holds train/ and validation/"
    return ""


def _images_under(folder: Path, seen: set[str], fences: set[str]) -> tuple[list[str], int]:
    """Image files under ``folder`` (links followed, each folder and file read once), and the
    count of other files. ``seen`` holds the real paths read so far across splits, so a
    link loop or a folder linked twice cannot multiply the data or leak it into two splits;
    ``fences`` are the split and class folders, which a link may not lead back into.
    """
    images, others = [], 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real_dir = os.path.realpath(dirpath) + os.sep
        if real_dir in seen or (dirpath != str(folder) and real_dir in fences):
            warn(f"skipped {dirpath}: a link to a folder that was already read")
            dirnames[:] = []
            continue
        seen.add(real_dir)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            if not preprocess.is_image_file(name):
                others += 1
            elif not os.path.isfile(path):  # a FIFO would block the reader; a dangling link fails
                warn(f"skipped {path}: not a regular file")
            elif (real := os.path.realpath(path)) in seen:
                warn(f"skipped {path}: the same file was already read (through a link)")
            else:
                seen.add(real)
                images.append(path)
    return images, others


def scan_folder(folder: Path, split: str, classes: Optional[list[str]] = None,
                seen: Optional[set[str]] = None) -> tuple[Samples, list[str], int]:
    """Read one ImageFolder split; ``classes`` (from training) fixes label order for the others.

    ``seen`` carries the files already read by other splits (see :func:`_images_under`).
    """
    seen = set() if seen is None else seen
    dirs = _class_dirs(folder)
    if not dirs:
        raise DataError(f"{folder}: no class folders; put each class's images in a folder "
                        f"named after the class (e.g. {folder}/cat/001.jpg)")
    names = [d.name for d in dirs]
    if classes is not None:
        extra = [n for n in names if n not in classes]
        if extra:
            raise DataError(f"{folder}: class folder{'s' if len(extra) > 1 else ''} "
                            f"{', '.join(extra)} not in the training classes ({', '.join(classes)}); "
                            f"rename or remove {'them' if len(extra) > 1 else 'it'}")
    else:
        if len(names) < 2:
            raise DataError(f"{folder}: only one class folder ({names[0]}); a classifier needs at least "
                            f"two classes, one folder each")
        classes = names
    paths: list[str] = []
    labels: list[int] = []
    skipped = 0
    fences = {os.path.realpath(p) + os.sep for p in [folder, *dirs]}
    for d in dirs:
        images, others = _images_under(d, seen, fences)
        skipped += others
        if not images:
            raise DataError(f"{d}: empty class folder (no images: {', '.join(preprocess.IMAGE_EXTENSIONS)}, "
                            f"any case); add images or remove it")
        paths.extend(images)
        labels.extend([classes.index(d.name)] * len(images))
    return Samples(split, labels, paths=paths), classes, skipped


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


def _folder_splits(root: Path, cfg: Config, log: Callable[[str], None]
                   ) -> tuple[list[str], Samples, Samples, Optional[Samples], int]:
    if not root.is_dir():
        raise DataError(f"data.root: folder not found: {root.resolve()}")
    train_dir = root / "train"
    if train_dir.is_dir():
        val_dir = next((root / n for n in SPLIT_FOLDERS["validation"] if (root / n).is_dir()), None)
        if val_dir is None:
            raise DataError(f"{root}: has train/ but no validation/ (or val/) split; add one, or set "
                            f"data.root to {train_dir} to hold out data.val_fraction of it")
        seen: set[str] = set()
        train, classes, skipped = scan_folder(train_dir, "train", seen=seen)
        val, _, skipped_val = scan_folder(val_dir, "validation", classes, seen)
        test = None
        if (root / "test").is_dir():
            test, _, skipped_test = scan_folder(root / "test", "test", classes, seen)
            skipped += skipped_test
        return classes, train, val, test, skipped + skipped_val
    check_layout(root)
    everything, classes, skipped = scan_folder(root, "all")
    train, val = stratified_split(everything, cfg.data.val_fraction, cfg.seed)
    log(f"data: {root} has no train/ and validation/ folders; held out {cfg.data.val_fraction:g} of each "
        f"class for validation ({len(val)} of {len(everything)} images, data.val_fraction){_split_hint(root)}")
    return classes, train, val, None, skipped


def _torchvision_splits(cfg: Config) -> tuple[list[str], Samples, Samples, str]:
    from torchvision import datasets

    name = cfg.data.source
    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[name]
    root = Path(cfg.data.root) if cfg.data.root else cache_home() / "datasets"
    try:
        train = cls(str(root), train=True, download=cfg.data.download)
        test = cls(str(root), train=False, download=cfg.data.download)
    except RuntimeError as exc:
        hint = "" if cfg.data.download else "; set data.download: true to fetch it (needs internet)"
        raise DataError(f"data.source {name}: not found in {root} ({str(exc).strip()}){hint}") from None
    except OSError as exc:
        raise DataError(f"data.source {name}: could not download to {root}: {exc}") from None
    samples = []
    for split, ds in (("train", train), ("validation", test)):
        array = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
        labels = [int(t) for t in ds.targets]
        samples.append(Samples(split, labels, array=array, origin=f"{name}/{split}"))
    return list(train.classes), samples[0], samples[1], str(root)


def backbone_preprocessing(cfg: Config) -> Optional["backbones.Preprocessing"]:
    """What a ``backbone`` layer's weights expect, when the network has one."""
    from . import backbones

    entry = backbones.backbone_entry(cfg.model.layers)
    return backbones.preprocessing(*entry) if entry is not None else None


_LOOK_UP = object()  # resolve_input's default: find the backbone's preprocessing itself


def resolve_input(cfg: Config, pretrained: Any = _LOOK_UP) -> tuple[int, tuple[int, int]]:
    """Channels and (H, W) from ``data`` and ``model.input``, which must agree where both are set.

    Unset, they follow a backbone's weights (RGB at their input size), else the source's native
    size. ``pretrained`` is :func:`backbone_preprocessing`'s answer when the caller has it already.
    """
    d, m = cfg.data, cfg.model
    native = NATIVE_SIZES.get(d.source)
    if d.image_size is not None or m.input:
        pretrained = None  # not needed
    elif pretrained is _LOOK_UP:
        pretrained = backbone_preprocessing(cfg)
    channels = d.channels or (m.input[0] if m.input else None) or (native[0] if native else 3)
    if d.image_size is not None:
        size = (d.image_size, d.image_size) if isinstance(d.image_size, int) else tuple(d.image_size)
    elif m.input:
        size = (m.input[1], m.input[2])
    elif pretrained is not None:
        size = pretrained.image_size
    elif native:
        size = (native[1], native[1])
    else:
        raise ConfigError("data.image_size: not set; give the size images are resized to, "
                          "e.g. data.image_size: 128 (or model.input: [3, 128, 128])")
    if m.input and list(m.input) != [channels, size[0], size[1]]:
        raise ConfigError(f"model.input: {m.input} disagrees with data (channels {channels}, "
                          f"image_size {list(size)}); set one of them, or make them match")
    return channels, (int(size[0]), int(size[1]))


def class_names(cfg: Config) -> list[str]:
    """The classes a config's data has, cheaply (no image is decoded)."""
    d = cfg.data
    if d.source == "shapes":
        from . import shapes

        return list(shapes.CLASSES)
    if d.source in ("mnist", "fashion_mnist"):
        from torchvision import datasets

        return list((datasets.MNIST if d.source == "mnist" else datasets.FashionMNIST).classes)
    if d.source == "cifar10":
        return list(CIFAR10_CLASSES)
    if not d.root:
        raise ConfigError("data.root: not set; point it at a folder of class folders "
                          "(or set model.num_classes)")
    root = Path(d.root)
    if not root.is_dir():
        raise DataError(f"data.root: folder not found: {root.resolve()}")
    check_layout(root)
    base = root / "train" if (root / "train").is_dir() else root
    return [p.name for p in _class_dirs(base)]


def load_data(cfg: Config, log: Callable[[str], None] = print) -> DataSpec:
    """Resolve ``cfg.data`` into classes and splits (generating ``shapes`` on first use)."""
    d = cfg.data
    skipped = 0
    test = None
    if d.source in ("folder", "shapes"):
        if d.source == "shapes":
            from . import shapes

            root = Path(d.root) if d.root else cache_home() / f"shapes-v{shapes.VERSION}"
            shapes.ensure_shapes(root, log)
        elif not d.root:
            raise ConfigError("data.root: not set; point it at your image folder "
                              "(class folders, or train/ and validation/ splits)")
        else:
            root = Path(d.root)
        classes, train, val, test, skipped = _folder_splits(root, cfg, log)
        root_text = str(root.resolve())
    else:
        classes, train, val, root_text = _torchvision_splits(cfg)
    if skipped:
        warn(f"skipped {skipped} file{' that is' if skipped == 1 else 's that are'} not images "
             f"({', '.join(preprocess.IMAGE_EXTENSIONS)}) under {root_text}")
    if len(val) == 0:
        raise DataError(f"{root_text}: the validation split is empty; add images or raise data.val_fraction")
    # looked up once: a backbone's weights size the input (when nothing else does) and normalise it (auto)
    size_unset = d.image_size is None and not cfg.model.input
    pretrained = backbone_preprocessing(cfg) if d.normalize == "auto" or size_unset else None
    channels, size = resolve_input(cfg, pretrained)
    if pretrained is not None and d.normalize == "auto" and channels == 3:
        mean, std = pretrained.mean, pretrained.std
        log(f"data: {pretrained.source} preprocessing: mean {_short(mean)}, std {_short(std)}, "
            f"{size[0]}x{size[1]}")
    else:
        mean, std = preprocess.resolve_normalization(d.normalize, channels)
    return DataSpec(classes, train, val, test, channels, size, mean, std, root_text, skipped)


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


# ----------------------------------------------------------------------------- the cache

@dataclass
class DecodedImages:
    """A split's pixels, decoded once: uint8 ``[N, C, H, W]`` and the images that failed."""

    pixels: torch.Tensor
    failed: list[int] = field(default_factory=list)
    location: str = "ram"  # or the path of the memory-mapped file
    seconds: float = 0.0  # time spent decoding; 0 when an existing disk cache was reused

    def describe(self) -> str:
        size = self.pixels.numel() / 2**20
        where = "in RAM" if self.location == "ram" else f"on disk ({self.location})"
        if not self.seconds:
            return f"{len(self.pixels)} images, {size:.0f} MB, reused {where}"
        return (f"{len(self.pixels)} images decoded in {self.seconds:.1f}s "
                f"({len(self.pixels) / self.seconds:.0f} img/s), {size:.0f} MB {where}")


class _DecodeOne(torch.utils.data.Dataset):
    def __init__(self, samples: Samples, size: tuple[int, int], channels: int):
        self.samples, self.size, self.channels = samples, size, channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[int, Optional[np.ndarray], str]:
        try:
            return i, self.samples.read(i, self.size, self.channels), ""
        except Exception as exc:  # a corrupt file must never stop the run
            return i, None, f"{type(exc).__name__}: {exc}"


def _collate_decoded(batch: list) -> list:
    return batch


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def choose_cache(kind: str, nbytes: int) -> str:
    """``auto`` keeps the cache in RAM when it takes under a third of the free memory."""
    if kind != "auto":
        return kind
    return "ram" if nbytes < _available_memory() / 3 else "disk"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class NpyWriter:
    """A new array to fill, memory-mapped to a temporary ``.npy`` beside ``path`` and renamed into
    place by :meth:`finish`, so a killed run never leaves a half-written cache that a later run
    would trust. The file's blocks are reserved first (:func:`cnnzoo.checkpoint.reserve_space`):
    a full disk is found before any pixel is written, never as SIGBUS from a mapped page.
    In RAM when ``path`` is None, or when its folder cannot be written or has no room and the
    array fits in memory (a warning names ``key``, the setting that asked for the file).
    """

    def __init__(self, path: Optional[Path], shape: tuple[int, ...], dtype: Any, key: str):
        self.path, self.tmp, self._mapped = path, None, None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
                self._mapped = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=dtype, shape=shape)
                with open(self.tmp, "r+b") as f:
                    ckpt_io.reserve_space(f.fileno(), os.fstat(f.fileno()).st_size)
            except OSError as exc:
                self.discard()
                self.path = None
                self._fall_back_to_ram(exc, path, math.prod(shape) * np.dtype(dtype).itemsize, key)
        self.tensor = torch.from_numpy(self._mapped if self._mapped is not None else np.empty(shape, dtype=dtype))

    @staticmethod
    def _fall_back_to_ram(exc: OSError, path: Path, nbytes: int, key: str) -> None:
        size = f"{nbytes / 2**20:,.1f} MB"
        if not ckpt_io.is_disk_full(exc):
            warn(f"{key}: cannot write {path.parent} ({exc.strerror or exc}); keeping it in RAM instead")
        elif nbytes < _available_memory() / 2:
            warn(f"{key}: no room for {size} in {path.parent}; keeping it in RAM instead")
        else:
            raise DataError(f"{key}: no room for {size} in {path.parent}, nor in memory; free space there, "
                            f"set data.cache_dir to a folder with room, or set {key}: none")

    def finish(self, record: dict[str, Any]) -> torch.Tensor:
        """The filled array: the same tensor in RAM, or the renamed file mapped copy-on-write, with
        ``record`` and the data's checksum beside it (``<name>.json``, read by :func:`open_cached`)."""
        if self._mapped is None:
            return self.tensor
        self._mapped.flush()
        sidecar = {"format": SIDECAR_FORMAT, "shape": list(self._mapped.shape), "dtype": self._mapped.dtype.str,
                   "sha1": _checksum(self._mapped), "record": record}
        self._mapped = self.tensor = None
        # the record first: a cache file in place always has its record (a kill between the two
        # leaves a record alone, which the next run overwrites)
        _write_text_atomic(_sidecar(self.path), json.dumps(sidecar))
        os.replace(self.tmp, self.path)
        return torch.from_numpy(np.load(self.path, mmap_mode="c"))

    def discard(self) -> None:
        self._mapped = self.tensor = None
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


SIDECAR_FORMAT = 1
_MAX_SIDECAR_BYTES = 64 * 2**20  # a record of failed images for millions of images stays under this


class StaleCache(Exception):
    """A cache file that cannot be trusted; the message says why (for the rebuild's one line)."""


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _checksum(array: np.ndarray) -> str:
    return hashlib.sha1(memoryview(np.ascontiguousarray(array)).cast("B")).hexdigest()


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _regular_file(path: Path, what: str) -> int:
    """The size of ``path``, which must be a regular file (a FIFO would block the reader)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise StaleCache(f"its {what} is missing") from None
    except OSError as exc:
        raise StaleCache(f"its {what} cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise StaleCache(f"its {what} is not a regular file")
    return st.st_size


def open_cached(path: Path, shape: tuple[int, ...], dtype: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """A cache file mapped copy-on-write and its record, after checking that it is what its
    record says: a regular file of the exact size, a header with the expected shape and dtype,
    and the data's checksum. Raises :class:`StaleCache` saying why not."""
    dtype = np.dtype(dtype)
    if _regular_file(_sidecar(path), "record (.json)") > _MAX_SIDECAR_BYTES:
        raise StaleCache("its record (.json) is too large")
    try:
        sidecar = json.loads(_sidecar(path).read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        raise StaleCache("its record (.json) is damaged") from None
    if not (isinstance(sidecar, dict) and sidecar.get("format") == SIDECAR_FORMAT
            and sidecar.get("shape") == list(shape) and sidecar.get("dtype") == dtype.str
            and isinstance(sidecar.get("sha1"), str) and isinstance(sidecar.get("record"), dict)):
        raise StaleCache("its record (.json) does not describe this cache")
    size = _regular_file(path, "data (.npy)")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f".npy version {version}")
            found_shape, fortran, found_dtype = read_header(f)
            offset = f.tell()
    except Exception as exc:  # numpy's header parser meets damaged bytes with many kinds of error
        raise StaleCache(f"its header is unreadable ({type(exc).__name__})") from None
    if tuple(found_shape) != tuple(shape) or found_dtype != dtype or fortran:
        raise StaleCache(f"its header says {found_dtype}{list(found_shape)}, expected {dtype}{list(shape)}")
    expected = offset + math.prod(shape) * dtype.itemsize
    if size != expected:
        raise StaleCache(f"it is {'truncated' if size < expected else 'too long'} ({size:,} of {expected:,} bytes)")
    array = np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=tuple(shape)) if math.prod(shape) \
        else np.empty(shape, dtype=dtype)
    if _checksum(array) != sidecar["sha1"]:
        raise StaleCache("its contents changed since it was written (checksum)")
    return torch.from_numpy(array), sidecar["record"]


@dataclass
class CachedArray:
    """What :func:`cached_array` hands back: the array, where it lives, the record kept with it."""

    tensor: torch.Tensor
    location: str  # "ram" or the file's path
    record: dict[str, Any]
    reused: bool


def cached_array(path: Optional[Path], shape: tuple[int, ...], dtype: Any, key: str,
                 fill: Callable[[torch.Tensor], dict[str, Any]], *,
                 record_problem: Callable[[dict[str, Any]], str] = lambda record: "") -> CachedArray:
    """The one way a cache is reused or built (the decoded pixels, the frozen features).

    With a ``path``, a file there that passes :func:`open_cached` (and whose record
    ``record_problem`` finds nothing wrong with) is reused; one that does not is rebuilt with
    one warning that names ``key`` and says why. Building runs ``fill(tensor)`` on a fresh array
    (RAM, or a file from :class:`NpyWriter`), which returns the record to keep beside it.
    """
    if path is not None and (os.path.lexists(path) or os.path.lexists(_sidecar(path))):
        try:
            tensor, record = open_cached(path, shape, dtype)
            problem = record_problem(record)
            if problem:
                raise StaleCache(f"its record (.json) {problem}")
            return CachedArray(tensor, str(path), record, True)
        except StaleCache as stale:
            if os.path.isdir(path):
                warn(f"{key}: {path} is a folder, not a cache file; keeping the cache in RAM instead")
                path = None
            elif os.path.lexists(path):
                warn(f"{key}: rebuilding {path}: {stale}")
    writer = NpyWriter(path, shape, dtype, key)
    location = str(writer.path or "ram")
    try:
        record = fill(writer.tensor)
        return CachedArray(writer.finish(record), location, record, False)
    except BaseException as exc:  # Ctrl-C or a failure: no half-written cache file stays behind
        writer.discard()
        if isinstance(exc, OSError) and ckpt_io.is_disk_full(exc):
            raise DataError(f"{key}: the disk under {location} filled up while the cache was written; "
                            f"free some space, or set {key}: ram") from None
        raise


def decode_all(samples: Samples, size: tuple[int, int], channels: int, kind: str,
               cache_dir: Optional[Path], workers: int) -> DecodedImages:
    """Decode a split once into RAM or a reusable memory-mapped file (see module docstring)."""
    import time

    start = time.perf_counter()
    n = len(samples)
    shape = (n, channels, size[0], size[1])
    path = None
    if choose_cache(kind, math.prod(shape)) == "disk":
        key = hashlib.sha1(f"{CACHE_FORMAT}|{shape}|{samples.fingerprint()}".encode()).hexdigest()[:20]
        folder = Path(cache_dir) if cache_dir else cache_home() / "cache"
        path = folder / f"{samples.name}-{key}.npy"

    def failed_problem(record: dict[str, Any]) -> str:
        failed = record.get("failed")
        ok = isinstance(failed, list) and all(type(i) is int and 0 <= i < n for i in failed)
        return "" if ok else "lists unreadable images that this split does not have"

    cached = cached_array(path, shape, np.uint8, "data.cache",
                          lambda pixels: {"failed": _decode_into(pixels, samples, size, channels, workers)},
                          record_problem=failed_problem)
    failed = cached.record["failed"]
    if cached.reused:
        for i in failed:
            warn(f"skipped unreadable image {samples.describe(i)} (found when the cache was built)")
    return DecodedImages(cached.tensor, failed, cached.location, 0.0 if cached.reused else
                         time.perf_counter() - start)


def _decode_into(pixels: torch.Tensor, samples: Samples, size: tuple[int, int], channels: int,
                 workers: int) -> list[int]:
    """Decode every image of ``samples`` into ``pixels`` [N, C, H, W]; the indices that failed."""
    loader = torch.utils.data.DataLoader(
        _DecodeOne(samples, size, channels), batch_size=32, num_workers=workers,
        collate_fn=_collate_decoded, multiprocessing_context="fork" if workers else None)
    failed: list[int] = []
    bar = console.bar(len(samples), f"caching {samples.name}", unit="img")
    try:
        for batch in loader:
            for i, image, error in batch:
                if image is None:
                    failed.append(i)
                    warn(f"skipped unreadable image {samples.describe(i)} ({error})")
                else:
                    pixels[i] = torch.from_numpy(image).permute(2, 0, 1)
            bar.update(len(batch))
    finally:
        bar.close()
    return failed


# ----------------------------------------------------------------------------- augmentation

def build_augment(aug: AugmentConfig, size: tuple[int, int]) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """torchvision.transforms.v2 pipeline on uint8 CxHxW tensors; None when nothing is on.

    Every value was range-checked with the config (:class:`cnnzoo.config.Bounds`).
    """
    from torchvision.transforms import v2

    steps: list[Any] = []
    if aug.random_resized_crop:
        steps.append(v2.RandomResizedCrop(list(size), scale=tuple(aug.random_resized_crop), antialias=True))
    hflip, vflip = aug.flip_probabilities
    if hflip:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if vflip:
        steps.append(v2.RandomVerticalFlip(vflip))
    translate = aug.translate if isinstance(aug.translate, list) else [aug.translate, aug.translate]
    if aug.rotation or aug.shear or aug.zoom or any(translate):
        steps.append(v2.RandomAffine(
            degrees=aug.rotation, translate=tuple(translate) if any(translate) else None,
            scale=(1 - aug.zoom, 1 + aug.zoom) if aug.zoom else None,
            shear=aug.shear or None, interpolation=v2.InterpolationMode.BILINEAR))
    if aug.color_jitter:
        steps.append(v2.ColorJitter(**dataclasses.asdict(aug.color_jitter)))
    return v2.Compose(steps) if steps else None


# ----------------------------------------------------------------------------- batches

class ImageDataset(torch.utils.data.Dataset):
    """A split as uint8 batches; reads the cache when there is one, else decodes files.

    ``__getitems__`` takes ``(index, batch_seed)`` pairs from :class:`EpochBatches` and
    returns ``(images uint8 [B, C, H, W], labels int64 [B])``.
    """

    def __init__(self, samples: Samples, size: tuple[int, int], channels: int,
                 decoded: Optional[DecodedImages] = None,
                 augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.samples, self.size, self.channels = samples, size, channels
        self.pixels = decoded.pixels if decoded is not None else None
        self.augment = augment
        failed = set(decoded.failed) if decoded is not None else set()
        self.indices = [i for i in range(len(samples)) if i not in failed]
        self.labels = torch.tensor([samples.labels[i] for i in self.indices], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def _read(self, positions: list[int]) -> tuple[torch.Tensor, list[int]]:
        if self.pixels is not None:
            rows = torch.tensor([self.indices[p] for p in positions])
            return self.pixels[rows], positions
        images, kept = [], []
        for p in positions:
            i = self.indices[p]
            try:
                images.append(torch.from_numpy(self.samples.read(i, self.size, self.channels)).permute(2, 0, 1))
                kept.append(p)
            except Exception as exc:
                warn(f"skipped unreadable image {self.samples.describe(i)} ({type(exc).__name__}: {exc})")
        if not images:
            return torch.empty((0, self.channels, *self.size), dtype=torch.uint8), kept
        return torch.stack(images), kept

    def __getitems__(self, pairs: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        positions = [p for p, _ in pairs]
        images, kept = self._read(positions)
        if self.augment is not None and len(kept):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(pairs[0][1])
                images = torch.stack([self.augment(img) for img in images])
        return images.contiguous(), self.labels[kept]

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        images, labels = self.__getitems__([(position, 0)])
        return images[0], int(labels[0])

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes).tolist()


def mix_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (epoch, batch, ...)."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFF_FFFF_FFFF_FFFF


class EpochBatches(torch.utils.data.Sampler):
    """Batches of ``(index, batch_seed)``; the order depends only on (seed, epoch).

    With ``shard=(rank, world)`` each of ``world`` processes takes every world-th image of
    the same order. Training (``shuffle``) repeats images from the start of the order so
    that every process takes the same number of steps, as DDP needs; validation does
    not, so that every image counts once.
    """

    def __init__(self, labels: torch.Tensor, batch_size: int, shuffle: bool, seed: int,
                 balanced: bool = False, shard: tuple[int, int] = (0, 1)):
        self.labels, self.batch_size, self.shuffle = labels, batch_size, shuffle
        self.seed, self.balanced, self.epoch = seed, balanced, 0
        self.rank, self.world = shard
        counts = torch.bincount(labels).double() if len(labels) else torch.zeros(1)
        self.weights = (1.0 / counts.clamp(min=1))[labels] if len(labels) else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        n = len(self.labels)
        if not self.shuffle:
            order = list(range(n))
        else:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 1))
            if self.balanced:  # each class drawn equally often, with replacement
                order = torch.multinomial(self.weights, n, replacement=True, generator=g).tolist()
            else:
                order = torch.randperm(n, generator=g).tolist()
        if self.world == 1:
            return order
        if self.shuffle and n:
            padded = -(-n // self.world) * self.world
            order = (order * -(-padded // n))[:padded]
        return order[self.rank::self.world]

    def _share(self) -> int:
        n = len(self.labels)
        if self.world == 1:
            return n
        if self.shuffle:
            return -(-n // self.world) if n else 0
        return len(range(self.rank, n, self.world))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self._order()
        for b, start in enumerate(range(0, len(order), self.batch_size)):
            chunk = order[start:start + self.batch_size]
            if self.shuffle and len(chunk) == 1 and self.batch_size > 1 and start > 0:
                break  # a lone last image would break BatchNorm's batch statistics
            # each process draws its own augmentations; one process keeps its seeds of old
            seed = mix_seed(self.seed, self.epoch, b, 2) if self.world == 1 else \
                mix_seed(self.seed, self.epoch, b, 2, self.rank)
            yield [(i, seed) for i in chunk]

    def __len__(self) -> int:
        n = self._share()
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest > 1 or (rest == 1 and (full == 0 or not self.shuffle)) else 0)


def _passthrough(batch: Any) -> Any:
    return batch


def choose_workers(setting: Any, cached: bool, augmented: bool, cuda: bool) -> int:
    """Loader processes for ``data.workers: auto``.

    * cached, no augmentation: none, a slice of a tensor costs less than handing it over;
    * training on the CPU from the cache: the model's threads already use every core, and
      on 2 cores a worker doing augmentation made steps ~15% slower than augmenting
      in the main process (scripts/bench_train.py), so workers only where cores abound;
    * on CUDA, or decoding JPEGs every epoch (no cache): up to one per spare core.
    """
    if setting != "auto":
        return int(setting)
    from . import distributed

    cores = max(1, cpu_count() // distributed.local_world())  # the machine's processes share its cores
    if cached and not augmented:
        return 0
    if cuda:
        return min(8, cores)
    if cached:
        return 0 if cores <= 4 else min(4, cores // 4)
    return max(1, min(4, cores - 1)) if cores > 1 else 0


def make_loader(dataset: ImageDataset, batch_size: int, shuffle: bool, seed: int, workers: int,
                balanced: bool = False, pin_memory: bool = False,
                shard: tuple[int, int] = (0, 1)) -> torch.utils.data.DataLoader:
    """Batches from :class:`EpochBatches`; ``shard`` is (rank, world size) in a DDP run."""
    sampler = EpochBatches(dataset.labels, batch_size, shuffle, seed, balanced, shard)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=_passthrough, num_workers=workers,
        pin_memory=pin_memory, persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        multiprocessing_context="fork" if workers > 0 and sys.platform.startswith("linux") else None)


@dataclass
class Loaders:
    """Both splits as datasets (decoded once unless ``data.cache: none``) and loaders over them."""

    train_set: ImageDataset
    val_set: ImageDataset
    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader


def shared_cache_kind(setting: str, key: str) -> str:
    """A cache setting for this process: in a DDP run ``auto`` means a file on disk, which
    local rank 0 writes once and every process maps (the OS keeps one copy in memory)."""
    from . import distributed

    if distributed.context().enabled and setting == "auto":
        console.log(f"{key}: auto -> disk, shared by the processes of this run")
        return "disk"
    return setting


def build_loaders(cfg: Config, spec: DataSpec, augment, cuda: bool) -> Loaders:
    """Decode both splits once into the cache (unless ``data.cache: none``), then loaders over them.

    In a DDP run the loaders shard every epoch between the processes, and the cache on
    disk is built by local rank 0 before the others read it.
    """
    from . import distributed

    cached = cfg.data.cache != "none"
    kind = shared_cache_kind(cfg.data.cache, "data.cache") if cached else "none"
    datasets = []
    for split in (spec.train, spec.val):
        decoded = None
        if cached:
            with distributed.main_first(shared=kind != "ram"):
                decoded = decode_all(split, spec.image_size, spec.channels, kind,
                                     Path(cfg.data.cache_dir) if cfg.data.cache_dir else None, cpu_count())
            console.log(f"cache {split.name}: {decoded.describe()}")
        datasets.append(ImageDataset(split, spec.image_size, spec.channels, decoded,
                                     augment if split is spec.train else None))
    train_set, val_set = datasets
    workers = choose_workers(cfg.data.workers, cached, augment is not None, cuda)
    shard = distributed.shard()
    train_loader = make_loader(train_set, cfg.train.batch_size, True, cfg.seed, workers,
                               cfg.data.sampler == "balanced", cuda, shard)
    val_loader = make_loader(val_set, cfg.train.batch_size * 2, False, cfg.seed, 0 if cached else workers,
                             False, cuda, shard)
    per_process = f", {shard[1]} processes" if shard[1] > 1 else ""
    console.log(f"data: {len(train_set)} training and {len(val_set)} validation images, "
                f"{len(spec.classes)} classes, {spec.channels}x{spec.image_size[0]}x{spec.image_size[1]}, "
                f"cache {'on' if cached else 'off'}, {workers} loader workers{per_process}")
    return Loaders(train_set, val_set, train_loader, val_loader)


def class_counts_text(classes: list[str], counts: list[int]) -> str:
    width = max(len(c) for c in classes)
    total = sum(counts) or 1
    return "\n".join(f"  {c:<{width}}  {n:>6}  {100 * n / total:5.1f}%" for c, n in zip(classes, counts))
