"""Local Hugging Face datasets (``data.source: hf``): a folder written by ``save_to_disk``, a folder
of Parquet files, or (asked for by name) an ``imagefolder``, read through the ``datasets`` library
(``cnnzoo[hf]``, imported when such a folder is first read; nothing is fetched from the Hub).

The image column is the one of type ``Image`` and the label column the one of type ``ClassLabel``
(its names are the classes), else the usual names (``image``/``img``, ``label``/``labels``);
the splits are the dataset's own (train, validation/valid/val, test). Each split's images stay in
the dataset (:class:`DatasetImages`, indexed like an array) and are decoded once into the cache
like any other source's. Floor 5; imports floor 0 only.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..files import cache_home

MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
IMAGE_NAMES = ("image", "img", "picture", "pixel_values")
LABEL_NAMES = ("label", "labels", "fine_label", "class", "target")


def datasets_lib() -> Any:
    """The ``datasets`` module, or one line naming the extra."""
    try:
        import datasets  # lazy: an optional extra (with pyarrow, ~100 MB) only these folders need
    except ImportError:
        raise DataError("Hugging Face datasets need the datasets library: pip install 'cnnzoo[hf]'") from None
    return datasets


def is_hf_dataset(root: str) -> bool:
    """A folder written by ``save_to_disk``, or one that holds Parquet files (and no class folders of images)."""
    folder = Path(root)
    if not folder.is_dir():
        return False
    return any((folder / m).is_file() for m in MARKERS) or bool(
        glob.glob(str(folder / "**" / "*.parquet"), recursive=True)
    )


class DatasetImages:
    """A split's image column, indexed like an array: an int gives a PIL image, a list of ints a
    subset (``Samples.subset``); :meth:`fingerprint` is the dataset's own (for the cache key)."""

    def __init__(self, dataset: Any, column: str):
        self.dataset, self.column = dataset, column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (list, tuple)) or hasattr(index, "tolist"):
            positions = index.tolist() if hasattr(index, "tolist") else list(index)
            return DatasetImages(self.dataset.select(positions), self.column)
        return self.dataset[int(index)][self.column]

    def fingerprint(self) -> str:
        return str(getattr(self.dataset, "_fingerprint", "")) + f"/{self.column}/{len(self.dataset)}"


def _open(root: str, kind: str) -> Any:
    datasets = datasets_lib()
    folder = Path(root)
    try:
        if kind == "imagefolder" or not (any((folder / m).is_file() for m in MARKERS)):
            builder = "imagefolder" if kind == "imagefolder" else "parquet"
            # its Arrow copy goes under cnnzoo's cache folder, beside the other caches
            return datasets.load_dataset(builder, data_dir=str(folder), cache_dir=str(cache_home() / "hf-datasets"))
        return datasets.load_from_disk(str(folder))
    except DataError:
        raise
    except Exception as exc:  # the library raises many types for a folder it cannot read
        raise DataError(f"{root}: not a readable Hugging Face dataset ({type(exc).__name__}: {exc})") from None


def _columns(dataset: Any, root: str, image_column: str | None, label_column: str | None) -> tuple[str, str]:
    datasets = datasets_lib()
    features = dataset.features
    image = image_column or next((n for n, f in features.items() if isinstance(f, datasets.Image)), None)
    image = image or next((n for n in IMAGE_NAMES if n in features), None)
    label = label_column or next((n for n, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    label = label or next((n for n in LABEL_NAMES if n in features), None)
    for key, name, kind in (("data.image_column", image, "Image"), ("data.label_column", label, "ClassLabel")):
        if name is None or name not in features:
            what = f"column {name!r}" if name else f"{kind} column"
            raise DataError(
                f"{root}: no {what} ({key}); the columns are {', '.join(features)}; "
                f"name the {'image' if kind == 'Image' else 'label'} column with {key}"
            )
    return image, label  # type: ignore[return-value]


def load_hf(
    root: str, *, kind: str = "auto", image_column: str | None = None, label_column: str | None = None
) -> tuple[list[str], dict[str, tuple[DatasetImages, list[int]]]]:
    """(classes, split -> (images, labels)) of a local dataset; ``kind``: ``auto`` or ``imagefolder``."""
    loaded = _open(root, kind)
    parts = loaded if hasattr(loaded, "keys") else {"train": loaded}
    named = {}
    for split, names in SPLIT_NAMES.items():
        found = next((n for n in names if n in parts), None)
        if found is not None:
            named[split] = parts[found]
    if "train" not in named:
        raise DataError(f"{root}: no train split (it has {', '.join(parts)})")
    image, label = _columns(named["train"], root, image_column, label_column)
    feature = named["train"].features[label]
    classes = list(feature.names) if hasattr(feature, "names") else sorted({str(v) for v in named["train"][label]})
    out = {}
    for split, dataset in named.items():
        values = dataset[label]
        labels = (
            [int(v) for v in values] if hasattr(feature, "names") else [_index(classes, v, root, split) for v in values]
        )
        out[split] = (DatasetImages(dataset, image), labels)
    return classes, out


def _index(classes: list[str], value: Any, root: str, split: str) -> int:
    if str(value) not in classes:
        raise DataError(f"{root}: the {split} split has label {value!r}, which no training row has")
    return classes.index(str(value))
