"""A seeded fuzz of local Hugging Face datasets (issue 28): a small valid ``save_to_disk`` folder
and a Parquet folder, each case mutated (state.json and dataset_info.json fields, the split list,
label values, image bytes, file names and links, cut or garbled files) and read as ``data check``
reads it. Every case either reads or is a :class:`UserError` (one line at the CLI); any other
exception fails the test with its seed, so a failure replays alone."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cnnzoo.config import load_config
from cnnzoo.data.check import check_data
from cnnzoo.errors import UserError

from support.images import draw

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

SAVED_CASES, PARQUET_CASES = 75, 25
ODD_VALUES: list[Any] = [
    None, -1, 0, 2**63 - 1, 1e308, math.nan, True, "", "x" * 300, "../other", "/etc/passwd", "pipe:touch x",
    "s3://bucket/x", "a::b", [], [None], {}, {"filename": "../x"}, [[[[[[[[]]]]]]]], "\u202e\x1b[31m",
]  # fmt: skip
ODD_LABELS: list[Any] = [-1, -2, 0, 1, 2, 7, 2**40, None]
ODD_FEATURES: list[Any] = [
    {"_type": "ClassLabel", "names": []},
    {"_type": "ClassLabel", "names": ["disc"]},
    {"_type": "ClassLabel", "names": ["disc", "disc"]},
    {"_type": "ClassLabel", "names": [1, 2]},
    {"_type": "ClassLabel", "names": "disc,bar"},
    {"_type": "ClassLabel", "num_classes": 3},
    {"_type": "ClassLabel", "names": ["disc", "bar", "cross"]},
    {"_type": "ClassLabel", "names": ["disc", "bar"], "names_file": "/etc/passwd"},
    {"_type": "Value", "dtype": "string"},
    {"_type": "Value", "dtype": "bool"},
    {"_type": "Value", "dtype": "no-such-type"},
    {"_type": "Image"},
    {"_type": "List", "feature": {"_type": "Value", "dtype": "int64"}},
    {"_type": "NoSuchFeature"},
    "ClassLabel",
    None,
]


def _table(n: int, seed: int) -> Any:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["disc", "bar"])})
    pictures = [draw("a" if i % 2 == 0 else "b", seed + i, size=8) for i in range(n)]
    return datasets.Dataset.from_dict({"image": pictures, "label": [i % 2 for i in range(n)]}, features=features)


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("hf-originals")
    datasets.DatasetDict({"train": _table(8, 0), "validation": _table(4, 100)}).save_to_disk(str(base / "saved"))
    (base / "parquet").mkdir()
    _table(8, 0).to_parquet(str(base / "parquet" / "train-0.parquet"))
    _table(4, 100).to_parquet(str(base / "parquet" / "validation-0.parquet"))
    return {"saved": base / "saved", "parquet": base / "parquet"}


def _edit_json(path: Path, edit: Any) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _arrow_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.arrow")) + sorted(folder.rglob("*.parquet"))


def _read_table(path: Path) -> Any:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    with pa.ipc.open_stream(path.read_bytes()) as reader:  # a copy: the file is rewritten in place next
        return reader.read_all()


def _write_table(path: Path, table: Any) -> None:
    if path.suffix == ".parquet":
        pq.write_table(table, path)
        return
    with pa.ipc.new_stream(str(path), table.schema) as writer:
        writer.write_table(table)


def _set_column(path: Path, name: str, values: list[Any], type_: Any = None) -> None:
    """Column ``name`` of an Arrow or Parquet file replaced by ``values``; the features kept in its metadata."""
    table = _read_table(path)
    index = table.schema.get_field_index(name)
    column = pa.array(values, type=type_ or table.schema.field(index).type)
    changed = table.set_column(index, pa.field(name, column.type), column)
    _write_table(path, changed.replace_schema_metadata(table.schema.metadata))


def mutate_labels(rng: random.Random, folder: Path) -> str:
    path = rng.choice(_arrow_files(folder))
    n = _read_table(path).num_rows
    if rng.random() < 0.5:
        values = [rng.choice(ODD_LABELS) for _ in range(n)]
        try:
            _set_column(path, "label", values)  # int64 storage: any integer, -1 and None included
        except (OverflowError, pa.ArrowInvalid):
            _set_column(path, "label", [v if v is None or abs(v) < 2**31 else -1 for v in values])
        return f"label values {values} in {path.name}"
    kind, pool = rng.choice(
        [
            (pa.string(), ["disc", "bar", None, "", "None", "nan"]),
            (pa.float64(), [0.0, 1.0, math.nan, math.inf, None]),
            (pa.bool_(), [True, False]),
            (pa.binary(), [b"\xff\xfe", b"disc"]),
        ]
    )
    _set_column(path, "label", [rng.choice(pool) for _ in range(n)], kind)
    return f"label column of {kind} in {path.name}"


def mutate_images(rng: random.Random, folder: Path) -> str:
    path = rng.choice(_arrow_files(folder))
    rows = _read_table(path).column("image").to_pylist()
    png = rows[0]["bytes"]
    for row in rng.sample(rows, k=rng.randint(1, len(rows))):
        row.update(
            rng.choice(
                [
                    {"bytes": png[: rng.randint(0, len(png))]},
                    {"bytes": bytes(rng.randrange(256) for _ in range(64))},
                    {
                        "bytes": None,
                        "path": rng.choice(["/etc/passwd", "missing.png", "https://example.invalid/x.png"]),
                    },
                    {"bytes": None, "path": None},
                    {"bytes": b""},
                ]
            )
        )
    _set_column(path, "image", rows)
    return f"image bytes in {path.name}"


def mutate_state(rng: random.Random, folder: Path) -> str:
    path = rng.choice(sorted(folder.rglob("state.json")))
    key = rng.choice(["_data_files", "_fingerprint", "_format_type", "_format_kwargs", "_format_columns", "_split",
                      "_output_all_columns"])  # fmt: skip
    value = rng.choice(ODD_VALUES + [[{"filename": rng.choice(ODD_VALUES)}], ["data-00000-of-00001.arrow"], "torch"])
    _edit_json(path, lambda state: state.pop(key) if rng.random() < 0.15 else state.__setitem__(key, value))
    return f"{path.parent.name}/state.json {key} = {value!r}"


def mutate_info(rng: random.Random, folder: Path) -> str:
    path = rng.choice(sorted(folder.rglob("dataset_info.json")))
    column = rng.choice(["label", "image"])
    value = rng.choice(ODD_FEATURES + ODD_VALUES)
    if rng.random() < 0.2:
        _edit_json(path, lambda info: info.__setitem__("features", value))
        return f"{path.parent.name}/dataset_info.json features = {value!r}"
    _edit_json(path, lambda info: info["features"].__setitem__(column, value))
    return f"{path.parent.name}/dataset_info.json features.{column} = {value!r}"


def mutate_splits(rng: random.Random, folder: Path) -> str:
    value = rng.choice(
        [["train"], ["train", "validation", "test"], ["train", "../saved"], "train", None, []] + ODD_VALUES
    )
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": value}))
    return f"dataset_dict.json splits = {value!r}"


def mutate_files(rng: random.Random, folder: Path) -> str:
    path = rng.choice([p for p in sorted(folder.rglob("*")) if p.is_file()])
    action = rng.choice(["cut", "garble", "delete", "link out", "rename", "empty"])
    if action == "cut":
        path.write_bytes(path.read_bytes()[: rng.randint(0, path.stat().st_size)])
    elif action == "garble":
        data = bytearray(path.read_bytes())
        for _ in range(8):
            data[rng.randrange(len(data))] = rng.randrange(256) if data else 0
        path.write_bytes(bytes(data))
    elif action == "delete":
        path.unlink()
    elif action == "link out":
        outside = folder.parent / f"outside-{path.name}"
        shutil.copy(path, outside)
        path.unlink()
        path.symlink_to(outside)
    elif action == "rename":
        path.rename(path.with_name(rng.choice(["x.arrow", "x.parquet", ".hidden", "a:b.arrow", "state.json.bak"])))
    else:
        path.write_bytes(b"")
    return f"{action} {path.relative_to(folder)}"


SAVED_MUTATIONS = [mutate_labels, mutate_images, mutate_state, mutate_info, mutate_splits, mutate_files]
PARQUET_MUTATIONS = [mutate_labels, mutate_images, mutate_files]


def _case(seed: int, originals: dict[str, Path], work: Path) -> tuple[str, str]:
    rng = random.Random(seed)
    kind = "saved" if seed < SAVED_CASES else "parquet"
    folder = work / f"case-{seed}" / kind
    shutil.copytree(originals[kind], folder)
    done = []
    for _ in range(rng.choice([1, 1, 2])):
        try:
            done.append(rng.choice(SAVED_MUTATIONS if kind == "saved" else PARQUET_MUTATIONS)(rng, folder))
        except (OSError, IndexError, ValueError):  # an earlier mutation removed what this one edits
            done.append("(no-op)")
    cfg = load_config({"data": {"root": str(folder), "image_size": 8, "val_fraction": 0.5}})
    try:
        check_data(cfg)
        return "read", "; ".join(done)
    except UserError as exc:
        assert "\n" not in str(exc), f"seed {seed} ({'; '.join(done)}): a multi-line error: {exc}"
        return "refused", "; ".join(done)
    except Exception as exc:  # noqa: BLE001 - the point of the fuzz
        pytest.fail(f"seed {seed} ({'; '.join(done)}): {type(exc).__name__}: {exc}")


def test_mutated_hf_datasets_read_or_give_one_user_error(originals, tmp_path, capsys):
    outcomes: Counter[str] = Counter()
    for seed in range(SAVED_CASES + PARQUET_CASES):
        outcome, _ = _case(seed, originals, tmp_path)
        outcomes[("saved " if seed < SAVED_CASES else "parquet ") + outcome] += 1
    with capsys.disabled():
        print(f"\nhf fuzz: {dict(sorted(outcomes.items()))}")
    assert sum(outcomes.values()) == SAVED_CASES + PARQUET_CASES
    assert outcomes["saved refused"] and outcomes["saved read"]  # the mutations reach both ends
    assert os.path.isdir(originals["saved"])
