"""Export a checkpoint to ONNX (FP32 or INT8), OpenVINO (FP32 or INT8), TFLite or TorchScript,
with the model's metadata inside, and check it.

The exported file carries what predicting needs (classes, input size, channels,
normalisation) as ONNX ``metadata_props``, OpenVINO ``rt_info``, a TFLite ``Model.metadata``
buffer or a TorchScript extra file, under :data:`cnnzoo.inference.classifier.METADATA_KEY`, so it
is used alone: ``cnnzoo predict --model best.onnx`` needs neither the checkpoint nor torch. The
batch dimension is dynamic (TFLite: one image, channels last). An OpenVINO export is a pair of
files, ``best.openvino.xml`` and its weights ``best.openvino.bin``, written and replaced together
(:mod:`~cnnzoo.deploy.openvino_export`). Each format's writer, recogniser and names are its line in
:data:`~cnnzoo.deploy.formats.EXPORT_FORMATS`. INT8 quantization is :mod:`~cnnzoo.deploy.quantize`'s
(ONNX) and NNCF's (OpenVINO), judged by one rule.

After writing, :func:`export` runs the exported model and the checkpoint on the same
images (batches of 1 and 8) and compares the probabilities; the largest absolute
difference must stay within the tolerance (1e-4), and every output must be finite, or
the export counts as failed.

The output never replaces the checkpoint being exported, nor (without ``force``) any file
that is not already an export of the same format.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import checkpoint as ckpt_io
from .. import runs
from ..errors import UserError
from ..files import Replacement
from ..inference import is_export as is_export_file
from ..inference.classifier import Classifier, probabilities
from ..inference.torch_models import Model
from . import DEFAULT_CALIBRATION, DEFAULT_MAX_DROP, DEFAULT_OPSET, PARITY_TOLERANCE, quantize
from .formats import EXPORT_FORMATS, ExportFormat, Int8Format, metadata  # noqa: F401  (callers name them here)


@dataclass(kw_only=True)
class Exported:
    path: Path
    format: str
    files: list[Path]  # what was written: the path, and an OpenVINO export's weights beside it
    max_difference: float  # largest |probability difference| against the checkpoint
    tolerance: float
    images: int
    not_finite: str = ""  # whose outputs held NaN or infinity ("the checkpoint's" / "the export's"), if any
    int8: quantize.Int8Report | None = None  # FP32 vs INT8 on validation, for an INT8 export

    @property
    def ok(self) -> bool:
        return math.isfinite(self.max_difference) and self.max_difference <= self.tolerance


def _parity_images(model: Classifier, count: int = 8, seed: int = 0) -> np.ndarray:
    """Random uint8 images at the model's input size: every pixel value, every channel."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, *model.image_size, model.channels), dtype=np.uint8)


def max_difference(reference: Classifier, exported: Classifier, images: np.ndarray) -> float:
    """Largest absolute probability (and knn unknown score) difference over a batch of one and the whole batch; NaN when
    either side's output is not finite (``max`` would skip a NaN, and an all-NaN export pass)."""
    worst = 0.0
    for batch in (images[:1], images):
        (logits, score), (their_logits, their_score) = reference.network_outputs(batch), exported.network_outputs(batch)
        diff = np.abs(probabilities(logits) - probabilities(their_logits))
        if score is not None:  # the unknown score computed inside the network (knn) must agree too
            diff = np.concatenate(
                [diff.ravel(), np.abs(score - their_score).ravel() if their_score is not None else [np.nan]]
            )
        if not np.isfinite(diff).all():
            return math.nan
        worst = max(worst, float(diff.max()))
    return worst


def _not_finite(reference: Classifier, images: np.ndarray) -> str:
    """Whose outputs are not finite, once the comparison came out NaN."""
    return "the export's" if np.isfinite(probabilities(reference.logits(images))).all() else "the checkpoint's"


def default_path(checkpoint: Path, fmt: str, int8: bool = False) -> Path:
    spec = EXPORT_FORMATS[fmt]
    return checkpoint.with_name(checkpoint.stem + (spec.int8.suffix if int8 and spec.int8 else spec.suffix))


def files_of(path: Path, fmt: str) -> list[Path]:
    """The files an export of ``fmt`` at ``path`` is: the path, and the weights beside it for a
    format that keeps them there (OpenVINO)."""
    spec = EXPORT_FORMATS[fmt]
    return [path, spec.weights(path)] if spec.weights else [path]


def export(
    checkpoint: str | Path | None = None,
    fmt: str = "onnx",
    *,
    out: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = PARITY_TOLERANCE,
    runs_root: str | Path = "runs",
    force: bool = False,
    int8: bool = False,
    calibration: int = DEFAULT_CALIBRATION,
    max_drop: float = DEFAULT_MAX_DROP,
) -> Exported:
    """Write ``checkpoint`` (default: the newest run's best.pt) as ``fmt`` and check it against the
    checkpoint. ``out`` never replaces the checkpoint; an existing file there that is not an
    export of the same format is replaced only with ``force``.

    ``int8`` (ONNX and OpenVINO) writes an INT8 model instead (default name ``best.int8.onnx``,
    ``best.int8.openvino.xml``), calibrated on ``calibration`` training images, and scores FP32 and
    INT8 on the validation split (:attr:`Exported.int8`); the file is written even when the
    accuracy drops by more than ``max_drop`` points (``Exported.int8.ok`` is then False), so that
    it can be inspected."""
    _check_arguments(fmt, int8, calibration)
    source = runs.resolve_checkpoint(checkpoint, runs_root)
    if is_export_file(source):
        raise UserError(f"{source}: already an export; export from a checkpoint (.pt with weights)")
    checkpoint_data, model = _checkpoint_model(source)
    source = Path(model.path)  # a run folder stands for its best.pt
    path = _output_path(out, source, fmt, int8)
    files = files_of(path, fmt)
    _check_output(files, source, fmt, force)
    replacements = [_replacement(file) for file in files]
    temporaries = [replacement.temporary for replacement in replacements]
    report = None
    try:
        if int8:
            splits = quantize.data_splits(checkpoint_data["config"], model.classes)  # missing data fails first
            options = {"opset": opset, "calibration": calibration, "max_drop": max_drop}
            worst, images, report = _write_int8(model, fmt, temporaries, splits, **options)
        else:
            exported = _write(model, fmt, temporaries, opset)
            images = _parity_images(model)
            worst = max_difference(model, exported, images)
        for replacement in reversed(replacements):  # only finished files take the names, the weights first
            replacement.commit()
    finally:
        for replacement in replacements:
            replacement.discard()
    not_finite = _not_finite(model, images) if math.isnan(worst) else ""
    return Exported(
        path=path,
        format=fmt,
        files=files,
        max_difference=worst,
        tolerance=tolerance,
        images=len(images),
        not_finite=not_finite,
        int8=report,
    )


def _checkpoint_model(source: Path) -> tuple[dict, Model]:
    """The checkpoint's data and its network on the CPU in plain layouts (what an export holds);
    a TorchScript file is refused unopened."""
    checkpoint_data = ckpt_io.load_checkpoint(source)
    model = Model(checkpoint_data, device="cpu")
    model.module.to(memory_format=torch.contiguous_format)
    model.channels_last = False
    return checkpoint_data, model


def _check_arguments(fmt: str, int8: bool, calibration: int) -> None:
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"--format {fmt}: choose one of {', '.join(EXPORT_FORMATS)}")
    if int8 and EXPORT_FORMATS[fmt].int8 is None:
        kinds = [(name, spec.article) for name, spec in EXPORT_FORMATS.items() if spec.int8]
        raise UserError(
            f"--int8: quantizes {' or '.join(a for _, a in kinds)} export; "
            f"use --format {' or '.join(n for n, _ in kinds)} (not {fmt})"
        )
    if calibration < 1:
        raise UserError(f"--calibration {calibration}: give at least 1 training image (default {DEFAULT_CALIBRATION})")


def _replacement(path: Path) -> Replacement:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return Replacement(path)
    except OSError as exc:
        raise UserError(f"{path}: cannot write there ({exc.strerror or exc}); choose another --out") from None


def _output_path(out: str | Path | None, source: Path, fmt: str, int8: bool) -> Path:
    """Where the export goes: ``out`` (a folder, made if need be, takes the default name) or the
    default name beside the checkpoint; a format whose readers know it by its ending gets it."""
    path = Path(out) if out else default_path(source, fmt, int8)
    if path.is_dir() or not path.suffix:  # a folder (made if need be)
        path = path / default_path(source, fmt, int8).name
    ending = EXPORT_FORMATS[fmt].ending
    if ending and not path.name.lower().endswith(ending):
        raise UserError(
            f"--out {path}: {EXPORT_FORMATS[fmt].article} export is read by its {ending} ending; "
            f"name it {path.stem}{ending} (or give a folder)"
        )
    return path


def _write(model: Model, fmt: str, files: list[Path], opset: int) -> Classifier:
    """``model`` written to ``files`` (the model file, and its weights for a format that keeps them
    beside it) as ``fmt``, opened again to be checked."""
    spec = EXPORT_FORMATS[fmt]
    return spec.write(model, files[0], opset, **({"weights": files[1]} if spec.weights else {}))


def _write_int8(
    model: Model, fmt: str, files: list[Path], splits: tuple, *, opset: int, calibration: int, max_drop: float
) -> tuple[float, np.ndarray, quantize.Int8Report]:
    """The FP32 export (checked against the checkpoint, then discarded) quantized to ``files``;
    (its parity, the parity images, FP32 vs INT8 on validation)."""
    spec = EXPORT_FORMATS[fmt]
    with tempfile.TemporaryDirectory(prefix="cnnzoo-export-") as work:
        fp32 = _write(model, fmt, files_of(Path(work) / f"fp32{spec.suffix}", fmt), opset)
        images = _parity_images(model)
        worst = max_difference(model, fp32, images)
        weights = {"weights": files[1]} if spec.weights else {}
        report = spec.int8.write(fp32, files[0], splits, calibration=calibration, max_drop=max_drop, **weights)
    return worst, images, report


def _check_output(files: list[Path], source: Path, fmt: str, force: bool) -> None:
    """Refuse to write over the checkpoint itself, or over a file that is not a ``fmt`` export
    (another checkpoint, metrics.csv ...) unless ``force``: the export replaces what is there.
    A format's weights file beside the model file is its own when the model file is an export."""
    for file in files:
        if file.exists() and os.path.samefile(file, source):
            raise UserError(
                f"--out {files[0]}: {'that' if file == files[0] else file.name + ' beside it'} is the checkpoint "
                f"being exported; writing there would replace it; choose another --out "
                f"(default: {default_path(source, fmt).name} beside it)"
            )
    if force or not any(file.exists() or file.is_symlink() for file in files):
        return
    if (files[0].exists() or files[0].is_symlink()) and not is_export(files[0], fmt):
        raise UserError(
            f"--out {files[0]}: a file that is not {EXPORT_FORMATS[fmt].article} "
            f"export is there already and would be replaced; choose another --out, or add --force"
        )
    if not is_export(files[0], fmt):  # weights with no export of ours beside them
        raise UserError(
            f"--out {files[0]}: {files[-1].name} is there already, not the weights of {EXPORT_FORMATS[fmt].article} "
            f"export, and would be replaced; choose another --out, or add --force"
        )


def is_export(path: Path, fmt: str) -> bool:
    """Whether ``path`` is a cnnzoo export of ``fmt`` (read, never run)."""
    return EXPORT_FORMATS[fmt].recognise(path)
