"""``data.source: manifest``: a CSV, TSV, JSON Lines or Parquet table naming each image and its
label(s) (:mod:`cnnzoo.data.manifest`), split by sibling files, a split column or ``val_fraction``.
A manifest at a URL is read from a local copy, its images fetched from the store
(:mod:`cnnzoo.data.remote_images`).

Imports config, console, errors, files, manifest, remote_images and the sibling modules; torch-free.
"""

from __future__ import annotations

import contextlib
import contextvars
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...config import Config
from ...console import console
from ...errors import DataError
from ...files import is_url
from .. import manifest, remote_images
from .base import Source, Splits, resolve_task
from .samples import FileSamples, Samples, UrlSamples, stratified_split


class ManifestSource(Source):
    """A manifest file; detected from a ``data.root`` (or ``--data``) that names one."""

    name = "manifest"
    root_hint = "point it at your manifest (a .csv, .tsv, .jsonl or .parquet file)"

    @classmethod
    def detects(cls, path: str) -> bool:
        """A manifest file, or a folder holding one beside ``images/`` (several: refused, named)."""
        return manifest.is_manifest(path) or manifest.folder_manifest(path) is not None

    def root(self) -> str:
        """The manifest file: ``data.root``, or the one the folder it names holds beside ``images/``
        (a URL as it is)."""
        root = super().root()
        return root if is_url(root) else str(manifest.manifest_file(root))

    def splits(self, missing: list[str] | None = None) -> Splits:
        root = self.root()
        with _read_from(self.cfg, root) as path:
            if Path(self.cfg.data.root or "").is_dir():
                console.log(f"data: {self.cfg.data.root}: reading the manifest {path.name} beside images/")
            classes, train, val, test, kind = _manifest_splits(self.cfg, path, missing, self.task)
        if is_url(root) and missing:  # rows named by the manifest's URL, not its local copy
            missing[:] = [m.replace(str(path.parent), posixpath.dirname(root), 1) for m in missing]
        where = root if is_url(root) else str(path.resolve())
        return Splits(classes=classes, train=train, val=val, test=test, where=where, kind=kind)

    def class_names(self) -> list[str]:
        with _read_from(self.cfg, self.root()) as path:
            return manifest.class_list(_manifest_parts(self.cfg, path)["train"])

    def split_to_score(
        self, data: str, split: str | None, classes: list[str], *, multi_label: bool
    ) -> tuple[Samples, str]:
        with _read_from(self.cfg, data) as path:
            samples = manifest_split(self.cfg, path, split, classes, multi_label=multi_label)
        return samples, data if is_url(data) else str(path)


@contextlib.contextmanager
def _read_from(cfg: Config, root: str) -> Iterator[Path]:
    """The manifest file to read: ``root`` itself (or the one its folder holds), or the local copy
    of a remote one, whose image cells then resolve to URLs and whose messages name the URL."""
    if not is_url(root):
        yield manifest.manifest_file(root)
        return
    local = remote_images.local_manifest(root, cfg.data.cache_dir)
    token = _REMOTE.set((root, local))
    try:
        yield local
    except DataError as exc:  # name the manifest the user gave, not its local copy
        raise type(exc)(str(exc).replace(str(local.parent), posixpath.dirname(root))) from None
    finally:
        _REMOTE.reset(token)


# (remote manifest URL, its local copy) while one is read: its image cells resolve against the URL
_REMOTE: contextvars.ContextVar[tuple[str, Path] | None] = contextvars.ContextVar("remote_manifest", default=None)


def _read_manifest(cfg: Config, path: Path, *, labels_required: bool = True) -> manifest.Manifest:
    d = cfg.data
    remote = _REMOTE.get()
    table = manifest.read_manifest(
        path,
        image_column=d.image_column,
        label_column=d.label_column,
        images_dir=None if remote else d.images_dir,
        labels_required=labels_required,
    )
    return _at_urls(cfg, table)


def _at_urls(cfg: Config, table: manifest.Manifest) -> manifest.Manifest:
    """A remote manifest's image cells as URLs: objects beside it (or under ``data.images_dir``)."""
    remote = _REMOTE.get()
    if remote:
        bases = remote_images.image_bases(remote[0], cfg.data.images_dir)
        table.paths, table.bases = remote_images.image_urls(table.names, bases), bases  # type: ignore[assignment]
    return table


def manifest_samples(
    table: manifest.Manifest,
    classes: list[str],
    split: str,
    *,
    missing: list[str] | None = None,
    cache: remote_images.ImageCache | None = None,
) -> Samples:
    """A manifest's rows as a split: its files, and its labels as class indices (the first one in
    ``labels``, all of them in ``label_sets``). Every image must exist, unless ``missing`` is a
    list: rows without their image are then left out and named there. ``cache``: where fetched
    remote images are kept (``data.remote_cache``)."""
    if missing is None:
        table.check_files()
    else:
        if split != "test" and not any(table.paths):
            table.check_files()  # none found: name them, rather than report a split with nothing in it
        missing.extend(f"{table.where(i)} ({table.names[i]})" for i, p in enumerate(table.paths) if not p)
        table = table.subset([i for i, p in enumerate(table.paths) if p])
    label_sets = manifest.label_indices(table, classes)
    labels = [indices[0] if indices else -1 for indices in label_sets]  # -1: a one-hot row with no class
    if any(map(is_url, table.paths)):
        return UrlSamples(name=split, labels=labels, paths=list(table.paths), label_sets=label_sets, cache=cache)
    return FileSamples(name=split, labels=labels, paths=list(table.paths), label_sets=label_sets)


def manifest_split(
    cfg: Config, path: Path, split: str | None, classes: list[str], *, multi_label: bool = False
) -> Samples:
    """A labelled manifest to score (``evaluate --data test.csv``): its rows of ``split`` (default:
    test, else validation) when it has a split column, else all of them; columns as ``cfg`` names them.
    A single-label model's rows need one label each; a multi-label model's may have any number."""
    table = manifest.read_manifest(path, image_column=cfg.data.image_column, label_column=cfg.data.label_column)
    table = _at_urls(cfg, table)
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
    cfg: Config, path: Path, missing: list[str] | None, task: str
) -> tuple[list[str], Samples, Samples, Samples | None, dict[str, Any]]:
    """(classes, train, validation, test, label kind: ``multi_label`` and ``one_hot``) from a manifest;
    ``missing`` as in :func:`manifest_samples`; ``task`` as for :func:`.base.resolve_task`."""
    parts = _manifest_parts(cfg, path)
    classes = manifest.class_list(parts["train"])
    if len(classes) < 2:
        raise DataError(f"{path}: only one class ({', '.join(classes)}); a classifier needs at least two")
    data_multi = any(part.multi_label or _one_hot_with_empty_rows(part) for part in parts.values())
    multi_label = resolve_task(task, str(path), data_multi)
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
    cache = remote_images.image_cache(cfg.data.cache_dir, cfg.data.remote_cache)
    train = manifest_samples(parts["train"], classes, "train", missing=missing, cache=cache)
    test = manifest_samples(parts["test"], classes, "test", missing=missing, cache=cache) if "test" in parts else None
    if "validation" in parts:
        val = manifest_samples(parts["validation"], classes, "validation", missing=missing, cache=cache)
    else:
        everything = train
        train, val = stratified_split(everything, cfg.data.val_fraction, cfg.seed)
        console.log(
            f"data: {path} has no validation rows; held out {cfg.data.val_fraction:g} of each class "
            f"({len(val)} of {len(everything)} images, data.val_fraction)"
        )
    kind = {"multi_label": multi_label, "one_hot": table.one_hot, "digest": manifest.file_digest(path)}
    return classes, train, val, test, {**kind, "missing": missing} if missing else kind


def _one_hot_with_empty_rows(table: manifest.Manifest) -> bool:
    """0/1 columns where some row has no 1: findings of which an image may have none (multi-label)."""
    return table.one_hot and any(not labels for labels in table.labels or [])
