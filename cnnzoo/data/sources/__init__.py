"""Sources: the images and classes a config's ``data`` section names, one class per kind.

The registry :data:`SOURCES` maps each ``data.source`` to its :class:`~.base.Source` class: a
folder in ImageFolder layout (:mod:`.folder`), the built-in ``shapes`` (:mod:`.shapes_source`),
torchvision's MNIST, Fashion-MNIST and CIFAR-10 (:mod:`.torchvision_sets`), a manifest
(:mod:`.manifest_source`), a local Hugging Face dataset (:mod:`.hf_source`) and WebDataset shards
(:mod:`.shard_source`). ``data.source: folder`` with a ``data.root`` that holds another kind is
read as that kind: the kinds are asked in the registry's order (:func:`kind_of_path`), the one
order training, ``evaluate --data``, ``data check`` and ``summary`` share. Adding a source is one
module with one :class:`~.base.Source` subclass and one :func:`register` line.

:func:`load_data` resolves the whole section into a :class:`~.samples.DataSpec` (classes, splits,
channels, size, normalisation); with ``data.folds`` and ``data.fold`` the splits are fold i of K of
the pooled labelled images (:mod:`.fold_split`). Floor 5 (data): imports config, console, errors and the data
modules; torch-free.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ...config import Config, load_config
from ...config.schema import SOURCE_NAMES
from ...console import console, warn
from ...errors import ConfigError, DataError
from ...files import is_url
from .. import preprocess
from . import fold_split
from .base import Pretrained, Source, Splits, resolve_task
from .folder import SPLIT_FOLDERS, FolderSource, check_layout, class_dirs, scan_folder, split_from_folder
from .hf_source import HFSource, hf_split
from .manifest_source import ManifestSource, manifest_samples, manifest_split
from .samples import ArraySamples, DataSpec, FileSamples, Samples, ShardSamples, stratified_split
from .shapes_source import _NOT_SHAPES, ShapesSource, reads_user_data, source_name
from .shard_source import ShardSource, shard_samples, shard_split
from .torchvision_sets import CIFAR10_CLASSES, Cifar10Source, FashionMnistSource, MnistSource

__all__ = [
    "CIFAR10_CLASSES",
    "SOURCES",
    "SPLIT_FOLDERS",
    "DataSpec",
    "Pretrained",
    "ArraySamples",
    "FileSamples",
    "Samples",
    "ShardSamples",
    "Source",
    "Splits",
    "check_layout",
    "class_counts_text",
    "class_dirs",
    "class_names",
    "hf_split",
    "kind_of_path",
    "load_data",
    "manifest_samples",
    "manifest_split",
    "register",
    "resolve_task",
    "rule_config",
    "split_rule",
    "scan_folder",
    "shard_samples",
    "shard_split",
    "source_for",
    "split_from_folder",
    "stratified_split",
]

SOURCES: dict[str, type[Source]] = {}


def register(cls: type[Source]) -> type[Source]:
    """Name ``cls`` as ``data.source: <cls.name>`` (usable as a class decorator); a config may
    name it from then on."""
    SOURCES[cls.name] = cls
    if cls.name not in SOURCE_NAMES:
        SOURCE_NAMES.append(cls.name)
    return cls


# the order is the one detection order: the kinds found by looking first, then the named-only ones
for _cls in (ShardSource, HFSource, ManifestSource, FolderSource, ShapesSource):
    register(_cls)
for _cls in (MnistSource, FashionMnistSource, Cifar10Source):
    register(_cls)


def kind_of_path(path: str) -> type[Source]:
    """The source a path holds: the first registered kind that detects it, else class folders. A
    URL holds shards or a manifest (:mod:`cnnzoo.data.remote`), never class folders."""
    found = next((cls for cls in SOURCES.values() if cls.detects(path)), None)
    if found is None and is_url(path):
        raise DataError(
            f"{path}: holds no WebDataset shard set (dataset.json, train/*.tar) and is not a manifest "
            f"(.csv, .parquet, ...); give the shards' prefix, a brace pattern or a manifest's URL"
        )
    return found or FolderSource


def source_for(cfg: Config, *, task: str = "auto") -> Source:
    """The source ``cfg.data`` names: ``data.source``, or for ``folder`` what ``data.root`` holds
    (``task``: as for :func:`load_data`)."""
    d = cfg.data
    name = source_name(d)
    if name != d.source:
        console.log(f"data: {d.root}: {_NOT_SHAPES}; reading it as your own images (data.source: folder)")
    if name == "folder" and d.root:
        return kind_of_path(d.root)(cfg, task=task)
    if name not in SOURCES:
        raise ConfigError(f"data.source: {name!r} is not one of {', '.join(SOURCES)}")
    return SOURCES[name](cfg, task=task)


def class_names(cfg: Config) -> list[str]:
    """The classes a config's data has, cheaply (no image is decoded)."""
    return source_for(cfg).class_names()


def split_to_score(
    cfg: Config, data: str, split: str | None, classes: list[str], *, multi_label: bool = False
) -> tuple[Samples, str]:
    """``evaluate --data DATA``: the labelled split to score, read as the kind ``DATA`` holds
    (columns and settings from ``cfg``, a checkpoint's config), and where it is."""
    return kind_of_path(data)(cfg).split_to_score(data, split, classes, multi_label=multi_label)


def build_loaders(cfg: Config, spec: DataSpec, *, augment: Any, cuda: bool) -> Any:
    """Training's loaders, built as ``spec``'s source builds them (cached or streamed)."""
    return SOURCES[spec.source](cfg).build_loaders(spec, augment=augment, cuda=cuda)


def scoring_loader(
    samples: Samples,
    classes: list[str],
    *,
    size: tuple[int, int],
    channels: int,
    batch_size: int,
    cuda: bool,
    fit: preprocess.Fit = preprocess.SQUASH,
) -> tuple[Any, bool]:
    """A loader over a split to score (images brought to ``size`` as ``fit`` says), and whether it
    yields each image's position (True) or its label (False: a stream, whose samples have no
    positions to go back to)."""
    if samples.streamed:
        from .. import shards  # lazy: the stream is torch's

        loader = shards.eval_loader(samples, classes, size=size, channels=channels, batch_size=batch_size, fit=fit)
        return loader, False
    from .. import loaders  # lazy: torch's

    numbered = dataclasses.replace(samples, labels=list(range(len(samples))))  # labelled by position
    dataset = loaders.ImageDataset(numbered, size, channels, fit=fit)
    workers = loaders.choose_workers("auto", cached=False, augmented=False, cuda=cuda)
    return loaders.make_loader(dataset, batch_size, shuffle=False, seed=0, workers=workers, pin_memory=cuda), True


def _splits(cfg: Config, missing: list[str] | None, task: str) -> tuple[Splits, str]:
    """The source's splits, and its registry name; a shapes root read as the user's own data
    says so in any refusal."""
    switched = reads_user_data(cfg.data)
    source = source_for(cfg, task=task)
    try:
        return source.splits(missing), source.name
    except DataError as exc:
        if not switched:
            raise
        raise DataError(f"{exc} ({cfg.data.root} was read as your own data: {_NOT_SHAPES})") from None


def load_data(
    cfg: Config, *, task: str = "auto", missing_ok: bool = False, pretrained: Pretrained | None = None
) -> DataSpec:
    """Resolve ``cfg.data`` into classes and splits (generating ``shapes`` on first use).
    ``task``: ``single``, ``multi`` or ``auto`` (what the data says), the trainer's ``train.task``,
    which the caller passes (the data layer reads no training settings). ``missing_ok``: manifest
    rows whose image is absent are left out and listed in ``missing`` (``data check``) instead of
    stopping. ``pretrained``: a backbone's preprocessing, which the
    caller looks up (:func:`cnnzoo.training.inputs.load_data`): it sizes the input when nothing
    else does, and normalises it (``data.normalize: auto``)."""
    d = cfg.data
    found, name = _splits(cfg, [] if missing_ok else None, task)
    if task == "multi" and found.train.label_sets is None and not found.kind.get("multi_label"):
        raise ConfigError(
            f"train.task: multi needs a manifest (a CSV with space-separated tags, or 0/1 columns); "
            f"{found.where} gives one class per image"
        )
    found, pool = fold_split.held_out_fold(found, d, seed=cfg.seed, task=task)  # data.folds: fold i of K
    train, root_text, skipped = found.train, found.where, found.skipped
    if skipped:
        warn(
            f"skipped {skipped} file{' that is' if skipped == 1 else 's that are'} not images "
            f"({', '.join(preprocess.IMAGE_EXTENSIONS)}) under {root_text}"
        )
    if len(found.val) == 0:
        raise DataError(f"{root_text}: the validation split is empty; add images or raise data.val_fraction")
    channels, size = resolve_input(cfg, pretrained)
    if pretrained is not None and d.normalize == "auto":
        mean, std = preprocess.channel_stats(pretrained.mean, pretrained.std, channels)
        console.log(
            f"data: {pretrained.source} preprocessing: mean {_short(mean)}, std {_short(std)}, {size[0]}x{size[1]}"
        )
    else:
        mean, std = preprocess.resolve_normalization(d.normalize, channels)
    return DataSpec(
        classes=found.classes,
        train=train,
        val=found.val,
        test=found.test,
        channels=channels,
        image_size=size,
        mean=mean,
        std=std,
        resize=d.resize,
        root=root_text,
        skipped_files=skipped,
        source=name,
        saved_source=source_name(d),
        saved_root=root_text if source_name(d) == "folder" and d.root else d.root,
        split_rule=split_rule(cfg, name, root_text if d.root else None),
        fold_pool=pool,
        **found.kind,
    )


# the data keys a split depends on (folds and fold since k-fold training; a model without them had none)
SPLIT_KEYS = ("val_fraction", "image_column", "label_column", "images_dir", "folds", "fold")


def split_rule(cfg: Config, source: str, root: str | None) -> dict[str, Any]:
    """How ``cfg``'s data was read and split, as a model keeps it (``meta.data``): the source read,
    its root, the seed and the data keys the split depends on; :func:`rule_config` reads it back."""
    d = cfg.data
    return {"source": source, "root": root, "seed": cfg.seed, **{key: getattr(d, key) for key in SPLIT_KEYS}}


def rule_config(rule: dict[str, Any], *, root: str | None = None, **data: Any) -> Config:
    """The config that reads data as ``rule`` (a model's ``meta.data``) says, at ``root`` if given
    (the same data moved or named again), with ``data`` added (the model's input size)."""
    keys = {key: rule[key] for key in SPLIT_KEYS if rule.get(key) is not None}
    section = {**keys, **data, "root": root or rule.get("root"), "source": rule.get("source") or "folder"}
    return load_config({"seed": int(rule.get("seed") or 0), "data": section})


def resolve_input(cfg: Config, pretrained: Pretrained | None = None) -> tuple[int, tuple[int, int]]:
    """Channels and (H, W) from ``data`` and ``model.input``, which must agree where both are set.

    Unset, they follow a backbone's weights (RGB at their input size), else the source's native
    size. ``pretrained`` is the backbone's preprocessing, which the caller looks up
    (:func:`cnnzoo.training.inputs.resolve_input`).
    """
    d, m = cfg.data, cfg.model
    native = SOURCES[source_name(d)].native if source_name(d) in SOURCES else None
    if d.image_size is not None or m.input:
        pretrained = None  # not needed
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


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def class_counts_text(classes: list[str], counts: list[int]) -> str:
    width = max(len(c) for c in classes)
    total = sum(counts) or 1
    return "\n".join(f"  {c:<{width}}  {n:>6}  {100 * n / total:5.1f}%" for c, n in zip(classes, counts))
