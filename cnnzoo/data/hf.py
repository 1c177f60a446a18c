"""Local Hugging Face datasets (``data.source: hf``): a folder written by ``save_to_disk``, a folder
of Parquet files, or (asked for by name) an ``imagefolder``, read through the ``datasets`` library
(``cnnzoo[hf]``, imported when such a folder is first read; nothing is fetched from the Hub).

The image column is the one of type ``Image`` and the label column the one of type ``ClassLabel``
(its names are the classes), else the usual names (``image``/``img``, ``label``/``labels``);
the splits are the dataset's own (train, validation/valid/val, test). Each split's images stay in
the dataset (:class:`DatasetImages`, indexed like an array) and are decoded once into the cache
like any other source's.

The folder's files are checked like a config before the library reads them
(:func:`check_saved_folder`): ``dataset_dict.json``, ``state.json`` and ``dataset_info.json`` are
bounded JSON of the expected types, and every split folder and Arrow file they name lies inside
the folder (no ``..``, absolute path or symlink out of it); no link in a Parquet folder leads out.
Images are read from the bytes stored in the dataset, or a row's local path (never a URL). Rows
without a label (``ClassLabel`` -1, ``None``, NaN, an empty string) are skipped and counted in one
warning; every other odd label is refused. The library's own log lines and progress bars are
silenced while it reads (shown with --debug).
Floor 5; imports floors 0 and 2 (the class cap checkpoints use).
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from ..checkpoint import MAX_CLASSES
from ..console import console, warn
from ..errors import DataError
from ..files import cache_home

MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
IMAGE_NAMES = ("image", "img", "picture", "pixel_values")
LABEL_NAMES = ("label", "labels", "fine_label", "class", "target")
MAX_JSON_BYTES = 64 * 2**20  # a dataset_info.json naming a million classes is ~20 MB
# the keys load_from_disk indexes in state.json, with the types save_to_disk writes
STATE_TYPES: dict[str, tuple[type, ...]] = {
    "_fingerprint": (str,),
    "_format_columns": (list, type(None)),
    "_format_kwargs": (dict,),
    "_format_type": (str, type(None)),
    "_output_all_columns": (bool,),
    "_split": (str, type(None)),
}
FORMAT_TYPES = (None, "python", "arrow", "pyarrow", "pa", "numpy", "np", "pandas", "pd", "torch", "pt", "pytorch")


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
    subset (``Samples.subset``); :meth:`fingerprint` is the dataset's own (for the cache key).

    The column is read undecoded (``Image(decode=False)``): the library would fetch a stored URL;
    here a row's bytes are decoded, or else its local path (relative to ``folder``)."""

    def __init__(self, dataset: Any, column: str, folder: Path, key: str | None = None):
        self.dataset, self.column, self.folder = dataset, column, folder
        self.key = key if key is not None else str(getattr(dataset, "_fingerprint", ""))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (list, tuple)) or hasattr(index, "tolist"):
            positions = index.tolist() if hasattr(index, "tolist") else list(index)
            return DatasetImages(self.dataset.select(positions), self.column, self.folder)
        return _open_image(self.dataset[int(index)][self.column], self.folder)

    def fingerprint(self) -> str:
        return self.key + f"/{self.column}/{len(self.dataset)}"


def _open_image(value: Any, folder: Path) -> Any:
    stored = value if isinstance(value, dict) else {}
    if stored.get("bytes") is not None:
        return Image.open(io.BytesIO(stored["bytes"]))
    path = stored.get("path")
    # a row that holds only a path (to_parquet keeps paths) names a local file, as a manifest row
    # does; never a URL or an fsspec chain, which the library would fetch
    if isinstance(path, str) and path and "://" not in path and "::" not in path:
        return Image.open(path if os.path.isabs(path) else folder / path)
    raise ValueError(f"no image in the row (no bytes, and the path {path!r} is not a local file)")


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path``, its symlinks followed, lies inside ``folder`` (itself resolved)."""
    return path.resolve().is_relative_to(folder.resolve())


@contextmanager
def _library_quiet(datasets: Any) -> Iterator[None]:
    """The library's log lines (it logs its own error line before raising) and progress bars
    ("Generating train split") off while cnnzoo reads, so a bad folder is one line; --debug shows them."""
    if console.debug:
        yield
        return
    logs = datasets.utils.logging
    level, were_off = logs.get_verbosity(), datasets.are_progress_bars_disabled()
    logs.set_verbosity(logs.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        logs.set_verbosity(level)
        if not were_off:
            datasets.enable_progress_bars()


def _read_json(path: Path, root: str) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: missing; a save_to_disk folder has it beside its Arrow files")
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise DataError(f"{path}: over {MAX_JSON_BYTES // 2**20} MB; not a {root} dataset file cnnzoo reads")
        return json.loads(path.read_bytes().decode("utf-8"))
    except DataError:
        raise
    except (OSError, ValueError, RecursionError) as exc:  # unreadable, not UTF-8, not JSON, nested too deep
        raise DataError(f"{path}: not valid JSON ({type(exc).__name__}); is {root} a save_to_disk folder?") from None


def _plain_name(name: Any) -> bool:
    """A bare file or folder name: no separator, not '.' or '..', no ':' (read as a URL scheme)."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\:\0")


def check_saved_folder(folder: Path) -> None:
    """A ``save_to_disk`` folder's JSON, checked before the library reads it: its split folders
    (``dataset_dict.json``) and each split's ``state.json`` and ``dataset_info.json``."""
    listing = folder / "dataset_dict.json"
    # the library's own order: a folder with both files is one Dataset, whatever else it holds
    if not listing.is_file() or all((folder / f).is_file() for f in ("state.json", "dataset_info.json")):
        _check_split_folder(folder, folder)
        return
    splits = _read_json(listing, str(folder))
    names = splits.get("splits") if isinstance(splits, dict) else None
    if not (isinstance(names, list) and names and all(_plain_name(n) for n in names)):
        raise DataError(f"{listing}: 'splits' should list the split folders by name (train, validation, ...)")
    for name in names:
        split = folder / name
        if not (split.is_dir() and _inside(split, folder)):
            raise DataError(f"{listing}: split {name!r} is not a folder inside {folder}")
        _check_split_folder(split, folder)


def _check_split_folder(split: Path, folder: Path) -> None:
    state = _read_json(split / "state.json", str(folder))
    if not isinstance(state, dict):
        raise DataError(f"{split / 'state.json'}: should be a JSON object (save_to_disk writes one)")
    for key, types in STATE_TYPES.items():
        if key not in state or not isinstance(state[key], types):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise DataError(f"{split / 'state.json'}: {key} should be {expected}")
    if state["_format_type"] not in FORMAT_TYPES:
        raise DataError(f"{split / 'state.json'}: _format_type {state['_format_type']!r} is not a format cnnzoo reads")
    files = state.get("_data_files")
    if not (isinstance(files, list) and files and all(isinstance(f, dict) for f in files)):
        raise DataError(f"{split / 'state.json'}: _data_files should list the Arrow files ({{'filename': ...}})")
    for entry in files:
        name = entry.get("filename")
        if not (_plain_name(name) and (split / name).is_file() and _inside(split / name, split)):
            raise DataError(
                f"{split / 'state.json'}: data file {name!r} is not a file inside {split}; "
                f"cnnzoo reads only the dataset's own Arrow files"
            )
    info = _read_json(split / "dataset_info.json", str(folder))
    if not (isinstance(info, dict) and isinstance(info.get("features", {}), (dict, type(None)))):
        raise DataError(f"{split / 'dataset_info.json'}: should be a JSON object whose 'features' is an object")
    for name, feature in (info.get("features") or {}).items():
        inner = feature.get("feature") if isinstance(feature, dict) else None  # a List(ClassLabel): label sets
        for each in (feature, inner):
            if isinstance(each, dict) and each.get("_type") == "ClassLabel":
                _check_class_names(each.get("names"), f"{split / 'dataset_info.json'}: ClassLabel {name!r}")


def _check_class_names(names: Any, where: str) -> None:
    """A ClassLabel's names: strings, each once, at most the cap checkpoints have."""
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise DataError(f"{where}: names should be a list of class names (strings)")
    if len(names) > MAX_CLASSES:
        raise DataError(f"{where}: {len(names):,} classes; cnnzoo takes at most {MAX_CLASSES:,}")
    if len(set(names)) < len(names):
        twice = sorted(n for n, count in Counter(names).items() if count > 1)
        raise DataError(f"{where}: names {', '.join(twice[:5])} more than once; each class needs one name")


def _check_parquet_folder(folder: Path) -> None:
    """Only files inside the folder are read: no symlink in it points out of it."""
    for where, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(where) / name
            if path.is_symlink() and not _inside(path, folder):
                raise DataError(f"{path}: a link out of {folder}; cnnzoo reads only files inside the dataset's folder")


def _open(root: str, kind: str) -> Any:
    datasets = datasets_lib()
    folder = Path(root).resolve()
    if "::" in str(folder):  # fsspec reads "a::b" as a chain of locations, and would open another folder
        raise DataError(f"{root}: a path with '::' is read by the datasets library as a URL chain; rename the folder")
    if kind == "imagefolder" and (folder / "dataset.json").is_file():
        raise DataError(
            f"{root}: a folder of WebDataset shards (dataset.json), not a Hugging Face dataset; "
            f"set data.source: webdataset (or leave data.source out)"
        )
    saved = kind != "imagefolder" and any((folder / m).is_file() for m in MARKERS)
    if saved:
        check_saved_folder(folder)
    elif kind != "imagefolder":
        _check_parquet_folder(folder)
    try:
        if not saved:
            builder = "imagefolder" if kind == "imagefolder" else "parquet"
            # its Arrow copy goes under cnnzoo's cache folder, beside the other caches
            return datasets.load_dataset(builder, data_dir=str(folder), cache_dir=str(cache_home() / "hf-datasets"))
        return datasets.load_from_disk(str(folder))
    except DataError:
        raise
    except Exception as exc:  # the library raises many types for a folder it cannot read
        said = " ".join(str(exc).split())  # the library's messages run over several lines
        said = said if len(said) <= 300 else said[:300] + " ..."
        raise DataError(f"{root}: not a readable Hugging Face dataset ({type(exc).__name__}: {said})") from None


def _columns(dataset: Any, root: str, image_column: str | None, label_column: str | None) -> tuple[str, str]:
    datasets = datasets_lib()
    features = dataset.features
    image = image_column or next((n for n, f in features.items() if isinstance(f, datasets.Image)), None)
    image = image or next((n for n in IMAGE_NAMES if n in features), None)
    label = label_column or next((n for n, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    label = label or next((n for n, f in features.items() if label_set_feature(f) is not None), None)
    label = label or next((n for n in LABEL_NAMES if n in features), None)
    for key, name, kind in (("data.image_column", image, "Image"), ("data.label_column", label, "ClassLabel")):
        if name is None or name not in features:
            what = f"column {name!r}" if name else f"{kind} column"
            raise DataError(
                f"{root}: no {what} ({key}); the columns are {', '.join(features)}; "
                f"name the {'image' if kind == 'Image' else 'label'} column with {key}"
            )
    if not isinstance(features[image], datasets.Image):
        raise DataError(
            f"{root}: column {image!r} holds {_type_name(features[image])}, not images (an Image column); "
            f"name the image column with data.image_column"
        )
    return image, label  # type: ignore[return-value]


def label_set_feature(feature: Any) -> Any:
    """The ClassLabel of a label-set column (``Sequence(ClassLabel)``: each row a list of class
    ids, multi-label), else None."""
    inner = getattr(feature, "feature", None)
    return inner if type(feature).__name__ in ("List", "LargeList", "Sequence") and hasattr(inner, "names") else None


def _type_name(feature: Any) -> str:
    dtype = getattr(feature, "dtype", None)
    return f"{type(feature).__name__}({dtype})" if isinstance(dtype, str) else type(feature).__name__


def load_hf(
    root: str, *, kind: str = "auto", image_column: str | None = None, label_column: str | None = None
) -> tuple[list[str], dict[str, tuple[DatasetImages, list[int]]]]:
    """(classes, split -> (images, labels)) of a local dataset; ``kind``: ``auto`` or ``imagefolder``."""
    datasets = datasets_lib()
    with _library_quiet(datasets):
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
        keys = {split: str(getattr(d, "_fingerprint", "")) for split, d in named.items()}  # the cache keys
        named = {split: _plain_rows(d, split, image, label, root) for split, d in named.items()}
        classes = _classes(named["train"], label, root)
        out, skipped = {}, {}
        for split, dataset in named.items():
            keep, labels = _labels(dataset, label, classes, root, split)
            key = keys[split]
            if len(keep) < len(dataset):
                skipped[split] = len(dataset) - len(keep)
                dataset = dataset.select(keep)
                key = str(getattr(dataset, "_fingerprint", ""))
            undecoded = dataset.cast_column(image, datasets.Image(decode=False))
            out[split] = (DatasetImages(undecoded, image, Path(root).resolve(), key), labels)
    if skipped:
        warn(
            f"{root}: skipped {_rows(sum(skipped.values()))} without a label (ClassLabel -1, None, NaN or empty) "
            f"in column {label!r}: " + ", ".join(f"{split} {n}" for split, n in skipped.items())
        )
    return classes, out


def _rows(n: int) -> str:
    return f"{n} row{'' if n == 1 else 's'}"


def _plain_rows(dataset: Any, split: str, image: str, label: str, root: str) -> Any:
    """The split with plain Python rows of every column (a saved torch format or column list
    dropped), checked to have the train split's image and label columns."""
    datasets = datasets_lib()
    for column in (image, label):
        if column not in dataset.features:
            raise DataError(f"{root}: the {split} split has no column {column!r} (the train split has)")
    if not isinstance(dataset.features[image], datasets.Image):
        raise DataError(f"{root}: the {split} split's column {image!r} holds {_type_name(dataset.features[image])}")
    plain = {"type": None, "format_kwargs": {}, "columns": dataset.column_names, "output_all_columns": False}
    return dataset if dataset.format == plain else dataset.with_format(None)


def _classes(train: Any, label: str, root: str) -> list[str]:
    """The class names: a ClassLabel's names, else the training rows' distinct labels, sorted."""
    feature = label_set_feature(train.features[label]) or train.features[label]
    if hasattr(feature, "names"):
        classes = list(feature.names)
        _check_class_names(classes, f"{root}: ClassLabel {label!r}")
    else:
        _check_label_type(feature, label, root)
        classes = sorted({text for value in train[label] if (text := _label_text(value)) is not None})
    if len(classes) > MAX_CLASSES:
        raise DataError(f"{root}: {len(classes):,} classes in column {label!r}; cnnzoo takes at most {MAX_CLASSES:,}")
    if len(classes) < 2:
        shown = f"only one class ({classes[0]})" if classes else f"no class (no labelled row in column {label!r})"
        raise DataError(f"{root}: {shown}; a classifier needs at least two")
    return classes


def _check_label_type(feature: Any, label: str, root: str) -> None:
    """Labels are ClassLabel indices, or names held as strings or numbers; never bools, bytes or lists."""
    dtype = getattr(feature, "dtype", None) if type(feature).__name__ == "Value" else None
    if not (
        isinstance(dtype, str) and (dtype in ("string", "large_string") or dtype.startswith(("int", "uint", "float")))
    ):
        raise DataError(
            f"{root}: label column {label!r} holds {_type_name(feature)}; a label is a class name (a string "
            f"or a number) or a ClassLabel index; name the label column with data.label_column"
        )


def _label_text(value: Any) -> str | None:
    """A plain label as a class name; None for no label (None, NaN, an empty string)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    return str(value)


def _labels(dataset: Any, label: str, classes: list[str], root: str, split: str) -> tuple[list[int], list[int]]:
    """(positions of the rows that have a label, their class indices: label sets of a
    ``Sequence(ClassLabel)`` column) of one split."""
    feature = dataset.features[label]
    if label_set_feature(feature) is not None:
        return _label_sets(dataset, label, classes, root, split)
    keep: list[int] = []
    labels: list[int] = []
    if hasattr(feature, "names"):
        if list(feature.names) != classes:
            raise DataError(f"{root}: the {split} split's ClassLabel names are not the train split's")
        for i, value in enumerate(dataset[label]):
            if value == -1 or value is None:  # HF's "no label"
                continue
            if not 0 <= value < len(classes):
                raise DataError(
                    f"{root}: row {i} of the {split} split has label {value}, outside the ClassLabel's "
                    f"{len(classes)} classes (0 to {len(classes) - 1}; -1 means no label)"
                )
            keep.append(i)
            labels.append(value)
        return keep, labels
    _check_label_type(feature, label, root)
    index = {name: c for c, name in enumerate(classes)}
    for i, value in enumerate(dataset[label]):
        text = _label_text(value)
        if text is None:
            continue
        if text not in index:
            raise DataError(f"{root}: the {split} split has label {value!r}, which no training row has")
        keep.append(i)
        labels.append(index[text])
    return keep, labels


def _label_sets(dataset: Any, label: str, classes: list[str], root: str, split: str) -> tuple[list[int], list[Any]]:
    """(positions of the rows that have a label set, their sets of class indices) of a
    ``Sequence(ClassLabel)`` column; an empty list is an image of none of the classes, None no label."""
    feature = label_set_feature(dataset.features[label])
    if list(feature.names) != classes:
        raise DataError(f"{root}: the {split} split's ClassLabel names are not the train split's")
    keep: list[int] = []
    sets: list[Any] = []
    for i, value in enumerate(dataset[label]):
        if value is None:
            continue
        bad = next((v for v in value if not (isinstance(v, int) and 0 <= v < len(classes))), None)
        if bad is not None or len(set(value)) < len(value):
            what = "a class twice" if bad is None else f"label {bad}, outside the ClassLabel's {len(classes)} classes"
            raise DataError(f"{root}: row {i} of the {split} split's label set {label!r} has {what}")
        keep.append(i)
        sets.append(sorted(value))
    return keep, sets
