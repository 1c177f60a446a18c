"""A seeded fuzz of manifests (issue #28): a small valid CSV, TSV, JSON Lines or Parquet manifest,
mutated (cells of every type, encodings, quoting, nesting, NaN, huge values, extra fields, control
characters, paths with ``../``, columns added, dropped or doubled, bytes cut or inserted), then
read as training reads it (:func:`cnnzoo.data.sources.load_data`) and as ``predict --data`` does
(:func:`cnnzoo.data.manifest.read_manifest`). Each case ends in data or in a one-line
:class:`cnnzoo.errors.UserError`, never another exception. ``CNNZOO_FUZZ_CASES`` sets the count
(240 by default)."""

from __future__ import annotations

import csv
import io
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from cnnzoo.config import load_config
from cnnzoo.data import manifest
from cnnzoo.data.sources import load_data
from cnnzoo.errors import UserError

from support.images import write_class_folders
from support.runs import tiny_config

SEED = 28_2026
FORMATS = (".csv", ".tsv", ".jsonl", ".parquet")
CELLS: list[Any] = [
    "", " ", "nan", "NaN", "None", float("nan"), float("inf"), -0.0, None, True, False, 0, 1, -1, 10**30, 1e308,
    b"\xff\xfe", ["a"], [["a"]], [], {"k": 1}, [1, None], "a|b", "a; b", "a b", "b a", "big circle",
    "../../../../etc/passwd", "/etc/passwd", "pics/a/../b/x.png", "\x1b]0;PWNED\x07", "=1+2", "@SUM(1)",
    "x" * 100_000, "\x00", "\ud800", "é", "train", "validation", "val", "test", "later", "0", "1", "true",
]  # fmt: skip
COLUMNS = ["split", "labels", "tags", "extra", "label", "image", "", " label ", "id", "0"]


def base_table(folder: Path) -> tuple[list[str], list[list[Any]]]:
    """The valid manifest every case starts from: six pictures of two classes, with a split column."""
    write_class_folders(folder / "pics", {"a": 3, "b": 3})
    rows = [
        [f"pics/{c}/{p.name}", c, "validation" if i == 2 else "train"]
        for c in "ab"
        for i, p in enumerate(sorted((folder / "pics" / c).iterdir()))
    ]
    return ["image", "label", "split"], rows


def mutate_table(header: list[str], rows: list[list[Any]], rng: random.Random) -> None:
    """One to three changes to the cells or the columns, in place."""
    for _ in range(rng.randint(1, 3)):
        choice = rng.random()
        if not rows:
            return
        if choice < 0.6:
            rows[rng.randrange(len(rows))][rng.randrange(len(header))] = rng.choice(CELLS)
        elif choice < 0.75:
            header.append(rng.choice(COLUMNS))
            for row in rows:
                row.append(rng.choice(CELLS) if rng.random() < 0.5 else row[min(1, len(row) - 1)])
        elif choice < 0.85 and len(header) > 1:
            drop = rng.randrange(len(header))
            del header[drop]
            for row in rows:
                del row[drop]
        elif choice < 0.95:
            header[rng.randrange(len(header))] = rng.choice(COLUMNS)
        else:
            del rows[rng.randrange(len(rows)) :]


def text_cell(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else "" if value is None else str(value)


def delimited(header: list[str], rows: list[list[Any]], delimiter: str, rng: random.Random) -> str:
    buffer = io.StringIO()
    quoting = rng.choice([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONE])
    writer = csv.writer(buffer, delimiter=delimiter, quoting=quoting, escapechar="\\", lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        extra = [rng.choice(["x", "", "y|z"])] if rng.random() < 0.1 else []  # more fields than the header
        writer.writerow([text_cell(v) for v in row] + extra)
    return buffer.getvalue()


def json_lines(header: list[str], rows: list[list[Any]], rng: random.Random) -> str:
    lines = []
    for row in rows:
        values = {k: (text_cell(v) if isinstance(v, bytes) else v) for k, v in zip(header, row)}
        lines.append(json.dumps(values))
    if rng.random() < 0.15:
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(["[" * 50_000, "[1, 2]", '"x"', "{", "null", "  "]))
    return "\n".join(lines) + "\n"


def write_parquet(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    names = list(header)
    columns = [[row[i] for row in rows] for i in range(len(header))]
    try:
        table = pa.Table.from_arrays([pa.array(c) for c in columns], names=names)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):  # mixed types: as text, as a CSV holds them
        text = [[text_cell(v).encode("utf-8", "replace").decode() for v in c] for c in columns]
        table = pa.Table.from_arrays([pa.array(c) for c in text], names=names)
    pq.write_table(table, path)


def write_case(folder: Path, base: tuple[list[str], list[list[Any]]], case: int, rng: random.Random) -> Path:
    """Case ``case``: the base table mutated (case 0 as it is), written in one of the formats."""
    header, rows = list(base[0]), [list(r) for r in base[1]]
    if case:
        mutate_table(header, rows, rng)
    suffix = FORMATS[case % len(FORMATS)]
    path = folder / f"case{case}{suffix}"
    if suffix == ".parquet":
        write_parquet(path, header, rows)
    elif suffix == ".jsonl":
        path.write_bytes(encode(json_lines(header, rows, rng), rng))
    else:
        path.write_bytes(encode(delimited(header, rows, "\t" if suffix == ".tsv" else ",", rng), rng))
    if case and rng.random() < 0.1:  # bytes cut or inserted
        data = path.read_bytes()
        at = rng.randrange(len(data) + 1)
        noise = rng.choice([b"", b"\x00", b"\xff\xfe", b'"', b"\n\n", bytes(rng.randrange(256) for _ in range(8))])
        path.write_bytes(data[:at] + noise + data[at + rng.randint(0, 4) :])
    return path


def encode(text: str, rng: random.Random) -> bytes:
    """Mostly UTF-8 (lone surrogates kept, as invalid bytes), sometimes with a BOM, Latin-1 or UTF-16."""
    encoding = rng.choice(["utf-8", "utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"])
    return text.encode(encoding, errors="surrogatepass" if encoding.startswith("utf-8") else "replace")


def read_case(path: Path, rng: random.Random) -> str:
    """The case read as training and as predict read it: 'data', or the UserError's line."""
    raw = tiny_config(path)
    if rng.random() < 0.2:
        raw["data"]["label_column"] = rng.choice(["label", "labels", ["a", "b"], ["label", "label"], "nope"])
    if rng.random() < 0.1:
        raw["data"]["image_column"] = rng.choice(["image", "label", "id"])
    try:
        manifest.read_manifest(path, labels_required=False)
        load_data(load_config(raw), missing_ok=rng.random() < 0.5)
        return "data"
    except UserError as exc:
        message = str(exc).strip()
        assert message and "\n" not in message, message
        return "user error"


def test_fuzzed_manifests_give_data_or_one_line_user_errors(tmp_path):
    cases = int(os.environ.get("CNNZOO_FUZZ_CASES", "240"))
    rng = random.Random(SEED)
    base = base_table(tmp_path)
    outcomes = {"data": 0, "user error": 0}
    for case in range(cases):
        path = write_case(tmp_path, base, case, rng)
        try:
            outcomes[read_case(path, rng)] += 1
        except Exception as exc:  # noqa: BLE001 - the point: nothing else may escape
            pytest.fail(f"case {case} ({path.name}): {type(exc).__name__}: {exc}\n{path.read_bytes()[:400]!r}")
        path.unlink()
    print(f"manifest fuzz: {cases} cases: {outcomes}")
    assert outcomes["data"] > cases // 10 and outcomes["user error"] > cases // 4
