"""A manifest file read into columns (:class:`Table`): CSV, TSV, JSON Lines or Parquet, by its suffix.

The file is checked as it is read, each problem one line naming the file and its line: text that
is not UTF-8, broken CSV quoting, a row with more fields than the header (its extra fields would
be lost), a column named twice, a JSON Lines row that is no object, nested too deep for the JSON
parser (100,000 brackets exhaust its stack) or longer than 1 MiB, a Parquet file that does not
open. What the cells mean (image, labels, split) is :mod:`cnnzoo.data.manifest`'s.

Cells are kept column by column, a column's repeated values (labels, splits) as one string object
each: a 1.6M-row manifest in a third of the memory of a dict per row.

Torch-free: imports floor 0 only. Parquet needs pyarrow (``cnnzoo[parquet]``), imported when read.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError, short_reason


@dataclass(kw_only=True)
class Table:
    """A manifest file's cells as read, column by column (one value per row: a column of lists
    holds a large manifest in a fraction of the memory of a dict per row), and the line number of
    its first row (for messages)."""

    path: Path
    columns: list[str]
    cells: dict[str, list[Any]]
    first_line: int

    def __len__(self) -> int:
        return len(next(iter(self.cells.values()), []))

    def line(self, i: int) -> int:
        return self.first_line + i

    def column(self, name: str | None) -> list[Any]:
        """The values of column ``name``, one per row (None for each when there is no such column)."""
        return self.cells[name] if name in self.cells else [None] * len(self)


def read_table(path: Path) -> Table:
    """The cells of a CSV, TSV, JSON Lines or Parquet file, by its suffix."""
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
    if not len(table):
        raise DataError(f"{path}: the manifest has no rows; add one row per image")
    return table


def _header(path: Path, names: list[str]) -> list[str]:
    """A header's column names, stripped; a name given twice is refused (a reader would keep one
    of the two columns and drop the other unseen). Unnamed columns (a trailing comma) may repeat."""
    columns = [str(c).strip() for c in names]
    twice = next((c for i, c in enumerate(columns) if c and c in columns[:i]), None)
    if twice is not None:
        raise DataError(f"{path}: the column {twice!r} is named twice in the header; give each column its own name")
    return columns


def _read_delimited(path: Path, delimiter: str) -> Table:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            columns = _header(path, next(reader, []))
            if not columns:
                raise DataError(f"{path}: empty file; the first line names the columns (e.g. image,label)")
            values: list[list[Any]] = [[] for _ in columns]
            shared: list[dict[str, str]] = [{} for _ in columns]  # one string object per distinct value
            for row in reader:
                if len(row) != len(columns):
                    row = _fit_row(path, reader.line_num, row, columns, delimiter)
                    if row is None:
                        continue
                for column, seen, value in zip(values, shared, row):
                    column.append(seen.setdefault(value, value) if len(seen) < _SHARED_VALUES else value)
        except csv.Error as exc:
            raise DataError(f"{path}: line {reader.line_num}: {exc}; fix the CSV quoting") from None
    return Table(path=path, columns=columns, cells=dict(zip(columns, values)), first_line=2)


_SHARED_VALUES = 10_000  # distinct values of a column kept as one object each (labels, splits: not file names)


def _fit_row(path: Path, line: int, row: list[str], columns: list[str], delimiter: str) -> list[Any] | None:
    """A row with another number of fields than the header: a blank line is skipped (None), a short
    row's missing cells are empty, and a row with more fields than the header names is refused (the
    extra fields would be dropped unseen: an unquoted delimiter inside a cell)."""
    if not row:
        return None
    if len(row) < len(columns):
        return [*row, *[None] * (len(columns) - len(row))]
    extra = delimiter.join(row[len(columns) :])[:40]
    mark = "tab" if delimiter == "\t" else repr(delimiter)
    raise DataError(
        f"{path}: line {line}: {len(row)} fields, but the header names {len(columns)} ({', '.join(columns)}); "
        f"the extra {extra!r} would be lost: quote a cell that holds a {mark}"
    )


_MAX_LINE = 1 << 20  # characters in one JSON Lines row: a row names an image and its labels


def _read_jsonl(path: Path) -> Table:
    rows, columns = [], {}
    with open(path, encoding="utf-8") as f:
        number = 0
        while text := f.readline(_MAX_LINE + 1):
            number += 1
            if len(text) > _MAX_LINE:
                raise DataError(f"{path}: line {number}: longer than {_MAX_LINE} characters; one short object per row")
            if not text.strip():
                continue
            rows.append(_json_row(path, number, text))
            columns.update(dict.fromkeys(rows[-1]))
    names = _header(path, list(columns))  # keys that differ only in spaces around them
    cells = {name: [row.get(key) for row in rows] for name, key in zip(names, columns)}
    return Table(path=path, columns=names, cells=cells, first_line=1)


def _json_row(path: Path, number: int, text: str) -> dict[str, Any]:
    try:
        row = json.loads(text)
    except RecursionError:  # json's C scanner recurses once per level: 100,000 brackets exhaust the stack
        raise DataError(f"{path}: line {number}: nested too deep; one flat JSON object per line") from None
    except ValueError as exc:
        raise DataError(f"{path}: line {number}: not JSON ({exc}); one JSON object per line") from None
    if not isinstance(row, dict):
        raise DataError(f'{path}: line {number}: not a JSON object; one object per line, e.g. {{"image": ...}}')
    return row


def _read_parquet(path: Path) -> Table:
    try:
        # lazy: pyarrow is an optional extra (~100 MB) only Parquet manifests need
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'cnnzoo[parquet]'") from None
    try:
        data = pq.read_table(path)
        values = [column.to_pylist() for column in data.columns]
    except Exception as exc:  # pyarrow's errors have no common base
        raise DataError(f"{path}: not a readable Parquet file ({short_reason(exc)})") from None
    columns = _header(path, list(data.column_names))
    return Table(path=path, columns=columns, cells=dict(zip(columns, values)), first_line=1)
