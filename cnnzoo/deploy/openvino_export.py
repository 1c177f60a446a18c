"""A checkpoint written as an OpenVINO IR (``.xml`` + ``.bin``), and that IR quantized to INT8 by NNCF.

:func:`write_ir` converts the checkpoint's network with OpenVINO's own converter
(``openvino.convert_model`` from the PyTorch module: no ONNX file in between, so the ``openvino``
extra is enough) with a free batch, names the outputs as the ONNX export does (``logits``, and
``unknown_score`` with the knn score), puts the metadata in ``rt_info`` and saves FP32 weights
(OpenVINO would halve them to FP16 by default, which the 1e-4 parity check could not pass).

:func:`write_int8` runs NNCF's post-training quantization (``nncf.quantize``: INT8 weights and
activations, ranges from the calibration images read with the model's own preprocessing, fast
bias correction) with the nodes that compute only the unknown score left in FP32, as the ONNX
INT8 export leaves them; it scores FP32 and INT8 with :func:`cnnzoo.deploy.quantize.compare`, the
rule ``--max-drop`` applies to every INT8 export.

OpenVINO's converter and NNCF send usage telemetry unless declined: both decline it in CI jobs
(``CI=true``), which is set around their calls only (:func:`_telemetry_declined`), so an export
stays offline. Floor 8: imports torch, inference, data sources (through ``quantize``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import preprocess, sources
from ..errors import DataError, UserError
from ..inference.classifier import METADATA_KEY
from ..inference.openvino_model import OpenVinoModel, openvino_reason, read_metadata
from ..inference.tflite import native_output_hidden
from ..inference.torch_models import Model
from ..inference.unknown import SCORE_OUTPUT
from . import quantize

EXTRA = "pip install 'cnnzoo[openvino]'"
SCHEME = "NNCF post-training quantization: INT8 weights and activations, MinMax ranges, fast bias correction"


@contextmanager
def _telemetry_declined() -> Iterator[None]:
    """Within it, OpenVINO's converter and NNCF see a CI job, where their telemetry is off."""
    saved = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = saved


def _openvino(what: str) -> Any:
    try:
        with _telemetry_declined():
            import openvino  # lazy: an optional extra (cnnzoo[openvino]); a missing one is a clear error
    except ImportError:
        raise UserError(f"{what} needs OpenVINO; {EXTRA}") from None
    return openvino


def write_ir(model: Model, path: Path, weights: Path, meta: dict[str, Any]) -> OpenVinoModel:
    """``model``'s network as an FP32 IR at ``path`` (the graph) and ``weights`` (the .bin), with
    ``meta`` in its rt_info; returns the pair opened again."""
    ov = _openvino("--format openvino")
    example = torch.zeros(2, model.channels, *model.image_size)
    with warnings.catch_warnings(), _telemetry_declined():  # the tracer's deprecation notes are not the user's
        warnings.simplefilter("ignore")
        try:
            network = ov.convert_model(
                model.runner, example_input=example, input=[(-1, model.channels, *model.image_size)]
            )
        except Exception as exc:  # the converter's own error types
            raise UserError(
                f"{model.path}: OpenVINO cannot convert this model ({openvino_reason(exc)}); try --format onnx"
            ) from None
    network.inputs[0].get_tensor().set_names({"images"})
    for output, name in zip(network.outputs, ["logits", SCORE_OUTPUT]):
        output.get_tensor().set_names({name})
    network.set_rt_info(json.dumps(meta, default=str), [METADATA_KEY])
    save_ir(network, path, weights, compress_to_fp16=False)
    return OpenVinoModel(path, weights)


def save_ir(network: Any, path: Path, weights: Path, *, compress_to_fp16: bool) -> None:
    """``openvino.save_model`` writes ``X.xml`` and ``X.bin`` by name only, so the pair is saved in a
    scratch folder and copied to ``path`` and ``weights`` (the temporaries ``export`` commits)."""
    ov = _openvino("--format openvino")
    with tempfile.TemporaryDirectory(prefix="cnnzoo-openvino-") as work:
        ov.save_model(network, str(Path(work) / "model.xml"), compress_to_fp16=compress_to_fp16)
        shutil.copyfile(Path(work) / "model.xml", path)
        shutil.copyfile(Path(work) / "model.bin", weights)


def is_openvino_export(path: Path) -> bool:
    """An OpenVINO IR whose rt_info holds cnnzoo's metadata (its XML parsed, nothing run)."""
    try:
        return read_metadata(path) is not None
    except (UserError, OSError):
        return False


def score_only_nodes(network: Any) -> list[str]:
    """The operations that compute only the knn unknown score (the features normalised against the
    bank, the k-th similarity), by name; none for a network without the score."""
    outputs = network.outputs
    if len(outputs) < 2 or SCORE_OUTPUT not in outputs[1].get_names():
        return []

    def ancestors(node: Any) -> set[str]:
        seen, stack = {}, [node]
        while stack:
            current = stack.pop()
            if current.get_friendly_name() not in seen:
                seen[current.get_friendly_name()] = current
                stack.extend(value.get_node() for value in current.input_values())
        return set(seen)

    score, logits = (ancestors(output.get_node()) for output in (outputs[1], outputs[0]))
    return sorted(score - logits)


def _calibration_images(fp32: OpenVinoModel, train: sources.Samples, calibration: int) -> list[np.ndarray]:
    """Up to ``calibration`` training images (every class: a seeded shuffle), read and normalised
    as ``predict`` reads them, one [1, C, H, W] array each (NNCF counts its subset in items)."""
    order = np.random.default_rng(0).permutation(len(train))[:calibration].tolist()
    images = []
    for batch, _ in quantize.batches(fp32, train, order):
        normalised = preprocess.normalize_array(batch, fp32.mean, fp32.std)
        images.extend(normalised[i : i + 1] for i in range(len(normalised)))
    if not images:
        raise DataError("--int8: no readable training image to calibrate on")
    return images


def _quantized(fp32: OpenVinoModel, images: list[np.ndarray]) -> Any:
    """NNCF's INT8 version of ``fp32``'s network, calibrated on ``images``."""
    # NNCF's import loads torch's extension builder, which logs that this machine has no CUDA
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        with _telemetry_declined():
            import nncf  # lazy: with openvino in the extra (cnnzoo[openvino])
    except ImportError:
        raise UserError(f"--int8 --format openvino needs NNCF; {EXTRA}") from None
    logging.getLogger("nncf").setLevel(logging.ERROR)  # its INFO lines and progress bars are not the user's
    ignored = score_only_nodes(fp32.network)
    with native_output_hidden(), _telemetry_declined(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return nncf.quantize(
                fp32.network.clone(),
                nncf.Dataset(images),
                subset_size=len(images),
                ignored_scope=nncf.IgnoredScope(names=ignored, validate=False) if ignored else None,
            )
        except Exception as exc:  # NNCF's own error types
            raise UserError(f"{fp32.path}: NNCF cannot quantize this model ({openvino_reason(exc)})") from None


def write_int8(
    fp32: OpenVinoModel,
    path: Path,
    splits: tuple[sources.Samples, sources.Samples],
    *,
    calibration: int,
    max_drop: float,
    weights: Path,
) -> quantize.Int8Report:
    """The INT8 IR of the cnnzoo FP32 IR ``fp32`` at ``path`` + ``weights``, scored against it on the
    validation split; the file records how it was made and how it scored (rt_info ``cnnzoo.int8``)."""
    train, validation = splits
    images = _calibration_images(fp32, train, calibration)
    network = _quantized(fp32, images)
    meta = json.loads(read_metadata(fp32.path) or "{}")
    with tempfile.TemporaryDirectory(prefix="cnnzoo-int8-") as work:
        scratch = Path(work) / "int8.xml"
        save_ir(network, scratch, scratch.with_suffix(".bin"), compress_to_fp16=False)
        report = quantize.compare(fp32, OpenVinoModel(scratch), validation, max_drop=max_drop)
    report.calibration_images = len(images)
    meta["int8"] = {**report.metadata(), "scheme": SCHEME}  # the file says how it was made and how it scored
    network.set_rt_info(json.dumps(meta, default=str), [METADATA_KEY])
    save_ir(network, path, weights, compress_to_fp16=False)
    report.int8_bytes = path.stat().st_size + weights.stat().st_size  # with the metadata it now carries
    return report
