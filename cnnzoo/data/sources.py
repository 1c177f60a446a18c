"""Sources and splits: the images and classes a config's ``data`` section names.

A folder in ImageFolder layout (``train/`` + ``validation/`` or ``val/``, optional ``test/``; or
one folder of class folders split by ``data.val_fraction``), the built-in ``shapes`` generator,
torchvision's MNIST, Fashion-MNIST and CIFAR-10, or a manifest (:mod:`cnnzoo.data.manifest`:
splits from sibling files, a split column or ``val_fraction``). Each split becomes a :class:`Samples`
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
from . import hf, manifest, preprocess, shapes, shard_files

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
    _read_shapes_root_as_folder(cfg)
    if d.source == "shapes":
        return list(shapes.CLASSES)
    if d.source in ("mnist", "fashion_mnist"):
        datasets = _torchvision_datasets()
        return list((datasets.MNIST if d.source == "mnist" else datasets.FashionMNIST).classes)
    if d.source == "cifar10":
        return list(CIFAR10_CLASSES)
    if not d.root:
        raise ConfigError("data.root: not set; point it at a folder of class folders (or set model.num_classes)")
    if uses_manifest(cfg):
        return manifest.class_list(_manifest_parts(cfg, Path(d.root))["train"])
    if uses_shards(cfg):
        return _shard_splits(d.root)[0]
    if uses_hf(cfg):
        return _hf_splits(cfg)[0]
    root = Path(d.root)
    if not root.is_dir():
        raise DataError(f"data.root: folder not found: {root.resolve()}")
    check_layout(root)
    base = root / "train" if (root / "train").is_dir() else root
    return [p.name for p in class_dirs(base)]


def resolve_task(cfg: Config, where: str, data_multi: bool) -> bool:
    """Multi-label or not: ``train.task``, or (auto) what the data says; ``single`` over rows with
    several labels is refused in one line."""
    task = cfg.train.task
    if task == "single" and data_multi:
        raise DataError(
            f"{where}: some rows have several labels, but train.task is single; set train.task: multi "
            f"(or auto), or give each row one label"
        )
    return task == "multi" or (task == "auto" and data_multi)


def uses_manifest(cfg: Config) -> bool:
    """``data.source: manifest``, or a ``data.root`` that names a manifest file (.csv, .tsv, .jsonl, .parquet)."""
    d = cfg.data
    return d.source == "manifest" or (d.source == "folder" and bool(d.root) and manifest.is_manifest(d.root))


def _read_manifest(cfg: Config, path: Path, *, labels_required: bool = True) -> manifest.Manifest:
    d = cfg.data
    return manifest.read_manifest(
        path,
        image_column=d.image_column,
        label_column=d.label_column,
        images_dir=d.images_dir,
        labels_required=labels_required,
    )


def manifest_samples(
    table: manifest.Manifest, classes: list[str], split: str, *, missing: list[str] | None = None
) -> Samples:
    """A manifest's rows as a split: its files, and its labels as class indices (the first one in
    ``labels``, all of them in ``label_sets``). Every image must exist, unless ``missing`` is a
    list: rows without their image are then left out and named there."""
    if missing is None:
        table.check_files()
    else:
        if split != "test" and not any(table.paths):
            table.check_files()  # none found: name them, rather than report a split with nothing in it
        missing.extend(f"{table.where(i)} ({table.names[i]})" for i, p in enumerate(table.paths) if not p)
        table = table.subset([i for i, p in enumerate(table.paths) if p])
    label_sets = manifest.label_indices(table, classes)
    labels = [indices[0] if indices else -1 for indices in label_sets]  # -1: a one-hot row with no class
    return Samples(name=split, labels=labels, paths=list(table.paths), label_sets=label_sets)


def manifest_split(
    cfg: Config, path: Path, split: str | None, classes: list[str], *, multi_label: bool = False
) -> Samples:
    """A labelled manifest to score (``evaluate --data test.csv``): its rows of ``split`` (default:
    test, else validation) when it has a split column, else all of them; columns as ``cfg`` names them.
    A single-label model's rows need one label each; a multi-label model's may have any number."""
    table = manifest.read_manifest(path, image_column=cfg.data.image_column, label_column=cfg.data.label_column)
    name = split or "test"
    if table.splits is not None:
        wanted = [split] if split else ["test", "validation"]
        name = next((s for s in wanted if s in table.splits), "")
        if not name:
            raise DataError(f"{path}: no rows whose split is {' or '.join(wanted)}")
        table = table.subset([i for i, s in enumerate(table.splits) if s == name])
    if table.multi_label and not multi_label:
        raise DataError(f"{path}: some rows have several labels, but the model is single-label (one class per image)")
    if not multi_label:
        table.check_one_label_each()
    return manifest_samples(table, classes, name)


def _manifest_parts(cfg: Config, path: Path) -> dict[str, manifest.Manifest]:
    """A manifest's splits as read: sibling files (train.csv + validation.csv, test.csv), a split
    column, or all rows as training data (``val_fraction`` then holds some out)."""
    main = _read_manifest(cfg, path)
    siblings = manifest.split_files(path)
    if siblings:
        parts = {
            "train": main,
            **{split: _read_manifest(cfg, p, labels_required=False) for split, p in siblings.items()},
        }
    elif main.splits is not None:
        parts = {
            s: main.subset([i for i, v in enumerate(main.splits) if v == s]) for s in ("train", "validation", "test")
        }
    else:
        parts = {"train": main}
    for split in [s for s, part in parts.items() if not len(part)]:
        if split == "train":
            raise DataError(f"{path}: no rows with split train; mark the training rows in the split column")
        del parts[split]
    if parts.get("test") is not None and parts["test"].labels is None:
        console.log(f"data: {parts['test'].path} has no labels; not used as a test split (predict --data reads it)")
        del parts["test"]
    if parts.get("validation") is not None and parts["validation"].labels is None:
        raise DataError(f"{parts['validation'].path}: no label column; the validation split needs labels")
    return parts


def _manifest_splits(
    cfg: Config, path: Path, missing: list[str] | None
) -> tuple[list[str], Samples, Samples, Samples | None, dict[str, Any]]:
    """(classes, train, validation, test, label kind: ``multi_label`` and ``one_hot``) from a manifest;
    ``missing`` as in :func:`manifest_samples`."""
    parts = _manifest_parts(cfg, path)
    classes = manifest.class_list(parts["train"])
    if len(classes) < 2:
        raise DataError(f"{path}: only one class ({', '.join(classes)}); a classifier needs at least two")
    data_multi = any(part.multi_label or _one_hot_with_empty_rows(part) for part in parts.values())
    multi_label = resolve_task(cfg, str(path), data_multi)
    if multi_label:
        manifest.check_label_separator(path, classes)
    else:
        for part in parts.values():
            part.check_one_label_each()
    table = parts["train"]
    console.log(
        f"data: manifest {path}: images from {table.image_column!r}, labels from "
        f"{table.label_column or ', '.join(table.one_hot_columns) + ' (one-hot)'!r}, {len(classes)} classes"
    )
    train = manifest_samples(parts["train"], classes, "train", missing=missing)
    test = manifest_samples(parts["test"], classes, "test", missing=missing) if "test" in parts else None
    if "validation" in parts:
        val = manifest_samples(parts["validation"], classes, "validation", missing=missing)
    else:
        everything = train
        train, val = stratified_split(everything, cfg.data.val_fraction, cfg.seed)
        console.log(
            f"data: {path} has no validation rows; held out {cfg.data.val_fraction:g} of each class "
            f"({len(val)} of {len(everything)} images, data.val_fraction)"
        )
    kind = {"multi_label": multi_label, "one_hot": table.one_hot}
    return classes, train, val, test, {**kind, "missing": missing} if missing else kind


def _one_hot_with_empty_rows(table: manifest.Manifest) -> bool:
    """0/1 columns where some row has no 1: findings of which an image may have none (multi-label)."""
    return table.one_hot and any(not labels for labels in table.labels or [])


def uses_shards(cfg: Config) -> bool:
    """``data.source: webdataset``, or a ``data.root`` that holds or names WebDataset shards."""
    d = cfg.data
    return d.source == "webdataset" or (d.source == "folder" and bool(d.root) and shard_files.is_shards(d.root))


def shard_samples(shard_set: shard_files.ShardSet) -> Samples:
    """A split of shards: their paths and sizes, and labels that only count the classes (the
    order of the samples is the stream's)."""
    labels = [c for c, n in enumerate(shard_set.class_counts) for _ in range(n)]
    return Samples(
        name=shard_set.name, labels=labels, shards=list(shard_set.shards), shard_counts=list(shard_set.counts)
    )


def _shard_splits(root: str) -> tuple[list[str], Samples, Samples, Samples | None]:
    classes, found = shard_files.find_shards(root)
    test = shard_samples(found["test"]) if "test" in found else None
    return classes, shard_samples(found["train"]), shard_samples(found["validation"]), test


def uses_hf(cfg: Config) -> bool:
    """``data.source: hf``, or a ``data.root`` folder written by ``save_to_disk`` or holding Parquet files."""
    d = cfg.data
    return d.source == "hf" or (d.source == "folder" and bool(d.root) and hf.is_hf_dataset(d.root))


def _hf_splits(cfg: Config) -> tuple[list[str], Samples, Samples, Samples | None]:
    d = cfg.data
    kind = "auto" if hf.is_hf_dataset(d.root) else "imagefolder"  # type: ignore[arg-type]
    classes, parts = hf.load_hf(d.root, kind=kind, image_column=d.image_column, label_column=d.label_column)  # type: ignore[arg-type]
    made = {
        split: Samples(name=split, labels=labels, array=images, origin=f"{d.root}:{split}")  # type: ignore[arg-type]
        for split, (images, labels) in parts.items()
    }
    if "validation" not in made:
        made["train"], made["validation"] = stratified_split(made["train"], d.val_fraction, cfg.seed)
        console.log(
            f"data: {d.root} has no validation split; held out {d.val_fraction:g} of each class (data.val_fraction)"
        )
    return classes, made["train"], made["validation"], made.get("test")


def hf_split(cfg: Config, root: str, split: str | None, classes: list[str]) -> Samples:
    """A split of a local Hugging Face dataset to score (``evaluate --data``): ``split``, else test,
    else validation; its classes must be the model's."""
    kind = "auto" if hf.is_hf_dataset(root) else "imagefolder"
    found, parts = hf.load_hf(root, kind=kind, image_column=cfg.data.image_column, label_column=cfg.data.label_column)
    name = split or ("test" if "test" in parts else "validation")
    if name not in parts:
        raise DataError(f"{root}: has no {name} split")
    if found != classes:
        raise DataError(f"{root}: its classes ({', '.join(found[:8])}) are not the model's ({', '.join(classes[:8])})")
    images, labels = parts[name]
    return Samples(name=name, labels=labels, array=images, origin=f"{root}:{name}")  # type: ignore[arg-type]


_NOT_SHAPES = "it is not empty and not a cnnzoo shapes data set, so no shapes are generated there"


def _read_shapes_root_as_folder(cfg: Config) -> bool:
    """A shapes config given ``data.root`` (``--data DIR``) that holds data of the user's own:
    cnnzoo never generates over it, and reads it as ``data.source: folder`` instead (class
    folders, a manifest, shards), saying so once. True when it switched the source."""
    d = cfg.data
    if d.source != "shapes" or not d.root or not shapes.holds_other_data(Path(d.root)):
        return False
    d.source = "folder"
    console.log(f"data: {d.root}: {_NOT_SHAPES}; reading it as your own images (data.source: folder)")
    return True


def _resolve_splits(
    cfg: Config, missing: list[str] | None = None
) -> tuple[list[str], Samples, Samples, Samples | None, int, str, dict[str, Any]]:
    """(classes, train, validation, test, skipped files, where, label kind) for any source."""
    d = cfg.data
    if _read_shapes_root_as_folder(cfg):
        try:
            return _resolve_splits(cfg, missing)
        except DataError as exc:
            raise DataError(f"{exc} ({d.root} was read as your own data: {_NOT_SHAPES})") from None
    if uses_shards(cfg):
        if not d.root:
            raise ConfigError(
                "data.root: not set; point it at a folder of shards or a pattern (shards/train-{0..9}.tar)"
            )
        classes, train, val, test = _shard_splits(d.root)
        return classes, train, val, test, 0, d.root if "{" in d.root else str(Path(d.root).resolve()), {}
    if uses_hf(cfg):
        if not d.root:
            raise ConfigError("data.root: not set; point it at the dataset's folder (save_to_disk, Parquet files)")
        classes, train, val, test = _hf_splits(cfg)
        return classes, train, val, test, 0, str(Path(d.root).resolve()), {}
    if uses_manifest(cfg):
        if not d.root:
            raise ConfigError("data.root: not set; point it at your manifest (a .csv, .tsv, .jsonl or .parquet file)")
        classes, train, val, test, kind = _manifest_splits(cfg, Path(d.root), missing)
        return classes, train, val, test, 0, str(Path(d.root).resolve()), kind
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
        return classes, train, val, test, skipped, str(root.resolve()), {}
    classes, train, val, root_text = _torchvision_splits(cfg)
    return classes, train, val, None, 0, root_text, {}


def load_data(cfg: Config, *, missing_ok: bool = False) -> DataSpec:
    """Resolve ``cfg.data`` into classes and splits (generating ``shapes`` on first use).
    ``missing_ok``: manifest rows whose image is absent are left out and listed in ``missing``
    (``data check``) instead of stopping."""
    d = cfg.data
    classes, train, val, test, skipped, root_text, kind = _resolve_splits(cfg, [] if missing_ok else None)
    if cfg.train.task == "multi" and train.label_sets is None:
        raise ConfigError(
            f"train.task: multi needs a manifest (a CSV with space-separated tags, or 0/1 columns); "
            f"{root_text} gives one class per image"
        )
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
        **kind,
    )


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def class_counts_text(classes: list[str], counts: list[int]) -> str:
    width = max(len(c) for c in classes)
    total = sum(counts) or 1
    return "\n".join(f"  {c:<{width}}  {n:>6}  {100 * n / total:5.1f}%" for c, n in zip(classes, counts))
