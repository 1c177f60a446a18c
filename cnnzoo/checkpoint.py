"""Checkpoints: the format, atomic writes, safe loading and the checks of what a file holds.

A checkpoint is a plain dictionary (tensors, numbers, strings, lists) so that
``torch.load(..., weights_only=True)`` can read it without unpickling code:

* ``model_state``, ``layers`` (the resolved layer list, to rebuild without tracing),
* ``meta``: classes, channels, image_size, mean, std, loss (everything ``predict`` needs), and for a
  multi-label model ``task: multi`` and ``thresholds`` (one per class), and (optional)
  ``calibration``, the temperature fitted on the validation split after training,
* ``config`` (fully resolved), ``epoch``, ``metrics``,
* in ``last.pt`` also ``optimizer``, ``scheduler``, ``scaler``, ``trainer`` (earlier versions also
  saved ``rng``, which nothing reads: every epoch reseeds from (seed, epoch); such files still load),
  and (optional) ``in_epoch``: a position inside the epoch after ``epoch`` (``train.checkpoint_every``,
  SIGTERM), per process the loader's position, the RNG states and the epoch's sums
  (:mod:`cnnzoo.training.midepoch`).

Importing this module does not import torch (the CLI checks files before torch loads);
the functions that read or write tensors import it when called.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from .config import CHANNEL_WORDS, MAX_IMAGE_SIDE, READABLE_CHANNELS
from .config.checks import is_number, is_whole
from .errors import UserError, short_reason
from .files import write_bytes

FORMAT = "cnnzoo-checkpoint"
VERSION = 1


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save ``obj`` whole into memory, then write it with :func:`cnnzoo.files.write_bytes`
    (space reserved first, a temporary file, fsync, rename over ``path``).

    A failure (a full disk included: ``OSError`` ENOSPC, see :func:`cnnzoo.files.is_disk_full`)
    leaves ``path`` as it was and no temporary file behind.
    """
    import torch  # lazy: this module stays torch-free at import (files are checked before torch loads)

    buffer = io.BytesIO()
    torch.save(obj, buffer)  # in memory first: the size is known, and torch's writer never meets ENOSPC
    data = buffer.getbuffer()
    try:
        write_bytes(path, data)
    finally:
        data.release()


class TorchScriptRefused(UserError):
    """A TorchScript archive handed in where a checkpoint was expected: it was not opened."""


TORCHSCRIPT_RUNS_CODE = "a TorchScript archive: it holds code that runs when it is loaded"


def refused_global(exc: BaseException) -> str | None:
    """The Python name (``posix.system``) that made ``torch.load(weights_only=True)`` refuse a file."""
    asked = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", str(exc))
    return asked.group(1) if asked else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load with ``weights_only=True`` (never arbitrary pickles) and check it is ours.

    The file is identified from its bytes first (:func:`identify`): a TorchScript archive,
    or anything else that is not a plain torch checkpoint, is refused before torch reads it.
    """

    import torch  # lazy: this module stays torch-free at import (files are checked before torch loads)

    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    if identify(path) == "torchscript":
        raise TorchScriptRefused(
            f"{path}: {TORCHSCRIPT_RUNS_CODE}, so cnnzoo does not open it, and it is not "
            f"a checkpoint; give the best.pt it was exported from"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        asked = refused_global(exc)
        wanted = f" (it asks for {asked})" if asked else ""
        raise UserError(
            f"{path}: refused: this file would run code when loaded{wanted}; cnnzoo reads "
            f"checkpoints as plain data only (weights_only=True) and never runs their code"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, TypeError) as exc:
        raise UserError(
            f"{path}: a damaged checkpoint: torch cannot read it ({short_reason(exc)}); "
            f"copy it again, or use the run's last.pt"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(
            f"{path}: not a cnnzoo checkpoint (made by another tool?); "
            f"use a best.pt or last.pt from a cnnzoo run folder"
        )
    version = ckpt.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise UserError(f"{path}: written by a newer cnnzoo (format {version!r}); upgrade cnnzoo")
    check_contents(ckpt, path)
    ckpt["path"] = str(path)
    return ckpt


# What torch.save writes into its zip archive besides the pickled structure (data.pkl) and
# one record per tensor storage (data/N); every entry sits under one top-level folder.
_CHECKPOINT_RECORD = re.compile(
    r"data\.pkl|data/\d+|version|byteorder|\.format_version|\.storage_alignment"
    r"|\.data/serialization_id|\.data/version"
)


_TORCHSCRIPT_RECORD = re.compile(r"code/.*|constants\.pkl|bytecode\.pkl|extra/.*|attributes\.pkl|.*\.debug_pkl")


def identify(path: Path) -> str:
    """``"checkpoint"`` (a torch.save archive of plain data) or ``"torchscript"`` (an archive with
    code), told from the file's bytes and zip listing alone: nothing is unpickled or run.
    Anything else is a :class:`UserError` saying what the file is and what was expected."""

    try:
        with open(path, "rb") as f:
            head = f.read(4096)
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        raise UserError(f"{path}: {_describe(path, head)}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    prefix = names[0].split("/", 1)[0] + "/" if names else ""
    records = [n[len(prefix) :] if n.startswith(prefix) else None for n in names]
    if any(r is not None and _TORCHSCRIPT_RECORD.fullmatch(r) for r in records):
        return "torchscript"
    if records and "data.pkl" in records and all(r is not None and _CHECKPOINT_RECORD.fullmatch(r) for r in records):
        return "checkpoint"
    stranger = next((n for n, r in zip(names, records) if r is None or not _CHECKPOINT_RECORD.fullmatch(r)), None)
    held = f"it holds {stranger!r}" if stranger else "it holds no data.pkl"
    raise UserError(
        f"{path}: a zip archive that is not a torch checkpoint ({held}); "
        f"give a best.pt or last.pt from a cnnzoo run folder"
    )


def _describe(path: Path, head: bytes) -> str:
    """What a file that is not a zip archive is, and what to give instead (one clause)."""
    wanted = "give a best.pt or last.pt from a cnnzoo run folder"
    if not head:
        return f"an empty file (0 bytes), not a checkpoint; {wanted}"
    if head.startswith(b"PK\x03\x04"):
        return (
            f"a truncated or damaged checkpoint: it starts as a torch archive but its end (the zip "
            f"directory) is missing ({path.stat().st_size:,} bytes; a copy cut short?); copy it again, "
            f"or use the run's last.pt"
        )
    if head[:1] == b"\x80":
        return f"a raw Python pickle (torch's pre-1.6 format, or another tool's), not a cnnzoo checkpoint; {wanted}"
    if len(head) > 10 and head[8:10] == b'{"':
        return (
            "a safetensors weights file (tensors only, without cnnzoo's layers and classes), not a "
            "checkpoint; pretrained weights go in a backbone layer's weights key"
        )
    exported = "predict, serve and evaluate take an export; this command needs the checkpoint it was made from"
    if head[:1] == b"\x08" and any(mark in head[:256] for mark in (b"cnnzoo", b"pytorch", b"onnx")):
        if path.suffix.lower() == ".onnx":
            return f"an ONNX export, not a checkpoint; {exported}"
        return f"an ONNX model whose name does not end in .onnx; rename it to {path.stem}.onnx"
    if head[4:8] == b"TFL3":  # the flatbuffer file identifier of a TFLite model
        return f"a TFLite export, not a checkpoint; {exported}"
    image = _image_format(path)
    if image:
        return f"an image ({image}), not a checkpoint; give images as arguments and the checkpoint with -m"
    text = _text_kind(path, head)
    if text:
        return text
    return (
        f"not a cnnzoo checkpoint (neither a torch archive nor a file cnnzoo knows: it starts "
        f"{head[:8].hex(' ')}); {wanted}"
    )


def _image_format(path: Path) -> str:
    try:
        with Image.open(path) as img:
            if img.format in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"):
                return f"{img.format} {img.size[0]}x{img.size[1]}"
    except Exception:  # PIL raises many types for what is not an image
        pass
    return ""


def _text_kind(path: Path, head: bytes) -> str:
    """A text file: a cnnzoo config, a run's metrics.csv, JSON, or plain text."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # the 4096 bytes read may end inside a character
        if exc.start < len(head) - 4:
            return ""
        text = head[: exc.start].decode("utf-8")
    if "\x00" in text:
        return ""
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    if first.startswith("epoch,"):
        beside = path.with_name("best.pt")
        where = f"{beside}" if beside.is_file() else "the best.pt beside it"
        return f"a run's metrics table (CSV), not a checkpoint; the run's checkpoint is {where}"
    if text.lstrip()[:1] in ("{", "["):
        return "a JSON file, not a checkpoint; give a best.pt or last.pt from a cnnzoo run folder"
    if _is_config(path):
        return (
            f"a cnnzoo config (YAML), not a checkpoint; train it first (cnnzoo train --config {path}) "
            f"and use the best.pt of that run"
        )
    return "a text file, not a checkpoint; give a best.pt or last.pt from a cnnzoo run folder"


def _is_config(path: Path) -> bool:
    if path.stat().st_size > 2**20:
        return False
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(loaded, dict) and bool({"model", "data", "train"} & set(map(str, loaded)))


def check_contents(ckpt: dict[str, Any], path: Path) -> None:
    """Every field predict, evaluate and resume read, checked like a config: types and ranges.

    The layer list itself is checked by rebuilding it (:func:`cnnzoo.model.layers.build_from_records`).
    """

    def bad(field: str, expected: str) -> UserError:
        return UserError(f"{path}: damaged or foreign checkpoint: {field} {expected}")

    meta = ckpt.get("meta")
    if not isinstance(meta, dict):
        raise bad("meta", "is missing")
    check_meta(meta, path, "checkpoint", prefix="meta.")
    layers = ckpt.get("layers")
    if not (
        isinstance(layers, list)
        and layers
        and all(
            isinstance(r, dict) and isinstance(r.get("type"), str) and isinstance(r.get("kwargs"), dict) for r in layers
        )
    ):
        raise bad("layers", "should be a list of {type, kwargs} records")
    state = ckpt.get("model_state")
    if not (isinstance(state, dict) and all(isinstance(k, str) for k in state)):
        raise bad("model_state", "should map parameter names to tensors")
    config = ckpt.get("config", {})
    if not isinstance(config, dict):
        raise bad("config", "should be a mapping")
    _check_task_against_config(meta, config, bad)


def _check_task_against_config(meta: dict[str, Any], config: dict[str, Any], bad: Any) -> None:
    """A checkpoint's ``meta.task`` agrees with the config it was trained from: a multi-label
    model is never trained with cross_entropy or bce (one label per image), and a ``train.task``
    the config names is the task. (``meta.loss``, when there, was checked by :func:`check_meta`.)"""
    task, train = meta.get("task", "single"), config.get("train")
    loss, named = (train.get("loss"), train.get("task")) if isinstance(train, dict) else (None, None)
    if task == "multi" and loss in ("cross_entropy", "bce"):
        raise bad("meta.task", f"is multi but config train.loss is {loss}, a single-label loss; the two disagree")
    if named in ("single", "multi") and named != task:
        raise bad("meta.task", f"is {task} but config train.task is {named}; the two disagree")


MAX_CLASSES = 1_000_000
# meta.resize: data.resize (preprocess.RESIZE_MODES), or bilinear, which files written before
# data.resize carry and which means squash; absent means squash too
RESIZE_MODES = ("squash", "letterbox", "crop", "bilinear")
TEST_CROPS = (0.5, 1.0)  # meta.test_crop: the centred share of each side predict keeps (preprocess.TEST_CROPS)
TEMPERATURES = (1e-6, 1e6)  # meta.calibration.temperature: past either end, every answer is all-or-nothing or uniform
TASK_OF_LOSS = {"cross_entropy": "single", "bce": "single", "bce_multi_label": "multi"}  # recipe.loss_kind's


def check_meta(meta: dict[str, Any], path: str | Path, kind: str, *, prefix: str = "") -> None:
    """What predicting needs (classes, channels, image size, normalisation, task), checked with the
    same types and caps wherever it comes from: a checkpoint's ``meta``, an ONNX model's metadata, a
    TorchScript archive's extra file. ``kind`` names the file in the error."""

    def bad(field: str, expected: str) -> UserError:
        return UserError(f"{path}: damaged or foreign {kind}: {prefix}{field} {expected}")

    classes = meta.get("classes")
    if not (
        isinstance(classes, list) and 1 <= len(classes) <= MAX_CLASSES and all(isinstance(c, str) for c in classes)
    ):
        raise bad("classes", f"should be a list of 1 to {MAX_CLASSES:,} class names")
    if len(set(classes)) != len(classes):
        twice = next(name for name, count in Counter(classes).items() if count > 1)
        raise bad("classes", f"should name each class once; {twice!r} appears {classes.count(twice)} times")
    channels = meta.get("channels")
    if channels not in READABLE_CHANNELS or isinstance(channels, bool):
        raise bad("channels", f"should be {CHANNEL_WORDS}")
    size = meta.get("image_size")
    if not (isinstance(size, list) and len(size) == 2 and all(is_whole(v, 1, MAX_IMAGE_SIDE) for v in size)):
        raise bad("image_size", f"should be [height, width], each 1 to {MAX_IMAGE_SIDE}")
    for key in ("mean", "std"):
        values = meta.get(key)
        if not (isinstance(values, list) and len(values) == channels and all(is_number(v) for v in values)):
            raise bad(key, f"should be {channels} numbers")
    if any(v <= 0 for v in meta["std"]):
        raise bad("std", "should be positive")
    resize = meta.get("resize", "squash")
    if not isinstance(resize, str) or resize not in RESIZE_MODES:
        raise bad("resize", f"should be {', '.join(RESIZE_MODES[:-1])} or {RESIZE_MODES[-1]} (how images are resized)")
    crop = meta.get("test_crop", 1.0)  # optional: absent before issue 32 (the whole image)
    if not (is_number(crop) and TEST_CROPS[0] <= crop <= TEST_CROPS[1]):
        raise bad("test_crop", f"should be the share of each side kept, {TEST_CROPS[0]} to {TEST_CROPS[1]}")
    if not isinstance(meta.get("int8", {}), dict):
        raise bad("int8", "should be the record an INT8 export writes (a JSON object)")
    data = meta.get("data", {})  # optional: models trained before issue 30 do not carry it
    if not (isinstance(data, dict) and all(isinstance(v, str | int | float | list | None) for v in data.values())):
        raise bad("data", "should be how the training data was read and split (a JSON object of settings)")
    # the keys evaluate reads as they are (a path, a number, a digest); the split's data keys are
    # read back through load_config, which checks them as a config's
    typed = {"source": (str, "text"), "root": (str, "text"), "digest": (str, "text"), "seed": (int, "a whole number")}
    for key, (wanted, words) in typed.items():
        value = data.get(key)
        if value is not None and (not isinstance(value, wanted) or isinstance(value, bool)):
            raise bad(f"data.{key}", f"should be {words} or absent")
    _check_task(meta, bad)
    _check_calibration(meta, bad)
    _check_unknown(meta.get("unknown"), bad)


# meta.unknown's scores (cnnzoo.inference.unknown computes them): on the logits, or on the penultimate
# features (knn: the network answers the score as a second output); optional, absent before issue 31
UNKNOWN_SCORES = ("msp", "max_logit", "energy", "knn")


def _check_unknown(unknown: Any, bad: Any) -> None:
    """``meta.unknown`` (absent: the model has no unknown answer) names a score, a finite threshold and
    the share of validation images it keeps."""
    if unknown is None:
        return
    if not (
        isinstance(unknown, dict)
        and unknown.get("score") in UNKNOWN_SCORES
        and is_number(unknown.get("threshold"))
        and is_number(unknown.get("keep"))
        and 0 < unknown["keep"] < 1
    ):
        raise bad(
            "unknown", f"should be {{score: one of {', '.join(UNKNOWN_SCORES)}, threshold: a number, keep: in (0, 1)}}"
        )


def _check_task(meta: dict[str, Any], bad: Any) -> None:
    """``task`` is single or multi, agrees with the loss the head was trained with, and a
    multi-label model has one threshold per class (thresholds, when given, always do)."""
    task = meta.get("task", "single")
    if task not in ("single", "multi"):
        raise bad("task", "should be single or multi")
    loss = meta.get("loss")
    if loss is not None and (not isinstance(loss, str) or loss not in TASK_OF_LOSS):
        raise bad("loss", f"should be one of {', '.join(TASK_OF_LOSS)}")
    if loss is not None and TASK_OF_LOSS[loss] != task:
        raise bad(
            "task",
            f"is {task} but the head was trained with {loss}, a {TASK_OF_LOSS[loss]}-label loss; the two disagree",
        )
    thresholds, classes = meta.get("thresholds"), meta["classes"]
    if (task == "multi" or thresholds is not None) and not (
        isinstance(thresholds, list)
        and len(thresholds) == len(classes)
        and all(is_number(v) and 0 <= v <= 1 for v in thresholds)
    ):
        raise bad("thresholds", f"should be {len(classes)} numbers in [0, 1], one per class")


def _check_calibration(meta: dict[str, Any], bad: Any) -> None:
    """``calibration`` (optional: models trained with ``train.calibrate: none`` or before it have
    none) holds the temperature the logits are divided by: a finite number > 0, or for a
    multi-label model one per class."""
    calibration = meta.get("calibration")
    if calibration is None:
        return
    if not isinstance(calibration, dict) or calibration.get("method") != "temperature":
        raise bad("calibration", "should be the record training writes: {method: temperature, temperature: T}")
    value, classes = calibration.get("temperature"), meta["classes"]
    per_class = meta.get("task") == "multi" and isinstance(value, list)
    values = value if per_class else [value]
    if not (
        (not per_class or len(values) == len(classes))
        and all(is_number(v) and TEMPERATURES[0] <= v <= TEMPERATURES[1] for v in values)
    ):
        many = f", or {len(classes)} of them (one per class)" if meta.get("task") == "multi" else ""
        low, high = TEMPERATURES
        raise bad("calibration.temperature", f"should be a number from {low:g} to {high:g}{many}")


def nonfinite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the tensors in a state dict that hold NaN or infinite values."""
    import torch  # lazy: this module stays torch-free at import (files are checked before torch loads)

    return [
        name
        for name, t in state.items()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
