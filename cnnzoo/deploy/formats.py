"""The formats ``export`` writes, one line each in :data:`EXPORT_FORMATS`: a writer (the network and
the checkpoint's metadata into the file), a recogniser (whether a file is a cnnzoo export of the
format, read and never run), its file names and, where it has one, its INT8 writer.
:func:`~cnnzoo.deploy.export.export` drives them (paths, parity, replacing files) and
:mod:`~cnnzoo.deploy.benchmark` measures every one.

Floor 8 (deploy): imports torch, the checkpoint's model (:mod:`cnnzoo.inference.torch_models`), the
inference readers of each format, and :mod:`~cnnzoo.deploy.quantize` and
:mod:`~cnnzoo.deploy.openvino_export` (the INT8 writers); each format's package lazily.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import UserError, short_reason
from ..inference.classifier import METADATA_KEY, Classifier
from ..inference.onnx import OnnxModel
from ..inference.openvino_model import weights_path
from ..inference.scored import SCORE_OUTPUT
from ..inference.tflite import TFLiteModel, native_output_hidden, read_metadata
from ..inference.torch_models import Model, TorchScriptModel
from . import openvino_export, quantize


def metadata(model: Model) -> dict:
    """What the exported file carries: the checkpoint's meta (classes, input, normalisation, ...)."""
    return {**model.meta, "epoch": model.epoch, "metrics": model.metrics, "cnnzoo_version": __version__}


def _write_onnx(model: Model, example: torch.Tensor, path: Path, opset: int) -> None:
    try:
        import onnx  # lazy: an optional extra (cnnzoo[onnx]); a missing one is a clear error
    except ImportError:
        raise UserError("--format onnx needs the onnx and onnxruntime packages; pip install 'cnnzoo[onnx]'") from None
    outputs = ["logits", SCORE_OUTPUT] if model.runner is not model.module else ["logits"]
    with warnings.catch_warnings():  # the exporter's notes on tracing and deprecations are not the user's
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model.runner,  # with the knn unknown score, a second output computed inside the graph
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["images"],
                output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in ["images", *outputs]},
            )
        except Exception as exc:
            raise UserError(
                f"{model.path}: cannot export to ONNX opset {opset} ({short_reason(exc, 200)}); "
                f"try --opset 18, or --format torchscript"
            ) from None
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata(model), default=str)
    proto.producer_name, proto.doc_string = "cnnzoo", f"cnnzoo {__version__} export of {model.path}"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _write_tflite(model: Model, path: Path) -> None:
    """Converted by litert-torch with channels-last input ([1, H, W, C]: what mobile camera
    pipelines hand over) and a fixed batch of one (its converter cannot trace a free batch
    through a flatten); the metadata goes in the flatbuffer's ``Model.metadata``."""
    example = torch.zeros(1, *model.image_size, model.channels)
    with warnings.catch_warnings(), native_output_hidden():  # the converter's logs and progress are not the user's
        warnings.simplefilter("ignore")
        try:
            import litert_torch  # lazy: an optional extra (cnnzoo[tflite]), 1 GB with its converter stack
            from ai_edge_litert import schema_py_generated as schema  # lazy: installed with litert-torch
            from ai_edge_litert.tools import flatbuffer_utils
        except ImportError:
            raise UserError("--format tflite needs litert-torch; pip install 'cnnzoo[tflite]'") from None
        try:
            channels_last = litert_torch.to_channel_last_io(model.runner, args=[0]).eval()
            litert_torch.convert(channels_last, (example,)).export(str(path))
        except Exception as exc:
            raise UserError(
                f"{model.path}: litert-torch cannot convert this model ({short_reason(exc, 200)}); try --format onnx"
            ) from None
    flatbuffer = flatbuffer_utils.read_model(str(path))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata(model), default=str).encode(), np.uint8)
    flatbuffer.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_KEY, len(flatbuffer.buffers) - 1
    flatbuffer.metadata = [*(flatbuffer.metadata or []), entry]
    flatbuffer_utils.write_model(flatbuffer, str(path))


def _write_torchscript(model: Model, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():  # torch marks TorchScript deprecated; LibTorch still loads it
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.runner, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={METADATA_KEY: json.dumps(metadata(model), default=str)})


def _onnx_int8(fp32: OnnxModel, path: Path, splits: tuple, *, calibration: int, max_drop: float) -> quantize.Int8Report:
    """onnxruntime's static INT8 version of the FP32 ONNX export ``fp32`` at ``path``, compared with it."""
    train, validation = splits
    seen = quantize.quantize_onnx(Path(str(fp32.path)), path, train, calibration=calibration)
    report = quantize.compare(fp32, OnnxModel(path), validation, max_drop=max_drop)
    report.calibration_images = seen
    quantize.write_metadata(path, path, {"int8": report.metadata()})  # the file says how it scored
    report.int8_bytes = path.stat().st_size  # with the metadata it now carries
    return report


def _example(model: Model) -> torch.Tensor:
    return torch.zeros(2, model.channels, *model.image_size)


def _onnx_written(model: Model, path: Path, opset: int) -> Classifier:
    _write_onnx(model, _example(model), path, opset)
    return OnnxModel(path)


def _tflite_written(model: Model, path: Path, opset: int) -> Classifier:
    _write_tflite(model, path)
    return TFLiteModel(path, num_threads=1)


def _openvino_written(model: Model, path: Path, opset: int, *, weights: Path) -> Classifier:
    return openvino_export.write_ir(model, path, weights, metadata(model))


def _torchscript_written(model: Model, path: Path, opset: int) -> Classifier:
    _write_torchscript(model, _example(model), path)
    return TorchScriptModel(path, device="cpu")  # the code just traced here, not a file handed in


def _is_onnx_export(path: Path) -> bool:
    """An ONNX protobuf with cnnzoo's metadata entry (parsed, never run)."""
    try:
        import onnx  # lazy: an optional extra, as in _write_onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf's decode errors, a folder, an unreadable file
        return False
    return any(entry.key == METADATA_KEY for entry in proto.metadata_props)


def _is_tflite_export(path: Path) -> bool:
    try:
        return read_metadata(path) is not None
    except (UserError, OSError):
        return False


def _is_torchscript_export(path: Path) -> bool:
    """A TorchScript archive (its zip listing read, nothing loaded) with cnnzoo's extra file."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(name.endswith(f"/extra/{METADATA_KEY}") for name in names) and any("/code/" in n for n in names)


@dataclass(frozen=True)
class Int8Format:
    """How a format is quantized: the default name's ending, and the writer ``(fp32 export opened,
    path, (train, validation), *, calibration, max_drop[, weights]) -> Int8Report`` that quantizes
    the FP32 export, compares the two (:func:`~cnnzoo.deploy.quantize.compare`) and writes the
    INT8 file with its report in the metadata."""

    suffix: str
    write: Callable[..., quantize.Int8Report]


@dataclass(frozen=True)
class ExportFormat:
    """One format ``export`` writes: its file suffix, its name in messages, how a model is written
    and opened again for the parity check (model, path, opset), and how its own files are told
    apart from others (``--out`` replaces only those without ``--force``). ``weights``: where a
    format that keeps its weights in a second file puts them, from the model file's path (the
    writer then also takes ``weights=``); ``ending``: what an ``--out`` name must end with for the
    readers to know it; ``int8``: how it is quantized, if it is. ``benchmark`` also reads the extra
    that installs it (``pip install 'cnnzoo[EXTRA]'``) and the modules that must import to write and
    run it."""

    suffix: str
    article: str
    write: Callable[..., Classifier]
    recognise: Callable[[Path], bool]
    weights: Callable[[Path], Path] | None = None
    ending: str = ""
    int8: Int8Format | None = None
    extra: str = ""  # the pip extra that installs it; "" for none (torch alone writes and runs it)
    modules: tuple[str, ...] = ()  # imported to write it and to run it


# the formats export writes: adding one is a writer, a recogniser and a line here (docs/design/architecture.md)
EXPORT_FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat(
        ".onnx",
        "an ONNX",
        _onnx_written,
        _is_onnx_export,
        int8=Int8Format(".int8.onnx", _onnx_int8),
        extra="onnx",
        modules=("onnx", "onnxruntime"),
    ),
    "torchscript": ExportFormat(".torchscript.pt", "a TorchScript", _torchscript_written, _is_torchscript_export),
    "tflite": ExportFormat(
        ".tflite",
        "a TFLite",
        _tflite_written,
        _is_tflite_export,
        extra="tflite",
        modules=("litert_torch", "ai_edge_litert"),
    ),
    "openvino": ExportFormat(
        ".openvino.xml",
        "an OpenVINO",
        _openvino_written,
        openvino_export.is_openvino_export,
        weights=weights_path,
        ending=".xml",
        int8=Int8Format(".int8.openvino.xml", openvino_export.write_int8),
        extra="openvino",
        modules=("openvino", "nncf"),
    ),
}
