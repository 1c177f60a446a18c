"""Local Hugging Face datasets as a source: save_to_disk folders, Parquet folders and imagefolders,
written in the test (nothing from the Hub); Image and ClassLabel columns detected."""

from __future__ import annotations

import sys

import pytest

from cnnzoo.config import load_config
from cnnzoo.data import hf
from cnnzoo.data.loaders import ImageDataset
from cnnzoo.data.sources import load_data
from cnnzoo.errors import DataError

from support.images import draw, make_image_tree
from support.runs import tiny_config

datasets = pytest.importorskip("datasets")


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
