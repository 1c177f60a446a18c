"""Sources and splits: the images and classes a config's ``data`` section names.

A folder in ImageFolder layout (``train/`` + ``validation/`` or ``val/``, optional ``test/``; or
one folder of class folders split by ``data.val_fraction``), the built-in ``shapes`` generator,
or torchvision's MNIST, Fashion-MNIST and CIFAR-10. Each split becomes a :class:`Samples`
list; :func:`load_data` resolves the whole section into a :class:`DataSpec` (classes, splits,
channels, size, normalisation).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import Config
from ..console import console, warn
from ..errors import ConfigError, DataError
from ..files import cache_home
from ..runtime.versions import check as check_torch_pair
from . import preprocess, shapes

if TYPE_CHECKING:  # at run time only the torch-side helpers import them, so folders load without torch
    from ..model import backbones

check_torch_pair()  # this module imports torchvision when it runs: a mismatched pair gets one line first
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SPLIT_FOLDERS = {"validation": ("validation", "val"), "test": ("test",)}  # accepted folder names
NATIVE_SIZES = {"mnist": (1, 28), "fashion_mnist": (1, 28), "cifar10": (3, 32), "shapes": (3, 64)}


@dataclass(kw_only=True)
class Samples:
    """One split: where each image comes from (file paths or an in-memory array) and its label."""

    name: str
    labels: list[int]
    paths: list[str] | None = None
    array: np.ndarray | None = None  # uint8 [N, H, W] or [N, H, W, C] (torchvision sets)
    origin: str = ""  # names an array source in messages and cache keys
    _fingerprint: tuple[Any, str] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, i: int) -> str:
        return self.paths[i] if self.paths is not None else f"{self.origin}[{i}]"

    def read(self, i: int, size: tuple[int, int], channels: int) -> np.ndarray:
        source = self.paths[i] if self.paths is not None else self.array[i]  # type: ignore[index]
        return preprocess.load_image(source, size, channels)

    def subset(self, keep: list[int]) -> Samples:
        return Samples(
            name=self.name,
            labels=[self.labels[i] for i in keep],
            paths=[self.paths[i] for i in keep] if self.paths is not None else None,
            array=self.array[keep] if self.array is not None else None,
            origin=self.origin,
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


def class_dirs(folder: Path) -> list[Path]:
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
    dirs = class_dirs(root)
    nested = [d for d in dirs if _has_splits(d)]
    if not nested and len(dirs) <= 5:  # an unpacked archive often repeats its folder name
        nested = [g for d in dirs for g in class_dirs(d) if _has_splits(g)]
    real: dict[Path, Path] = {}  # a data set and a link to it are one data set: name the real folder
    for d in sorted(nested, key=lambda d: d.resolve() != d.absolute()):  # not through a link first
        real.setdefault(d.resolve(), d)
    nested = sorted(real.values())
    if nested:
        where = nested[0] if len(nested) == 1 else None
        raise DataError(
            f"{root}: no train/ or class folders of images here, but "
            + (
                f"{where} holds train/ and validation/; did you mean --data {where} (data.root: {where})?"
                if where
                else f"these hold train/ and validation/: {', '.join(map(str, nested))}; "
                f"point --data (data.root) at one of them"
            )
        )
    if (
        len(dirs) == 1
        and len(inner := class_dirs(dirs[0])) >= 2
        and not any(preprocess.is_image_file(p.name) for p in dirs[0].iterdir())
    ):
        raise DataError(
            f"{root}: only one class folder ({dirs[0].name}), which holds class folders itself "
            f"({', '.join(d.name for d in inner[:5])}{', ...' if len(inner) > 5 else ''}); "
            f"did you mean --data {dirs[0]} (data.root: {dirs[0]})?"
        )


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


def scan_folder(
    folder: Path, split: str, classes: list[str] | None = None, *, seen: set[str] | None = None
) -> tuple[Samples, list[str], int]:
    """Read one ImageFolder split; ``classes`` (from training) fixes label order for the others.

    ``seen`` carries the files already read by other splits (see :func:`_images_under`).
    """
    seen = set() if seen is None else seen
    dirs = class_dirs(folder)
    if not dirs:
        raise DataError(
            f"{folder}: no class folders; put each class's images in a folder "
            f"named after the class (e.g. {folder}/cat/001.jpg)"
        )
    names = [d.name for d in dirs]
    if classes is not None:
        extra = [n for n in names if n not in classes]
        if extra:
            raise DataError(
                f"{folder}: class folder{'s' if len(extra) > 1 else ''} "
                f"{', '.join(extra)} not in the training classes ({', '.join(classes)}); "
                f"rename or remove {'them' if len(extra) > 1 else 'it'}"
            )
    else:
        if len(names) < 2:
            raise DataError(
                f"{folder}: only one class folder ({names[0]}); a classifier needs at least "
                f"two classes, one folder each"
            )
        classes = names
    paths: list[str] = []
    labels: list[int] = []
    skipped = 0
    fences = {os.path.realpath(p) + os.sep for p in [folder, *dirs]}
    for d in dirs:
        images, others = _images_under(d, seen, fences)
        skipped += others
        if not images:
            raise DataError(
                f"{d}: empty class folder (no images: {', '.join(preprocess.IMAGE_EXTENSIONS)}, "
                f"any case); add images or remove it"
            )
        paths.extend(images)
        labels.extend([classes.index(d.name)] * len(images))
    return Samples(name=split, labels=labels, paths=paths), classes, skipped


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


def _folder_splits(root: Path, cfg: Config) -> tuple[list[str], Samples, Samples, Samples | None, int]:
    if not root.is_dir():
        raise DataError(f"data.root: folder not found: {root.resolve()}")
    train_dir = root / "train"
    if train_dir.is_dir():
        val_dir = next((root / n for n in SPLIT_FOLDERS["validation"] if (root / n).is_dir()), None)
        if val_dir is None:
            raise DataError(
                f"{root}: has train/ but no validation/ (or val/) split; add one, or set "
                f"data.root to {train_dir} to hold out data.val_fraction of it"
            )
        seen: set[str] = set()
        train, classes, skipped = scan_folder(train_dir, "train", seen=seen)
        val, _, skipped_val = scan_folder(val_dir, "validation", classes, seen=seen)
        test = None
        if (root / "test").is_dir():
            test, _, skipped_test = scan_folder(root / "test", "test", classes, seen=seen)
            skipped += skipped_test
        return classes, train, val, test, skipped + skipped_val
    check_layout(root)
    everything, classes, skipped = scan_folder(root, "all")
    train, val = stratified_split(everything, cfg.data.val_fraction, cfg.seed)
    console.log(
        f"data: {root} has no train/ and validation/ folders; held out {cfg.data.val_fraction:g} of each "
        f"class for validation ({len(val)} of {len(everything)} images, data.val_fraction){_split_hint(root)}"
    )
    return classes, train, val, None, skipped


def _torchvision_datasets():
    """``torchvision.datasets``, imported when a torchvision source is first asked for."""
    from torchvision import datasets  # lazy: seconds to import; folders (and evaluate on them) never need it

    return datasets


def _torchvision_splits(cfg: Config) -> tuple[list[str], Samples, Samples, str]:
    datasets = _torchvision_datasets()
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
        import torch  # lazy: folder sources (and evaluate of an export on them) stay torch-free

        array = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
        labels = [int(t) for t in ds.targets]
        samples.append(Samples(name=split, labels=labels, array=array, origin=f"{name}/{split}"))
    return list(train.classes), samples[0], samples[1], str(root)


def backbone_preprocessing(cfg: Config) -> backbones.Preprocessing | None:
    """What a ``backbone`` layer's weights expect, when the network has one."""
    from ..model import backbones  # lazy: a backbone's registry imports torch; folders need not

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
        raise ConfigError(
            "data.image_size: not set; give the size images are resized to, "
            "e.g. data.image_size: 128 (or model.input: [3, 128, 128])"
        )
    if m.input and list(m.input) != [channels, size[0], size[1]]:
        raise ConfigError(
            f"model.input: {m.input} disagrees with data (channels {channels}, "
            f"image_size {list(size)}); set one of them, or make them match"
        )
    return channels, (int(size[0]), int(size[1]))


def class_names(cfg: Config) -> list[str]:
    """The classes a config's data has, cheaply (no image is decoded)."""
    d = cfg.data
    if d.source == "shapes":
        return list(shapes.CLASSES)
    if d.source in ("mnist", "fashion_mnist"):
        datasets = _torchvision_datasets()
        return list((datasets.MNIST if d.source == "mnist" else datasets.FashionMNIST).classes)
    if d.source == "cifar10":
        return list(CIFAR10_CLASSES)
    if not d.root:
        raise ConfigError("data.root: not set; point it at a folder of class folders (or set model.num_classes)")
    root = Path(d.root)
    if not root.is_dir():
        raise DataError(f"data.root: folder not found: {root.resolve()}")
    check_layout(root)
    base = root / "train" if (root / "train").is_dir() else root
    return [p.name for p in class_dirs(base)]


def load_data(cfg: Config) -> DataSpec:
    """Resolve ``cfg.data`` into classes and splits (generating ``shapes`` on first use)."""
    d = cfg.data
    skipped = 0
    test = None
    if d.source in ("folder", "shapes"):
        if d.source == "shapes":
            root = Path(d.root) if d.root else cache_home() / f"shapes-v{shapes.VERSION}"
            shapes.ensure_shapes(root)
        elif not d.root:
            raise ConfigError(
                "data.root: not set; point it at your image folder (class folders, or train/ and validation/ splits)"
            )
        else:
            root = Path(d.root)
        classes, train, val, test, skipped = _folder_splits(root, cfg)
        root_text = str(root.resolve())
    else:
        classes, train, val, root_text = _torchvision_splits(cfg)
    if skipped:
        warn(
            f"skipped {skipped} file{' that is' if skipped == 1 else 's that are'} not images "
            f"({', '.join(preprocess.IMAGE_EXTENSIONS)}) under {root_text}"
        )
    if len(val) == 0:
        raise DataError(f"{root_text}: the validation split is empty; add images or raise data.val_fraction")
    # looked up once: a backbone's weights size the input (when nothing else does) and normalise it (auto)
    size_unset = d.image_size is None and not cfg.model.input
    pretrained = backbone_preprocessing(cfg) if d.normalize == "auto" or size_unset else None
    channels, size = resolve_input(cfg, pretrained)
    if pretrained is not None and d.normalize == "auto" and channels == 3:
        mean, std = pretrained.mean, pretrained.std
        console.log(
            f"data: {pretrained.source} preprocessing: mean {_short(mean)}, std {_short(std)}, {size[0]}x{size[1]}"
        )
    else:
        mean, std = preprocess.resolve_normalization(d.normalize, channels)
    return DataSpec(
        classes=classes,
        train=train,
        val=val,
        test=test,
        channels=channels,
        image_size=size,
        mean=mean,
        std=std,
        root=root_text,
        skipped_files=skipped,
    )


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def class_counts_text(classes: list[str], counts: list[int]) -> str:
    width = max(len(c) for c in classes)
    total = sum(counts) or 1
    return "\n".join(f"  {c:<{width}}  {n:>6}  {100 * n / total:5.1f}%" for c, n in zip(classes, counts))
