"""An exported OpenVINO IR run by the OpenVINO runtime on the CPU; torch is never imported.

A cnnzoo OpenVINO export is OpenVINO's own pair of files: ``best.openvino.xml`` (the graph) and
``best.openvino.bin`` (the weights, named as the XML with its last suffix replaced, where
OpenVINO's tools look for them: ``benchmark_app -m best.openvino.xml`` opens the pair). Its
metadata (the JSON the ONNX export carries) is the model's ``rt_info`` entry ``cnnzoo``, inside
the XML. It takes float32 [batch, C, H, W] with a free batch and answers the logits (and, with
the knn unknown score, ``unknown_score``), as the ONNX export does.

The module is named ``openvino_model`` so that it never stands in for the ``openvino`` package.
Imports floors 0-2, :mod:`cnnzoo.data.preprocess` and OpenVINO (the ``openvino`` extra) lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np

from ..data import preprocess
from ..errors import UserError, short_reason
from . import unknown
from .classifier import METADATA_KEY, Classifier, parse_metadata

MISSING = "running an OpenVINO model needs the OpenVINO runtime; pip install 'cnnzoo[openvino]'"
SUFFIX = ".xml"  # what inference.load and export --out recognise as an OpenVINO model
WEIGHTS_SUFFIX = ".bin"


def weights_path(xml: str | Path) -> Path:
    """Where the weights of the IR ``xml`` are: its name with the last suffix made ``.bin``
    (``best.openvino.xml`` -> ``best.openvino.bin``), as OpenVINO itself looks for them."""
    return Path(xml).with_suffix(WEIGHTS_SUFFIX)


def read_metadata(xml: str | Path) -> str | None:
    """The ``cnnzoo`` entry of an IR's ``rt_info``, read from the XML (expat, no entities
    expanded past its limits, nothing run); None for an IR without it. A file that is not an
    OpenVINO IR is a :class:`UserError`."""
    try:
        root = ElementTree.parse(xml).getroot()
    except (ElementTree.ParseError, ValueError) as exc:
        raise UserError(f"{xml}: not an OpenVINO model (its XML does not parse: {short_reason(exc)})") from None
    if root.tag != "net":
        raise UserError(f"{xml}: an XML file that is not an OpenVINO model (its root is <{root.tag}>, not <net>)")
    entry = root.find(f"rt_info/{METADATA_KEY}")
    return entry.get("value") if entry is not None else None


def openvino_reason(exc: BaseException) -> str:
    """OpenVINO's message without the source locations it starts with ("Exception from
    src/...cpp:84:", "Check '...' failed at ..."): its last line that says something."""
    lines = [line.strip() for line in str(exc).splitlines()]
    said = [line for line in lines if line and not line.startswith(("Exception from ", "Check '"))]
    return short_reason(RuntimeError(said[-1]) if said else exc)


def _runtime() -> Any:
    try:
        import openvino  # lazy: an optional extra (cnnzoo[openvino]); a missing one is a clear error
    except ImportError:
        return None
    return openvino


class OpenVinoModel(Classifier):
    """An exported OpenVINO IR (``.xml`` with its ``.bin``) compiled for the CPU, in FP32
    arithmetic wherever the graph is not INT8 (a CPU with bfloat16 units would otherwise round
    what the parity check compared at 1e-4)."""

    format = "openvino"

    def __init__(self, path: str | Path, weights: str | Path | None = None, *, threads: int | None = None):
        ov = _runtime()
        if ov is None:
            raise UserError(f"{path}: {MISSING}")
        self.weights = Path(weights) if weights is not None else weights_path(path)
        for file, what in ((Path(path), "file not found"), (self.weights, "its weights file is not there")):
            if not file.is_file():
                raise UserError(f"{file}: {what}" + ("" if file == Path(path) else f" (beside {Path(path).name})"))
        raw = read_metadata(path)  # a foreign XML file is named before OpenVINO reads it
        if raw is None:
            raise UserError(
                f"{path}: an OpenVINO model without cnnzoo's metadata (classes, input size, "
                f"normalisation); make it with cnnzoo export --format openvino"
            )
        super().__init__(parse_metadata(raw, path, "OpenVINO export"), path)
        core = ov.Core()
        core.set_property({"ENABLE_MMAP": False})  # read into memory: a file replaced later leaves this one whole
        config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        try:
            self.network = core.read_model(str(path), str(self.weights))
        except Exception as exc:  # OpenVINO's own error types
            raise UserError(f"{path}: not a readable OpenVINO model ({openvino_reason(exc)})") from None
        self._check_graph()
        try:
            self.compiled = core.compile_model(self.network, "CPU", config)
        except Exception as exc:
            raise UserError(f"{path}: OpenVINO cannot compile this model ({openvino_reason(exc)})") from None

    @property
    def kind(self) -> str:
        return "OpenVINO export"

    def files(self) -> list[Path]:
        return [Path(str(self.path)), self.weights]

    def _check_graph(self) -> None:
        """One float input [batch, C, H, W] with a free batch that agrees with the metadata; the
        logits [batch, classes] first, and the knn unknown score [batch] when it is there."""

        def bad(what: str) -> UserError:
            return UserError(f"{self.path}: damaged or foreign OpenVINO export: {what}; make it with cnnzoo export")

        inputs, outputs = self.network.inputs, self.network.outputs
        if len(inputs) != 1:
            raise bad(f"it takes {len(inputs)} inputs, not one batch of images")
        shape = inputs[0].get_partial_shape()
        if inputs[0].get_element_type().get_type_name() != "f32" or shape.rank.is_dynamic or len(shape) != 4:
            raise bad(f"its input is {inputs[0].get_element_type()} {shape}, not f32 [batch, channels, height, width]")
        if shape[0].is_static:
            raise bad(f"its input takes a fixed batch of {shape[0].get_length()} (a cnnzoo export takes any batch)")
        expected = [self.channels, *self.image_size]
        if any(got.is_static and got.get_length() != want for got, want in zip(list(shape)[1:], expected)):
            raise bad(f"its input is {shape} but its metadata says {expected}")
        answer = outputs[0].get_partial_shape() if outputs else None
        if answer is None or answer.rank.is_dynamic or len(answer) != 2:
            raise bad(f"its output is {answer or 'missing'}, not [batch, classes]")
        self.has_score = len(outputs) > 1 and unknown.SCORE_OUTPUT in outputs[1].get_names()
        if answer[1].is_static and not self.outputs_fit(answer[1].get_length()):
            raise bad(f"it gives {answer[1].get_length()} outputs but its metadata names {len(self.classes)} classes")

    def network_outputs(self, pixels_hwc: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The logits, and the ``unknown_score`` output when the model has one (the knn score)."""
        x = preprocess.normalize_array(pixels_hwc, self.mean, self.std)
        try:
            answers = self.compiled(x)  # copies of the outputs: the next call does not overwrite them
        except Exception as exc:  # OpenVINO's own error types: a graph that cannot run this input
            raise UserError(
                f"{self.path}: OpenVINO cannot run this model ({openvino_reason(exc)}); "
                f"a damaged or foreign OpenVINO export"
            ) from None
        return answers[0], answers[1] if self.has_score else None
