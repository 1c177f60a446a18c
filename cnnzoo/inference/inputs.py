"""What ``cnnzoo predict`` reads and writes: image arguments expanded into files, a manifest's
images, records as CSV (torch-free: imports :mod:`cnnzoo.data.preprocess`, :mod:`cnnzoo.data.manifest`
and :mod:`cnnzoo.files`)."""

from __future__ import annotations

import csv
import glob
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..data import preprocess
from ..data.manifest import manifest_file, read_manifest
from ..files import spreadsheet_safe


def _unreadable_reason(path: str) -> str:
    if os.path.islink(path) and not os.path.exists(path):
        return "broken link"
    return "not a regular file"


def expand_inputs(arguments: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files, folders (recursively) and glob patterns -> image paths, plus what cannot be read.

    Every image-named file met is either returned or named with a reason: FIFOs and other
    special files are never opened (they would block), dangling links are named too.
    """
    paths: list[str] = []
    missing: list[tuple[str, str]] = []
    for arg in arguments:
        if os.path.isdir(arg):
            named = sorted(str(p) for p in Path(arg).rglob("*") if preprocess.is_image_file(p))
            found = [p for p in named if os.path.isfile(p)]
            missing.extend((p, _unreadable_reason(p)) for p in named if not os.path.isfile(p))
            if not named:
                missing.append((arg, "folder holds no images"))
            paths.extend(found)
        elif os.path.lexists(arg):
            if os.path.isfile(arg):
                paths.append(arg)
            else:
                missing.append((arg, _unreadable_reason(arg)))
        elif glob.has_magic(arg):
            found = sorted(p for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
            if not found:
                missing.append((arg, "pattern matched no files"))
            paths.extend(found)
        else:
            missing.append((arg, "file not found"))
    return paths, missing


def manifest_images(path: str | Path) -> tuple[list[str], list[str], str]:
    """A manifest's images, labels or not: each row's name as written, the file it resolves to
    (``""`` where none exists), and the image column's name. ``path`` may be a folder holding the
    manifest beside ``images/``."""
    rows = read_manifest(manifest_file(path), labels_required=False)
    return list(rows.names), list(rows.paths), rows.image_column


def records_in_order(names: Sequence[str], paths: Sequence[str], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per manifest row, in its order, named as the row names its image; a row whose
    image could not be read gets an empty record (no label, probability None), so that a CSV of
    them has every row a submission needs."""
    by_path = {r["image"]: r for r in records}
    blank = {"label": "", "probability": None, "top_k": []}
    return [{**by_path.get(path, blank), "image": name} for name, path in zip(names, paths)]


def label_separator(classes: Sequence[str]) -> str:
    """What joins a multi-label image's labels in one CSV cell: a space, as Kaggle's submissions
    have them, unless a class name holds whitespace ("big circle"); then ``|``, which no
    multi-label class name may hold (training refuses one), so a cell always splits back into
    the labels it was made of."""
    return "|" if any(any(ch.isspace() for ch in name) for name in classes) else " "


def records_to_csv(
    records: Iterable[dict[str, Any]],
    top_k: int,
    *,
    image_header: str = "image",
    multi_label: bool = False,
    classes: Sequence[str] = (),
) -> str:
    """CSV rows: the image, its label and probability (multi-label: its labels joined by
    :func:`label_separator` of ``classes``), then the top-k. Names and labels are
    :func:`~cnnzoo.files.spreadsheet_safe`; probabilities are figures between 0 and 1."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = [image_header, "labels"] if multi_label else [image_header, "label", "probability"]
    for i in range(1, top_k + 1):
        header += [f"top{i}_label", f"top{i}_probability"]
    writer.writerow([spreadsheet_safe(cell) for cell in header])
    separator = label_separator(classes)
    for r in records:
        if multi_label:
            row = [r["image"], separator.join(r.get("labels", []))]
        else:
            row = [r["image"], r["label"], "" if r["probability"] is None else f"{r['probability']:.6f}"]
        for entry in r["top_k"]:
            row += [entry["label"], f"{entry['probability']:.6f}"]
        row += [""] * (len(header) - len(row))
        writer.writerow([spreadsheet_safe(cell) for cell in row])
    return buffer.getvalue()
