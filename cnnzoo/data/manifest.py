"""Manifests: a table (CSV, TSV, JSON Lines, Parquet) that names each image and its label(s).

What a manifest is read into (:class:`Manifest`): the image column's values as written, the
files they resolve to (beside the manifest, in an ``images/`` folder beside it, or in
``data.images_dir``; with or without an extension), each row's labels as a list of class
names (one per row; several in one cell separated by ``|``, ``;`` or spaces; or one 0/1 column
per class) and its split (a ``split`` column). Columns are detected by their usual names or
named in the config (``data.image_column``, ``data.label_column``); a named column that does not
exist gets a did-you-mean. :func:`label_indices` turns names into class indices, one list per
row, so that a multi-hot target is one step away.

The file is read by :mod:`cnnzoo.data.manifest_files`. A cell that names something is text or a
number: NaN and null are an empty cell, and anything else (bytes, a list of lists, an object,
true/false, infinity) is refused naming the file, row and column, never made into a class or a
file name no one wrote.

Torch-free: imports floors 0-1 and :mod:`cnnzoo.data.preprocess` only (``predict --data
test.csv`` reads the image column without torch). Parquet needs pyarrow (``cnnzoo[parquet]``).
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from . import preprocess
from .manifest_files import Table, read_table

MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet")
IMAGE_COLUMNS = (
    "image", "image_name", "image_id", "image_path", "filename", "file_name", "file", "filepath", "path",
    "img", "images", "id",
)  # fmt: skip
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "category", "tags", "target", "y")
SPLIT_COLUMNS = ("split", "subset")
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "validation": "validation", "val": "validation", "valid": "validation", "dev": "validation",
    "test": "test", "testing": "test",
}  # fmt: skip
SPLIT_FILES = {"validation": ("validation", "val", "valid"), "test": ("test",)}  # siblings of train.<ext>
PLURAL_LABEL_COLUMNS = ("labels", "tags")  # their cells hold several labels separated by spaces
_SEPARATOR = re.compile(r"\s*[|;]\s*")
_ONE_HOT_VALUES = {"0", "1", "0.0", "1.0", "true", "false"}
_SHOWN = 3  # rows named in a message before "..."


def is_manifest(path: str | Path) -> bool:
    """A path that names a manifest file (by its suffix), existing or not."""
    return Path(path).suffix.lower() in MANIFEST_SUFFIXES


def pick_column(table: Table, named: str | None, candidates: tuple[str, ...], key: str) -> str | None:
    """The column ``named`` in the config (did-you-mean when absent), else the first usual name present."""
    if named is not None:
        if named in table.columns:
            return named
        close = difflib.get_close_matches(named, table.columns, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise DataError(f"{table.path}: no column {named!r} ({key}); {hint}the columns are {', '.join(table.columns)}")
    lower = {c.lower(): c for c in table.columns}
    return next((lower[c] for c in candidates if c in lower), None)


@dataclass(kw_only=True)
class Manifest:
    """A manifest, read: per row, the image as written, its file ('' when not found), its line
    number, its labels (class names; None when the manifest has no labels) and its split."""

    path: Path
    image_column: str
    label_column: str | None
    one_hot_columns: list[str]
    names: list[str]
    paths: list[str]
    lines: list[int]
    labels: list[list[str]] | None
    splits: list[str] | None
    bases: list[Path]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def one_hot(self) -> bool:
        return bool(self.one_hot_columns)

    @property
    def multi_label(self) -> bool:
        """Any row with several labels (one-hot columns with one 1 per row are single-label)."""
        return any(len(labels) > 1 for labels in self.labels or [])

    def check_one_label_each(self) -> None:
        """Single-label data: a row with no label (an empty cell, a one-hot row with no 1) is named."""
        for i, labels in enumerate(self.labels or []):
            if labels:
                continue
            if self.one_hot:
                raise DataError(
                    f"{self.where(i)}: no class column is 1 ({', '.join(self.one_hot_columns[:6])}...); "
                    f"mark its class or remove the row"
                )
            raise DataError(
                f"{self.where(i)}: empty {self.label_column!r}; give its label or remove the row (or, if an "
                f"image may have none of the classes, set train.task: multi)"
            )

    def where(self, i: int) -> str:
        return f"{self.path} row {self.lines[i]}"

    def subset(self, keep: list[int]) -> Manifest:
        pick = lambda values: [values[i] for i in keep] if values is not None else None  # noqa: E731
        return Manifest(
            path=self.path, image_column=self.image_column, label_column=self.label_column,
            one_hot_columns=self.one_hot_columns, names=pick(self.names), paths=pick(self.paths),
            lines=pick(self.lines), labels=pick(self.labels), splits=pick(self.splits), bases=self.bases,
        )  # fmt: skip

    def check_files(self) -> None:
        """One line counting the rows whose image was not found, the first few named."""
        missing = [i for i, p in enumerate(self.paths) if not p]
        if not missing:
            return
        shown = ", ".join(f"row {self.lines[i]} ({self.names[i]})" for i in missing[:_SHOWN])
        more = ", ..." if len(missing) > _SHOWN else ""
        raise DataError(
            f"{self.path}: {len(missing)} of {len(self)} images not found: {shown}{more}; "
            f"looked in {' and '.join(f'{b}/' for b in self.bases)} (set data.images_dir if they are elsewhere), "
            f"or remove those rows"
        )


def read_manifest(
    path: str | Path,
    *,
    image_column: str | None = None,
    label_column: str | list[str] | None = None,
    images_dir: str | Path | None = None,
    labels_required: bool = True,
) -> Manifest:
    """Read a manifest: its columns detected (or as named), image files resolved, labels split."""
    table = read_table(Path(path))
    image = pick_column(table, image_column, IMAGE_COLUMNS, "data.image_column")
    if image is None:
        raise DataError(
            f"{table.path}: no image column ({', '.join(IMAGE_COLUMNS[:6])}, ...); the columns are "
            f"{', '.join(table.columns)}; name it with data.image_column"
        )
    cells = table.column(image)
    names = [_text(table, image, i, value, _NAME_IMAGE) for i, value in enumerate(cells)]
    for i, name in enumerate(names):
        if not name:
            raise DataError(f"{table.path} row {table.line(i)}: empty {image!r}; name the image or remove the row")
    split_column = pick_column(table, None, SPLIT_COLUMNS, "split")
    bases = image_bases(table.path, images_dir)
    label, one_hot, labels = _read_labels(table, label_column, exclude={image, split_column}, required=labels_required)
    return Manifest(
        path=table.path,
        image_column=image,
        label_column=label,
        one_hot_columns=one_hot,
        names=names,
        paths=resolve_images(names, bases),
        lines=[table.line(i) for i in range(len(names))],
        labels=labels,
        splits=_read_splits(table, split_column) if split_column else None,
        bases=bases,
    )


_NAME_IMAGE = "name the image file (text) or remove the row"
_NAME_CLASSES = "a label is a class name (text) or a list of them; fix the cell or remove the row"


def _cell_text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _text(table: Table, column: str, i: int, value: Any, fix: str) -> str:
    """A cell that names something (an image, a class) as text: text or a number as written
    (None and NaN, a missing value: empty, as an empty CSV cell). Anything else, which ``str()``
    would turn into a name no one wrote (infinity, bytes, a list or an object, true/false), is
    refused naming the file, row and column."""
    if type(value) is str:
        return value.strip()
    if value is None or (type(value) is float and math.isnan(value)):  # pandas writes a missing value as NaN
        return ""
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return str(value)
    raise DataError(f"{table.path} row {table.line(i)}: {column!r} is {_shown(value)}; {fix}")


def _shown(value: Any) -> str:
    """A cell's value in a message: NaN as NaN, anything else as Python writes it, cut at 40 characters."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN (a missing value)"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _read_labels(
    table: Table, named: str | list[str] | None, *, exclude: set[str | None], required: bool
) -> tuple[str | None, list[str], list[list[str]] | None]:
    """(label column, one-hot columns, each row's labels): a label column, or 0/1 columns."""
    if isinstance(named, list):
        twice = next((c for i, c in enumerate(named) if c in named[:i]), None)
        if twice is not None:
            raise DataError(f"data.label_column: {twice!r} is named twice; name each class column once")
        for column in named:
            pick_column(table, column, (), "data.label_column")
        return None, list(named), _one_hot_labels(table, named)
    label = pick_column(table, named, LABEL_COLUMNS, "data.label_column")
    if label is not None:
        return label, [], _split_cells(table, label)
    one_hot = [c for c in table.columns if c not in exclude and _is_zero_one(table, c)]
    if len(one_hot) >= 2:
        return None, one_hot, _one_hot_labels(table, one_hot)
    if required:
        raise DataError(
            f"{table.path}: no label column ({', '.join(LABEL_COLUMNS[:5])}, ...) and no 0/1 column per class; "
            f"the columns are {', '.join(table.columns)}; name it with data.label_column"
        )
    return None, [], None


def _is_zero_one(table: Table, column: str) -> bool:
    return all(_cell_text(value).lower() in _ONE_HOT_VALUES for value in table.column(column))


def _one_hot_labels(table: Table, columns: list[str]) -> list[list[str]]:
    labels = []
    cells = [table.column(c) for c in columns]
    for i in range(len(table)):
        values = {c: _cell_text(cell[i]).lower() for c, cell in zip(columns, cells)}
        bad = next((k for k, (c, v) in enumerate(values.items()) if v not in _ONE_HOT_VALUES), None)
        if bad is not None:
            raise DataError(
                f"{table.path} row {table.line(i)}: {columns[bad]!r} is {_shown(cells[bad][i])}; "
                f"one-hot columns hold 0 or 1"
            )
        labels.append([c for c, v in values.items() if v in ("1", "1.0", "true")])
    return labels


def _split_cells(table: Table, column: str) -> list[list[str]]:
    """Each row's labels: a JSON list as it is; text split at ``|`` or ``;``, and at spaces when
    the column is named for several labels (``labels``, ``tags``) or every part of a spaced cell
    is a label on its own elsewhere (a class named ``Not sure`` stays whole). Rows with the same
    text share one list (a large manifest has few distinct cells)."""
    cells = table.column(column)
    texts = [_label_text(table, column, i, c) for i, c in enumerate(cells)]
    distinct = {t for t in texts if t}
    whole = {t for t in distinct if not _SEPARATOR.search(t) and " " not in t}
    spaced = [t.split() for t in distinct if not _SEPARATOR.search(t) and " " in t]
    split_spaces = column.lower() in PLURAL_LABEL_COLUMNS or (
        bool(spaced) and all(part in whole for parts in spaced for part in parts)
    )
    parsed: dict[str, list[str]] = {}
    labels = []
    for i, (cell, text) in enumerate(zip(cells, texts)):
        if text is None:  # a JSON or Parquet list
            labels.append(
                list(dict.fromkeys(p for p in (_text(table, column, i, v, _NAME_CLASSES) for v in cell) if p))
            )
            continue
        if text not in parsed:
            parts = _SEPARATOR.split(text) if _SEPARATOR.search(text) else text.split() if split_spaces else [text]
            parsed[text] = list(dict.fromkeys(p for p in parts if p))  # none: refused unless multi-label
        labels.append(parsed[text])
    return labels


def _label_text(table: Table, column: str, i: int, cell: Any) -> str | None:
    """A label cell as text, or None for a list of labels (whose items must be text or numbers)."""
    if isinstance(cell, list):
        if not all(type(v) is str or type(v) is int for v in cell):
            raise DataError(f"{table.path} row {table.line(i)}: {column!r} is {_shown(cell)}; {_NAME_CLASSES}")
        return None
    return _text(table, column, i, cell, _NAME_CLASSES)


def _read_splits(table: Table, column: str) -> list[str]:
    splits = []
    for i, value in enumerate(table.column(column)):
        text = _cell_text(value).lower()
        if text not in SPLIT_NAMES:
            shown = repr(text) if isinstance(value, str) else _shown(value)
            raise DataError(
                f"{table.path} row {table.line(i)}: {column!r} is {shown}; use train, validation (val) or test"
            )
        splits.append(SPLIT_NAMES[text])
    return splits


def image_bases(manifest: Path, images_dir: str | Path | None) -> list[Path]:
    """Where image values are looked up: ``images_dir`` when given, else beside the manifest, then
    an ``images/`` folder beside it."""
    if images_dir is not None:
        return [Path(images_dir)]
    return [manifest.parent, manifest.parent / "images"]


def resolve_images(names: list[str], bases: list[Path]) -> list[str]:
    """Each name's file ('' when none): under the first base that has it, as written or with an
    image extension added. The rule that found the last file is tried first (one stat per row)."""
    found: list[str] = []
    rules = [(b, e) for b in bases for e in ("", *preprocess.IMAGE_EXTENSIONS)]
    last = rules[0]
    for name in names:
        path = ""
        if os.path.isabs(name):
            path = name if os.path.isfile(name) else ""
        else:
            for base, ext in [last, *rules]:
                if ext and preprocess.is_image_file(name):
                    continue
                candidate = os.path.join(base, name + ext)
                if os.path.isfile(candidate):
                    path, last = candidate, (base, ext)
                    break
        found.append(path)
    return found


def folder_manifest(folder: str | Path) -> Path | None:
    """The manifest a folder holds beside an ``images/`` folder (a Kaggle-style data set:
    ``images.csv`` + ``images/``), or None when ``folder`` is not such a folder. Several manifests
    are refused in one line naming them, unless they are one manifest and its split siblings
    (``images.csv`` or ``train.csv`` with ``validation.csv`` and ``test.csv``)."""
    folder = Path(folder)
    if not (folder / "images").is_dir():
        return None
    found = sorted(p for p in folder.iterdir() if is_manifest(p) and not p.name.startswith(".") and p.is_file())
    if len(found) <= 1:
        return found[0] if found else None
    for train in found:
        if set(found) == {train, *split_files(train).values()}:
            return train
    shown = ", ".join(p.name for p in found[:6]) + (", ..." if len(found) > 6 else "")
    raise DataError(
        f"{folder}: {len(found)} manifests beside images/ ({shown}); name the one to read, "
        f"e.g. --data {folder / found[0].name} (data.root)"
    )


def manifest_file(path: str | Path) -> Path:
    """``path`` as a manifest file: itself, or the manifest a folder holds beside ``images/``."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = folder_manifest(path)
    if found is None:
        raise DataError(
            f"{path}: a folder holding no manifest beside an images/ folder; give the manifest file "
            f"({', '.join(MANIFEST_SUFFIXES)})"
        )
    return found


def file_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of a manifest file's bytes: what a model keeps to know, later, that a manifest
    is the one it trained on (64 characters for any number of rows; a 100 MB table hashes in well
    under a second)."""
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def split_files(path: Path) -> dict[str, Path]:
    """Sibling manifests of a ``train.<ext>``, or of the manifest of a Kaggle-style folder (beside
    ``images/``: ``images.csv`` with ``test.csv``): ``validation.<ext>`` (or val, valid), ``test.<ext>``."""
    stem = path.stem.lower()
    if stem in {s for stems in SPLIT_FILES.values() for s in stems}:
        return {}
    if stem not in ("train", "training") and not (path.parent / "images").is_dir():
        return {}
    found = {}
    for split, stems in SPLIT_FILES.items():
        for stem in stems:
            candidate = path.with_name(stem + path.suffix)
            if candidate.is_file():
                found[split] = candidate
                break
    return found


def class_list(manifest: Manifest) -> list[str]:
    """The classes: the one-hot columns in order, else every label seen, sorted."""
    if manifest.one_hot:
        return list(manifest.one_hot_columns)
    return sorted({label for labels in manifest.labels or [] for label in labels})


def check_label_separator(path: Path, classes: list[str]) -> None:
    """A multi-label class name may not hold ``|``: it separates labels, in a manifest cell and in
    ``predict --csv`` when a class name has a space (a JSON list or a one-hot header could name one)."""
    bad = next((c for c in classes if "|" in c), None)
    if bad is not None:
        raise DataError(
            f"{path}: the class {bad!r} holds '|', which separates an image's labels (in a manifest cell, in "
            f"predict --csv); rename the class"
        )


def label_indices(manifest: Manifest, classes: list[str]) -> list[list[int]]:
    """Each row's labels as class indices; a label outside ``classes`` is named with its row. Rows
    that share one list of names (the same cell) share one list of indices."""
    index = {name: i for i, name in enumerate(classes)}
    out: list[list[int]] = []
    done: dict[int, list[int]] = {}  # by id() of a row's list of names, which the manifest keeps alive
    for i, labels in enumerate(manifest.labels or []):
        if id(labels) in done:
            out.append(done[id(labels)])
            continue
        unknown = [label for label in labels if label not in index]
        if unknown:
            raise DataError(
                f"{manifest.where(i)}: label {unknown[0]!r} is not one of the training classes "
                f"({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}); fix the label or remove the row"
            )
        out.append(done.setdefault(id(labels), [index[label] for label in labels]))
    return out
