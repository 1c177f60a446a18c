"""An exported ``.onnx`` file run by onnxruntime on the CPU; torch is never imported."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import preprocess
from ..errors import UserError, short_reason
from . import unknown
from .classifier import METADATA_KEY, Classifier, parse_metadata


class OnnxModel(Classifier):
    """An exported ``.onnx`` file run by onnxruntime on the CPU; torch is never imported."""

    format = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            import onnxruntime  # lazy: an optional extra (cnnzoo[onnx]); a missing one is a clear error
        except ImportError:
            raise UserError(f"{path}: running an ONNX model needs onnxruntime; pip install 'cnnzoo[onnx]'") from None
        if not Path(path).is_file():
            raise UserError(f"{path}: file not found")
        options = onnxruntime.SessionOptions()
        # fatal only: onnxruntime logs a failed run (a 4 TB allocation) as its own ANSI-coloured
        # error line before raising; the exception's message becomes our one line instead
        options.log_severity_level = 4
        if threads is not None:  # onnxruntime's default: a thread per physical core
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise UserError(f"{path}: not a readable ONNX model ({short_reason(exc)})") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise UserError(
                f"{path}: an ONNX model without cnnzoo's metadata (classes, input size, "
                f"normalisation); make it with cnnzoo export"
            )
        super().__init__(parse_metadata(raw, path, "ONNX export"), path)
        self._check_graph()
        self.input_name = self.session.get_inputs()[0].name

    def _check_graph(self) -> None:
        """The graph's input and output agree with the metadata: one float input [batch, C, H, W]
        with a free batch, one output [batch, classes] (static sizes checked, others at run time)."""

        def bad(what: str) -> UserError:
            return UserError(f"{self.path}: damaged or foreign ONNX export: {what}; make it with cnnzoo export")

        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise bad(f"it takes {len(inputs)} inputs, not one batch of images")
        image, shape = inputs[0], list(inputs[0].shape)
        if image.type != "tensor(float)" or len(shape) != 4:
            raise bad(f"its input is {image.type} {shape}, not float [batch, channels, height, width]")
        if isinstance(shape[0], int):
            raise bad(f"its input takes a fixed batch of {shape[0]} (a cnnzoo export takes any batch size)")
        expected = [self.channels, *self.image_size]
        if any(isinstance(got, int) and got != want for got, want in zip(shape[1:], expected)):
            raise bad(f"its input is {shape[1:]} but its metadata says {expected}")
        answer = list(outputs[0].shape) if outputs else []
        if len(answer) != 2:
            raise bad(f"its output is {answer or 'missing'}, not [batch, classes]")
        self.has_score = len(outputs) > 1 and outputs[1].name == unknown.SCORE_OUTPUT
        if isinstance(answer[1], int) and not self.outputs_fit(answer[1]):
            raise bad(f"it gives {answer[1]} outputs but its metadata names {len(self.classes)} classes")

    def network_outputs(self, pixels_hwc: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The logits, and the graph's ``unknown_score`` output when it has one (the knn score)."""
        x = preprocess.normalize_array(pixels_hwc, self.mean, self.std)
        try:
            answers = self.session.run(None, {self.input_name: x})
            return answers[0], answers[1] if self.has_score else None
        except Exception as exc:  # onnxruntime's own error types: a graph that cannot run this input
            raise UserError(
                f"{self.path}: onnxruntime cannot run this model ({short_reason(exc)}); "
                f"a damaged or foreign ONNX export"
            ) from None
