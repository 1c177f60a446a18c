"""``data.source: folder``: class folders in ImageFolder layout (``train/`` + ``validation/`` or
``val/``, optional ``test/``), or one folder of class folders split by ``data.val_fraction``.

Imports console, errors, preprocess and the sibling modules; torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...config import Config
from ...console import console, warn
from ...errors import ConfigError, DataError
from .. import preprocess
from ..manifest import MANIFEST_SUFFIXES
from .base import Source, Splits
from .samples import FileSamples, Samples, stratified_split

SPLIT_FOLDERS = {"validation": ("validation", "val"), "test": ("test",)}  # accepted folder names


class FolderSource(Source):
    """Class folders; the default ``data.source``, which other kinds are detected from."""

    name = "folder"
    root_hint = "point it at your image folder (class folders, or train/ and validation/ splits)"

    def folder(self) -> Path:
        return Path(self.root())

    def splits(self, missing: list[str] | None = None) -> Splits:
        root = self.folder()
        classes, train, val, test, skipped = _folder_splits(root, self.cfg)
        return Splits(classes=classes, train=train, val=val, test=test, skipped=skipped, where=str(root.resolve()))

    def class_names(self) -> list[str]:
        if not self.cfg.data.root:
            raise ConfigError("data.root: not set; point it at a folder of class folders (or set model.num_classes)")
        root = self.folder()
        if not root.is_dir():
            raise not_a_folder(root.resolve(), "data.root")
        check_layout(root)
        base = root / "train" if (root / "train").is_dir() else root
        return [p.name for p in class_dirs(base)]

    def single_label_split(self, data: str, split: str | None, classes: list[str]) -> Samples:
        return split_from_folder(Path(data), split, classes)


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
            hint = (
                f"; if images/ holds all your images, put a manifest beside it (images.csv with image and "
                f"label columns) and give --data {folder}"
                if names[0] == "images"
                else ""
            )
            raise DataError(
                f"{folder}: only one class folder ({names[0]}); a classifier needs at least "
                f"two classes, one folder each{hint}"
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
    return FileSamples(name=split, labels=labels, paths=paths), classes, skipped


def _folder_splits(root: Path, cfg: Config) -> tuple[list[str], Samples, Samples, Samples | None, int]:
    if not root.is_dir():
        raise not_a_folder(root.resolve(), "data.root")
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


def not_a_folder(path: Path, key: str) -> DataError:
    """The refusal of a ``path`` that should be a folder: a file named as a file, else not found."""
    if path.exists():
        return DataError(
            f"{key} {path}: a file, not a folder; a manifest is read as data when it is a "
            f"{', '.join(MANIFEST_SUFFIXES)} file, or a folder holding one beside images/"
        )
    return DataError(f"{key}: folder not found: {path}")


def split_from_folder(folder: Path, split: str | None, classes: list[str]) -> Samples:
    """``folder`` is a data root with split folders, or itself a folder of class folders."""
    if not folder.is_dir():
        raise not_a_folder(folder, "--data")
    wanted = [split] if split else ["test", "validation"]
    for name in wanted:
        for candidate in SPLIT_FOLDERS[name]:
            if (folder / candidate).is_dir():
                folder = folder / candidate
                break
        else:
            continue
        break
    else:
        if split and any((folder / n).is_dir() for names in SPLIT_FOLDERS.values() for n in names):
            raise DataError(f"--data {folder}: has no {split}/ split")
    present = [p.name for p in class_dirs(folder)] if folder.is_dir() else []
    missing = [c for c in classes if c not in present]
    extra = [c for c in present if c not in classes]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing class folder{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        if extra:
            parts.append(f"class folder{'s' if len(extra) > 1 else ''} {', '.join(extra)} unknown to the model")
        raise DataError(f"--data {folder}: {'; '.join(parts)}; the model's classes are {', '.join(classes)}")
    samples, _, skipped = scan_folder(folder, split or folder.name, classes)
    if skipped:
        console.warn(f"skipped {skipped} files that are not images under {folder}")
    return samples
