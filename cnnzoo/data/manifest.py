"""Manifests: a table (CSV, TSV, JSON Lines, Parquet) that names each image and its label(s).

What a manifest is read into (:class:`Manifest`): the image column's values as written, the
files they resolve to (beside the manifest, in an ``images/`` folder beside it, or in
``data.images_dir``; with or without an extension), each row's labels as a list of class
names (one per row; several in one cell separated by ``|``, ``;`` or spaces; or one 0/1 column
per class) and its split (a ``split`` column). Columns are detected by their usual names or
named in the config (``data.image_column``, ``data.label_column``); a named column that does not
exist gets a did-you-mean. :func:`label_indices` turns names into class indices, one list per
row, so that a multi-hot target is one step away.

Torch-free: imports floors 0-1 and :mod:`cnnzoo.data.preprocess` only (``predict --data
test.csv`` reads the image column without torch). Parquet needs pyarrow (``cnnzoo[parquet]``).
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError
from . import preprocess

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


@dataclass(kw_only=True)
class Table:
    """A manifest file's rows as read, and the line number of its first row (for messages)."""

    path: Path
    columns: list[str]
    rows: list[dict[str, Any]]
    first_line: int

    def line(self, i: int) -> int:
        return self.first_line + i


def read_table(path: Path) -> Table:
    """The rows of a CSV, TSV, JSON Lines or Parquet file, by its suffix."""
    if not path.is_file():
        raise DataError(f"{path}: manifest not found" if not path.exists() else f"{path}: not a file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            table = _read_delimited(path, "\t" if suffix == ".tsv" else ",")
        elif suffix == ".parquet":
            table = _read_parquet(path)
        else:
            table = _read_jsonl(path)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save the manifest as UTF-8") from None
    if not table.rows:
        raise DataError(f"{path}: the manifest has no rows; add one row per image")
    return table


def _read_delimited(path: Path, delimiter: str) -> Table:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        try:
            rows = list(reader)
        except csv.Error as exc:
            raise DataError(f"{path}: line {reader.line_num}: {exc}; fix the CSV quoting") from None
        columns = [c.strip() for c in reader.fieldnames or []]
    if not columns:
        raise DataError(f"{path}: empty file; the first line names the columns (e.g. image,label)")
    rows = [{k.strip(): v for k, v in row.items() if k is not None} for row in rows]
    return Table(path=path, columns=columns, rows=rows, first_line=2)


def _read_jsonl(path: Path) -> Table:
    rows, columns = [], {}
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except ValueError as exc:
                raise DataError(f"{path}: line {number}: not JSON ({exc}); one JSON object per line") from None
            if not isinstance(row, dict):
                raise DataError(f'{path}: line {number}: not a JSON object; one object per line, e.g. {{"image": ...}}')
            rows.append(row)
            columns.update(dict.fromkeys(row))
    return Table(path=path, columns=list(columns), rows=rows, first_line=1)


def _read_parquet(path: Path) -> Table:
    try:
        # lazy: pyarrow is an optional extra (~100 MB) only Parquet manifests need
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'cnnzoo[parquet]'") from None
    try:
        data = pq.read_table(path)
    except Exception as exc:  # pyarrow's errors have no common base
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    return Table(path=path, columns=list(data.column_names), rows=data.to_pylist(), first_line=1)


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
    names = [_cell_text(row.get(image)) for row in table.rows]
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


def _cell_text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _read_labels(
    table: Table, named: str | list[str] | None, *, exclude: set[str | None], required: bool
) -> tuple[str | None, list[str], list[list[str]] | None]:
    """(label column, one-hot columns, each row's labels): a label column, or 0/1 columns."""
    if isinstance(named, list):
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
    return all(_cell_text(row.get(column)).lower() in _ONE_HOT_VALUES for row in table.rows)


def _one_hot_labels(table: Table, columns: list[str]) -> list[list[str]]:
    labels = []
    for i, row in enumerate(table.rows):
        values = {c: _cell_text(row.get(c)).lower() for c in columns}
        bad = next((c for c, v in values.items() if v not in _ONE_HOT_VALUES), None)
        if bad is not None:
            raise DataError(
                f"{table.path} row {table.line(i)}: {bad!r} is {row.get(bad)!r}; one-hot columns hold 0 or 1"
            )
        labels.append([c for c, v in values.items() if v in ("1", "1.0", "true")])
    return labels


def _split_cells(table: Table, column: str) -> list[list[str]]:
    """Each row's labels: a JSON list as it is; text split at ``|`` or ``;``, and at spaces when
    the column is named for several labels (``labels``, ``tags``) or every part of a spaced cell
    is a label on its own elsewhere (a class named ``Not sure`` stays whole)."""
    cells = [table.rows[i].get(column) for i in range(len(table.rows))]
    texts = [None if isinstance(c, list) else _cell_text(c) for c in cells]
    whole = {t for t in texts if t and not _SEPARATOR.search(t) and " " not in t}
    spaced = [t.split() for t in texts if t and not _SEPARATOR.search(t) and " " in t]
    split_spaces = column.lower() in PLURAL_LABEL_COLUMNS or (
        bool(spaced) and all(part in whole for parts in spaced for part in parts)
    )
    labels = []
    for cell, text in zip(cells, texts):
        if text is None:
            parts = [_cell_text(v) for v in cell]
        elif _SEPARATOR.search(text):
            parts = _SEPARATOR.split(text)
        else:
            parts = text.split() if split_spaces else [text]
        labels.append(list(dict.fromkeys(p for p in parts if p)))  # none: refused unless multi-label
    return labels


def _read_splits(table: Table, column: str) -> list[str]:
    splits = []
    for i, row in enumerate(table.rows):
        value = _cell_text(row.get(column)).lower()
        if value not in SPLIT_NAMES:
            raise DataError(
                f"{table.path} row {table.line(i)}: {column!r} is {value!r}; use train, validation (val) or test"
            )
        splits.append(SPLIT_NAMES[value])
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


def split_files(path: Path) -> dict[str, Path]:
    """Sibling manifests of a ``train.<ext>``: ``validation.<ext>`` (or val, valid), ``test.<ext>``."""
    if path.stem.lower() not in ("train", "training"):
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


def label_indices(manifest: Manifest, classes: list[str]) -> list[list[int]]:
    """Each row's labels as class indices; a label outside ``classes`` is named with its row."""
    index = {name: i for i, name in enumerate(classes)}
    out = []
    for i, labels in enumerate(manifest.labels or []):
        unknown = [label for label in labels if label not in index]
        if unknown:
            raise DataError(
                f"{manifest.where(i)}: label {unknown[0]!r} is not one of the training classes "
                f"({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}); fix the label or remove the row"
            )
        out.append([index[label] for label in labels])
    return out
