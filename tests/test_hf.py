"""Local Hugging Face datasets as a source: save_to_disk folders, Parquet folders and imagefolders,
written in the test (nothing from the Hub); Image and ClassLabel columns detected."""

from __future__ import annotations

import json
import re
import sys
import tarfile

import pytest
import yaml

from cnnzoo.config import load_config
from cnnzoo.data import hf
from cnnzoo.data.loaders import ImageDataset
from cnnzoo.data.sources import load_data
from cnnzoo.errors import DataError

from support.cli import one_error_line, run_cnnzoo
from support.images import draw, make_image_tree
from support.runs import tiny_config, train_run

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def dataset_dict(*, validation: bool = True, string_labels: bool = False):
    label = datasets.Value("string") if string_labels else datasets.ClassLabel(names=["disc", "bar"])
    features = datasets.Features({"picture_id": datasets.Value("int64"), "img": datasets.Image(), "fine": label})

    def split(n: int, seed: int):
        names = ["disc", "bar"]
        return datasets.Dataset.from_dict(
            {
                "picture_id": list(range(n)),
                "img": [draw("a" if i % 2 == 0 else "b", seed * 1000 + i) for i in range(n)],
                "fine": [names[i % 2] if string_labels else i % 2 for i in range(n)],
            },
            features=features,
        )

    return datasets.DatasetDict({"train": split(20, 1), **({"validation": split(6, 2)} if validation else {})})


def spec_for(root, **data):
    raw = tiny_config(root)
    raw["data"].update(data)
    return load_data(load_config(raw))


def test_a_saved_dataset_dict_detects_its_image_and_classlabel_columns(tmp_path):
    dataset_dict().save_to_disk(str(tmp_path / "saved"))
    spec = spec_for(tmp_path / "saved")
    assert spec.classes == ["disc", "bar"]
    assert (len(spec.train), len(spec.val)) == (20, 6) and spec.train.labels[:4] == [0, 1, 0, 1]
    images, labels = ImageDataset(spec.train, spec.image_size, 3)[1]  # decoded from the dataset's own bytes
    assert tuple(images.shape) == (3, 16, 16) and labels == 1
    again = spec_for(tmp_path / "saved")
    assert again.train.fingerprint() == spec.train.fingerprint()


def test_a_parquet_folder_without_validation_is_split_by_val_fraction(tmp_path):
    dataset_dict(validation=False, string_labels=True)["train"].to_parquet(str(tmp_path / "pq" / "train-0.parquet"))
    spec = spec_for(tmp_path / "pq", val_fraction=0.2, label_column="fine")
    assert spec.classes == ["bar", "disc"]  # plain strings: sorted, as for a manifest
    assert (len(spec.train), len(spec.val)) == (16, 4) and sorted(spec.val.labels) == [0, 0, 1, 1]
    assert len(list((tmp_path / "pq").iterdir())) == 1  # its Arrow copy went to cnnzoo's cache, not beside it


def test_source_hf_reads_class_folders_through_imagefolder(tmp_path):
    root = make_image_tree(tmp_path / "tree")
    spec = spec_for(root, source="hf")
    assert spec.classes == ["a", "b"] and (len(spec.train), len(spec.val)) == (24, 8)


def test_a_missing_column_names_the_columns_and_the_key(tmp_path):
    dataset_dict().save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError) as caught:
        spec_for(tmp_path / "saved", label_column="labels")
    assert "no column 'labels' (data.label_column); the columns are picture_id, img, fine" in str(caught.value)


def test_without_the_library_it_is_one_line(tmp_path, monkeypatch):
    dataset_dict().save_to_disk(str(tmp_path / "saved"))
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"need the datasets library: pip install 'cnnzoo\[hf\]'"):
        hf.load_hf(str(tmp_path / "saved"))


def test_data_check_reads_a_saved_dataset(tmp_path):
    from cnnzoo.data.check import check_data

    dataset_dict().save_to_disk(str(tmp_path / "saved"))
    report = check_data(load_config({"data": {"root": str(tmp_path / "saved"), "image_size": 16}}))
    assert report["counts"] == {"train": [10, 10], "validation": [3, 3]} and report["sizes"]["median"] == [24, 24]


# -- labels, classes and the folder's own files, checked like a config (issue 28, H1) --


def labelled(labels: list, feature=None, *, seed: int = 0):
    """A train split of len(labels) tiny pictures whose ``label`` column holds ``labels`` as they are."""
    feature = feature or datasets.ClassLabel(names=["disc", "bar"])
    features = datasets.Features({"image": datasets.Image(), "label": feature})
    pictures = [draw("a" if i % 2 == 0 else "b", seed + i, size=8) for i in range(len(labels))]
    return datasets.Dataset.from_dict({"image": pictures, "label": labels}, features=features)


def saved(tmp_path, labels: list, feature=None, name: str = "saved"):
    """``labelled(...)`` written by save_to_disk as a train split beside a 4-row validation split."""
    folder = tmp_path / name
    validation = labelled([0, 1, 0, 1] if feature is None else labels[:4], feature, seed=100)
    datasets.DatasetDict({"train": labelled(labels, feature), "validation": validation}).save_to_disk(str(folder))
    return folder


def test_classlabel_minus_one_rows_are_skipped_with_one_warning_and_data_check_counts_what_train_uses(tmp_path, capsys):
    from cnnzoo.data.check import check_data

    root = saved(tmp_path, [-1, 0, 1, -1, 0, 1, 0, 1, 0, 1])  # HF's -1: "no label"
    spec = spec_for(root)
    assert spec.train.labels == [0, 1, 0, 1, 0, 1, 0, 1] and len(spec.train.array) == 8  # type: ignore[arg-type]
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warning == [f"warning: {root}: skipped 2 rows without a label (ClassLabel -1, None, NaN or empty) "
                       "in column 'label': train 2"]  # fmt: skip
    report = check_data(load_config({"data": {"root": str(root), "image_size": 8}}))
    assert report["counts"] == {"train": [4, 4], "validation": [2, 2]}


@pytest.mark.slow
def test_classlabel_minus_one_rows_train(tmp_path):
    root = saved(tmp_path, [-1, 0, 1, -1, 0, 1, 0, 1, 0, 1])
    run = train_run(tmp_path, lambda _: root, epochs=1)  # main: RuntimeError: bincount
    assert run.best.is_file()


def as_classlabel(folder, names: list[str]) -> None:
    """Each split's int64 ``label`` made a ClassLabel in its dataset_info.json, so that any value
    stays as written (the library refuses out-of-range values when it encodes them itself)."""
    for info_path in folder.glob("*/dataset_info.json"):
        info = json.loads(info_path.read_text())
        info["features"]["label"] = {"names": names, "_type": "ClassLabel"}
        info_path.write_text(json.dumps(info))


@pytest.mark.parametrize("value", [2, -2, 7])
def test_a_classlabel_value_outside_its_classes_is_refused_with_its_row(tmp_path, value):
    root = saved(tmp_path, [0, 1, 0, 1, value, 1], datasets.Value("int64"))
    as_classlabel(root, ["disc", "bar"])
    with pytest.raises(DataError, match=rf"row 4 of the train split has label {value}, outside the ClassLabel's 2"):
        spec_for(root)


def test_string_none_and_float_nan_are_no_label_never_a_class(tmp_path, capsys):
    strings = saved(
        tmp_path, ["disc", None, "bar", "", "disc", "bar", "disc", "bar"], datasets.Value("string"), "strings"
    )
    spec = spec_for(strings)
    assert spec.classes == ["bar", "disc"] and len(spec.train) == 6  # main: classes [, None, bar, disc]
    numbers = saved(tmp_path, [0.0, float("nan"), 1.0, 0.0, 1.0, None, 0.0, 1.0], datasets.Value("float64"), "nums")
    assert spec_for(numbers).classes == ["0.0", "1.0"]  # main: "nan" and "None" were classes
    err = capsys.readouterr().err
    assert "strings: skipped 4 rows without a label" in err and "train 2, validation 2" in err
    assert "nums: skipped 3 rows without a label" in err and "train 2, validation 1" in err


@pytest.mark.parametrize(
    ("feature", "values", "shown"),
    [
        (datasets.Value("bool"), [True, False] * 3, "Value(bool)"),
        (datasets.Value("binary"), [b"\xff\xfe", b"a"] * 3, "Value(binary)"),
        (datasets.Sequence(datasets.Value("string")), [["disc"], ["bar"]] * 3, "List"),
    ],
)
def test_bool_bytes_and_list_labels_are_refused(tmp_path, feature, values, shown):
    folder = tmp_path / "saved"
    labelled(values, feature).save_to_disk(str(folder))
    with pytest.raises(DataError, match=rf"label column 'label' holds {re.escape(shown)}; a label is a class name"):
        spec_for(folder, val_fraction=0.5)


def test_one_class_is_refused_as_folders_and_manifests_refuse_it(tmp_path):
    folder = tmp_path / "one"
    labelled([0, 0, 0, 0], datasets.ClassLabel(names=["disc"])).save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"one: only one class \(disc\); a classifier needs at least two"):
        spec_for(folder)
    strings = tmp_path / "strings"
    labelled(["disc", None, "disc", "disc"], datasets.Value("string")).save_to_disk(str(strings))
    with pytest.raises(DataError, match=r"strings: only one class \(disc\); a classifier needs at least two"):
        spec_for(strings)


def test_duplicate_classlabel_names_and_too_many_classes_are_refused_before_the_library_reads(tmp_path, monkeypatch):
    root = saved(tmp_path, [0, 1, 0, 1])
    info_path = root / "train" / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["features"]["label"]["names"] = ["disc", "disc"]
    info_path.write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"dataset_info.json: ClassLabel 'label': names disc more than once"):
        spec_for(root)
    fine = saved(tmp_path, [0, 1, 2, 0, 1, 2], datasets.ClassLabel(names=["disc", "bar", "cross"]), "three")
    monkeypatch.setattr(hf, "MAX_CLASSES", 2)  # the checkpoints' cap (1,000,000), lowered to test it
    with pytest.raises(DataError, match=r"ClassLabel 'label': 3 classes; cnnzoo takes at most 2"):
        spec_for(fine)


def test_a_state_json_that_names_an_arrow_file_outside_the_folder_is_refused(tmp_path):
    other = saved(tmp_path, [0, 1, 0, 1, 0, 1], name="other")
    mine = saved(tmp_path, [1, 0, 1, 0], name="mine")
    state_path = mine / "train" / "state.json"
    state = json.loads(state_path.read_text())
    arrow = state["_data_files"][0]["filename"]
    for name in (f"../../other/train/{arrow}", str(other / "train" / arrow), "link.arrow"):
        (mine / "train" / "link.arrow").unlink(missing_ok=True)
        (mine / "train" / "link.arrow").symlink_to(other / "train" / arrow)
        state["_data_files"] = [{"filename": name}]
        state_path.write_text(json.dumps(state))
        with pytest.raises(DataError, match=r"state.json: data file .* is not a file inside .*mine/train"):
            spec_for(mine)  # main: read the other dataset's 6 rows and trained on them


def test_a_split_folder_outside_the_dataset_and_damaged_json_are_refused(tmp_path):
    root = saved(tmp_path, [0, 1, 0, 1])
    saved(tmp_path, [0, 1, 0, 1], name="other")
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "../other/validation"]}))
    with pytest.raises(DataError, match=r"dataset_dict.json: 'splits' should list the split folders by name"):
        spec_for(root)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation"]}))
    (root / "train" / "state.json").write_text("[" * 100_000)
    with pytest.raises(DataError, match=r"train/state.json: not valid JSON \(RecursionError\)"):
        spec_for(root)


def test_a_parquet_folder_reads_only_files_inside_it(tmp_path):
    outside = tmp_path / "outside.parquet"
    labelled([0, 1, 0, 1, 0, 1]).to_parquet(str(outside))
    folder = tmp_path / "pq"
    folder.mkdir()
    (folder / "train-0.parquet").symlink_to(outside)
    with pytest.raises(DataError, match=r"train-0.parquet: a link out of .*pq; cnnzoo reads only files inside"):
        spec_for(folder, val_fraction=0.5)


def test_an_image_row_with_a_url_is_never_fetched(tmp_path):
    from cnnzoo.data.check import check_data

    table = labelled([0, 1, 0, 1, 0, 1]).data.table
    images = table.column("image").to_pylist()
    images[0] = {"bytes": None, "path": "https://example.invalid/secret.png"}
    folder = tmp_path / "pq"
    folder.mkdir()
    column = pa.array(images, type=table.schema.field("image").type)
    pq.write_table(table.set_column(0, "image", column), folder / "train.parquet")  # the library would fetch it
    report = check_data(load_config({"data": {"root": str(folder), "image_size": 8, "val_fraction": 0.5}}))
    reasons = [u["reason"] for u in report["unreadable"]]
    assert reasons == ["ValueError: no image in the row (no bytes, and the path "
                       "'https://example.invalid/secret.png' is not a local file)"]  # fmt: skip


def test_a_garbage_parquet_folder_and_a_folder_without_images_are_one_line(tmp_path):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "x.parquet").write_bytes(b"junk" * 10)
    line = one_error_line(run_cnnzoo(["data", "check", "--data", garbage], tmp_path))  # main: the library's line first
    assert "garbage: not a readable Hugging Face dataset (ArrowInvalid" in line
    (tmp_path / "notes" / "a").mkdir(parents=True)
    (tmp_path / "notes" / "a" / "x.txt").write_text("no images here")
    config = tmp_path / "hf.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": "hf", "root": str(tmp_path / "notes"), "image_size": 8}}))
    line = one_error_line(run_cnnzoo(["data", "check", "-c", config], tmp_path))  # main: 'Generating train split'
    assert (
        'notes: not a readable Hugging Face dataset (ValueError: Instruction "train" corresponds to no data!)' in line
    )


def test_source_hf_on_a_shard_folder_says_it_is_shards(tmp_path):
    shards = tmp_path / "shards"
    (shards / "train").mkdir(parents=True)
    with tarfile.open(shards / "train" / "train-000000.tar", "w"):
        pass
    (shards / "dataset.json").write_text(json.dumps({"classes": ["a", "b"], "train": ["train/train-000000.tar"]}))
    with pytest.raises(DataError, match=r"a folder of WebDataset shards \(dataset.json\), not a Hugging Face dataset"):
        spec_for(shards, source="hf")  # main: the library's "Generating ... split" bars, then its own error
