"""Manifests as an adversary writes them, and what cnnzoo writes back: deep JSON, cells that are no
names (NaN as a missing value; bytes, lists of lists, objects, true/false), extra CSV fields, duplicate columns, formula
cells in the CSVs cnnzoo writes, an ambiguous multi-label separator, terminal escapes in names, no
readable training image, every image missing, a garbage Parquet file. Each gets one line naming the
file, row and column (exit 2), an escaped cell, or a correct result."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from cnnzoo.config import load_config
from cnnzoo.data import manifest
from cnnzoo.data.sources import load_data
from cnnzoo.errors import DataError
from cnnzoo.inference.inputs import records_to_csv
from cnnzoo.training.run import train

from support.cli import one_error_line, run_cnnzoo
from support.images import make_image_tree, write_class_folders
from support.runs import tiny_config, train_run

DEEP = "[" * 100_000 + "]" * 100_000


def pictures(folder: Path, counts: dict[str, int]) -> list[tuple[str, str]]:
    """(file name relative to ``folder``'s parent, class) for pictures written as class folders."""
    write_class_folders(folder, counts)
    return [(f"{folder.name}/{c}/{p.name}", c) for c in counts for p in sorted((folder / c).iterdir())]


def write_jsonl(path: Path, rows: list[dict], extra_lines: tuple[str, ...] = ()) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in extra_lines))
    return path


def load_error(root: Path, **data) -> str:
    raw = tiny_config(root)
    raw["data"].update(data)
    with pytest.raises(DataError) as caught:
        load_data(load_config(raw))
    assert "\n" not in str(caught.value)
    return str(caught.value)


# ----------------------------------------------------------------------------- reading


def test_a_jsonl_line_nested_100k_deep_is_named_with_its_line(tmp_path):
    files = pictures(tmp_path / "pics", {"a": 3, "b": 3})
    path = write_jsonl(tmp_path / "deep.jsonl", [{"image": f, "label": c} for f, c in files], (DEEP,))
    assert load_error(path) == f"{path}: line 7: nested too deep; one flat JSON object per line"
    result = run_cnnzoo(["data", "check", "--data", path], cwd=tmp_path)
    assert "deep.jsonl: line 7: nested too deep" in one_error_line(result)


@pytest.mark.parametrize(
    ("cell", "shown"),
    [
        ('[["circle"]]', "[['circle']]"),
        ('{"name": "circle"}', "{'name': 'circle'}"),
        ("true", "True"),
        ("1e999", "inf"),
    ],
)
def test_a_json_label_that_is_no_class_name_is_named_with_row_and_column(tmp_path, cell, shown):
    files = pictures(tmp_path / "pics", {"a": 3, "b": 3})
    lines = [json.dumps({"image": f, "label": c}) for f, c in files]
    lines[3] = lines[3].replace('"label": "b"', f'"label": {cell}')
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    message = load_error(tmp_path / "m.jsonl")
    assert message.startswith(f"{tmp_path / 'm.jsonl'} row 4: 'label' is {shown}; a label is a class name")
    lines[3] = lines[3].replace(f'"label": {cell}', '"label": NaN')
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    assert "m.jsonl row 4: empty 'label'" in load_error(tmp_path / "m.jsonl")  # a missing value, not the class nan


def test_parquet_nan_and_bytes_labels_never_become_classes(tmp_path):
    """NaN is pandas' missing value: an empty label (refused for single-label data, none for
    multi-label), never the class ``nan``; bytes are refused."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    files = pictures(tmp_path / "pics", {"a": 3, "b": 3})
    names = [f for f, _ in files]
    pq.write_table(pa.table({"image": names, "label": [1.0, 2.0, float("nan"), 1.0, 2.0, 1.0]}), tmp_path / "n.parquet")
    assert "n.parquet row 3: empty 'label'; give its label or remove the row" in load_error(tmp_path / "n.parquet")
    assert manifest.read_manifest(tmp_path / "n.parquet").labels[2] == []  # predict --data reads past it
    cells = [c.encode() for _, c in files]
    cells[1] = b"\xff\xfe"
    pq.write_table(pa.table({"image": names, "label": cells}), tmp_path / "b.parquet")
    assert "b.parquet row 1: 'label' is b'a'; a label is a class name" in load_error(tmp_path / "b.parquet")
    pq.write_table(pa.table({"image": names, "label": [[c] for _, c in files]}), tmp_path / "l.parquet")
    assert load_data(load_config(tiny_config(tmp_path / "l.parquet"))).classes == ["a", "b"]  # a list of names


def test_an_image_cell_that_is_no_file_name_is_refused(tmp_path):
    files = pictures(tmp_path / "pics", {"a": 3, "b": 3})
    rows = [{"image": f, "label": c} for f, c in files]
    rows[2]["image"] = ["pics/a/x.png"]
    message = load_error(write_jsonl(tmp_path / "m.jsonl", rows))
    assert message.endswith("m.jsonl row 3: 'image' is ['pics/a/x.png']; name the image file (text) or remove the row")


def test_a_row_with_more_fields_than_the_header_is_named_not_cut(tmp_path):
    files = pictures(tmp_path / "pics", {"a": 3, "b": 3})
    lines = ["image,label", *(f"{f},{c}" for f, c in files)]
    lines[4] = lines[4] + ",x,y"  # an unquoted comma in the label: square|x,y
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    message = load_error(tmp_path / "m.csv")
    assert message.startswith(f"{tmp_path / 'm.csv'}: line 5: 4 fields, but the header names 2 (image, label)")
    assert "the extra 'x,y' would be lost: quote a cell that holds a ','" in message


def test_a_column_named_twice_is_refused_in_the_header_and_in_the_config(tmp_path):
    files = pictures(tmp_path / "pics", {"a": 2, "b": 2})
    (tmp_path / "h.csv").write_text("image,label,label\n" + "".join(f"{f},{c},{c}\n" for f, c in files))
    assert load_error(tmp_path / "h.csv").endswith(
        "the column 'label' is named twice in the header; give each column its own name"
    )
    rows = [[f, int(c == "a"), int(c == "b")] for f, c in files]
    (tmp_path / "o.csv").write_text("image,a,b\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    message = load_error(tmp_path / "o.csv", label_column=["a", "a"])
    assert message == "data.label_column: 'a' is named twice; name each class column once"


def test_a_garbage_parquet_file_is_one_line(tmp_path):
    pytest.importorskip("pyarrow")
    # a footer that parses as far as thrift: pyarrow's message then ends in a newline of its own
    (tmp_path / "g.parquet").write_bytes(b"PAR1" + bytes(200) + (50).to_bytes(4, "little") + b"PAR1")
    line = one_error_line(run_cnnzoo(["data", "check", "--data", "g.parquet"], cwd=tmp_path))
    assert line.startswith("cnnzoo: error: g.parquet: not a readable Parquet file (")


def test_data_check_names_the_missing_files_when_none_is_found(tmp_path):
    (tmp_path / "gone.csv").write_text("image,label\n" + "".join(f"nothere/{i}.jpg,{'ab'[i % 2]}\n" for i in range(9)))
    line = one_error_line(run_cnnzoo(["data", "check", "--data", "gone.csv"], cwd=tmp_path))
    assert "gone.csv: 9 of 9 images not found: row 2 (nothere/0.jpg), row 3 (nothere/1.jpg)" in line
    assert "validation split is empty" not in line


# ----------------------------------------------------------------------------- writing


def test_every_csv_cell_cnnzoo_writes_that_starts_like_a_formula_is_text():
    records = [
        {"image": name, "label": "@SUM(1+1)", "probability": 0.25, "top_k": [{"label": "-x", "probability": 0.25}]}
        for name in ("=1+2.jpg", "+cmd|' -C calc'!A0.jpg", '=HYPERLINK("http://127.0.0.1/x")', "\tz.jpg", "ok.jpg")
    ]
    rows = list(csv.reader(io.StringIO(records_to_csv(records, 1, image_header="=h"))))
    assert rows[0][0] == "'=h"
    assert [r[0] for r in rows[1:]] == [
        "'=1+2.jpg", "'+cmd|' -C calc'!A0.jpg", "'=HYPERLINK(\"http://127.0.0.1/x\")", "'\tz.jpg", "ok.jpg"
    ]  # fmt: skip
    assert all(r[1:] == ["'@SUM(1+1)", "0.250000", "'-x", "0.250000"] for r in rows[1:])
    from cnnzoo.files import spreadsheet_safe  # the sweep's table: the same rule, and numbers stay numbers

    assert spreadsheet_safe(-0.5) == -0.5 and spreadsheet_safe("-0.5") == "'-0.5"


def test_a_multi_label_csv_cell_splits_back_into_its_labels():
    record = {"image": "x.jpg", "labels": ["big circle", "square"], "top_k": []}
    spaced = records_to_csv([record], 0, multi_label=True, classes=["big circle", "square"])
    assert spaced.splitlines()[1] == "x.jpg,big circle|square"
    plain = {"image": "x.jpg", "labels": ["circle", "square"], "top_k": []}
    assert records_to_csv([plain], 0, multi_label=True, classes=["circle", "square"]).splitlines()[1] == (
        "x.jpg,circle square"  # Kaggle's space-separated tags where no class name has a space
    )


def test_a_multi_label_class_name_holding_the_separator_is_refused(tmp_path):
    files = pictures(tmp_path / "pics", {"a": 3, "b": 3})
    rows = [{"image": f, "labels": [c, "x|y"] if i % 2 else [c]} for i, (f, c) in enumerate(files)]
    message = load_error(write_jsonl(tmp_path / "m.jsonl", rows))
    assert message.endswith(
        "the class 'x|y' holds '|', which separates an image's labels (in a manifest cell, in "
        "predict --csv); rename the class"
    )


def test_terminal_escapes_in_names_never_reach_the_terminal(tmp_path):
    files = pictures(tmp_path / "pics", {"a": 4, "b": 4})
    title = "\x1b]0;PWNED\x07"
    rows = [*(f"{f},{c}" for f, c in files), f"{title}.png,a"]
    (tmp_path / "m.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    report = run_cnnzoo(["data", "check", "--data", "m.csv"], cwd=tmp_path)
    assert report.returncode == 1 and "\\x1b]0;PWNED\\x07.png" in report.stdout, report.stdout
    folder = tmp_path / f"{title}dir"
    folder.mkdir()
    line = one_error_line(run_cnnzoo(["data", "check", "--data", folder / "x.csv"], cwd=tmp_path))
    assert "\\x1b]0;PWNED\\x07dir" in line
    assert "\x1b" not in report.stdout + report.stderr + line and "\x07" not in report.stdout + line


# ----------------------------------------------------------------------------- no readable training image


def tiny_train(root: Path, tmp_path: Path, **data) -> Path:
    raw = tiny_config(root, epochs=1)
    raw["data"].update(data)
    with pytest.raises(DataError, match=r"^[^\n]*: none of the \d+ training images can be read") as caught:
        train(raw, out=tmp_path / "runs", quiet=True)
    assert not list((tmp_path / "runs").rglob("*.pt"))
    return Path(str(caught.value).split(": none")[0])


def test_no_readable_training_image_stops_before_a_checkpoint_from_a_manifest(tmp_path):
    (tmp_path / "junk").mkdir()
    for i in range(12):
        (tmp_path / "junk" / f"{i}.jpg").write_bytes(b"not a picture " * 8)
    files = pictures(tmp_path / "pics", {"a": 2, "b": 2})
    rows = [f"junk/{i}.jpg,{'ab'[i % 2]},train" for i in range(12)] + [f"{f},{c},validation" for f, c in files]
    (tmp_path / "m.csv").write_text("image,label,split\n" + "\n".join(rows) + "\n")
    tiny_train(tmp_path / "m.csv", tmp_path)


@pytest.mark.parametrize("cache", ["ram", "none"])
def test_no_readable_training_image_stops_before_a_checkpoint_from_folders(tmp_path, cache):
    root = make_image_tree(tmp_path / "images")
    for picture in (root / "train").rglob("*.png"):
        picture.write_bytes(b"not a picture")
    tiny_train(root, tmp_path, cache=cache)


def test_no_readable_training_image_stops_before_a_checkpoint_from_hf(tmp_path):
    datasets = pytest.importorskip("datasets")
    from support.images import draw

    def split(n: int, readable: bool) -> object:
        images = [
            draw("ab"[i % 2], i) if readable else {"bytes": b"not a picture " * 8, "path": None} for i in range(n)
        ]
        return datasets.Dataset.from_dict(
            {"img": images, "label": [i % 2 for i in range(n)]},
            features=datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}),
        )

    # an Image column whose training bytes are no pictures (a column of another type is refused earlier, by name)
    datasets.DatasetDict({"train": split(8, False), "validation": split(4, True)}).save_to_disk(str(tmp_path / "hf"))
    tiny_train(tmp_path / "hf", tmp_path)


# ----------------------------------------------------------------------------- predict and evaluate


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on two classes of pictures."""
    return train_run(tmp_path_factory.mktemp("hostile"), lambda base: make_image_tree(base / "images"), epochs=1)


def test_predict_and_evaluate_name_a_deep_jsonl_line(trained, tmp_path):
    path = write_jsonl(tmp_path / "deep.jsonl", [{"image": "x.png", "label": "a"}], (DEEP,))
    for args in (["predict", "-m", trained.best, "--data", path], ["evaluate", trained.best, "--data", path]):
        assert "deep.jsonl: line 2: nested too deep" in one_error_line(run_cnnzoo(args, cwd=tmp_path))


def test_predict_csv_escapes_formula_names(trained, tmp_path):
    source = next((trained.root / "validation" / "a").iterdir())
    names = ["=1+2.png", "@SUM(1+1).png", "-2+3.png"]
    for name in names:
        (tmp_path / name).write_bytes(source.read_bytes())
    (tmp_path / "test.csv").write_text("image\n" + "\n".join(names) + "\n")
    result = run_cnnzoo(["predict", "-m", trained.best, "--data", "test.csv", "--csv", "-k", "1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert [r[0] for r in rows[1:]] == ["'" + name for name in names]
    assert all(0 <= float(r[2]) <= 1 and r[1] in ("a", "b") for r in rows[1:])
