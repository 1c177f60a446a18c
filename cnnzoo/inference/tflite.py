"""An exported ``.tflite`` file run by the LiteRT interpreter (``ai-edge-litert``); torch is never imported.

A cnnzoo TFLite export takes one image at a time, channels last ([1, H, W, C] float32, as
mobile runtimes feed camera frames), and answers [1, outputs]; its metadata (the JSON the
ONNX export carries) is the flatbuffer's ``Model.metadata`` entry named ``cnnzoo``. The
interpreter holds its tensors between calls, so one model serves one thread at a time
(``serve`` runs the network under a lock).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np

from ..data import preprocess
from ..errors import UserError, short_reason
from .classifier import METADATA_KEY, Classifier, parse_metadata

MISSING = "running a TFLite model needs the LiteRT runtime; pip install 'cnnzoo[litert]'"


@contextmanager
def native_output_hidden() -> Iterator[None]:
    """Standard output and error at the file-descriptor level go to a scratch file for the block:
    LiteRT's C++ logging and the converter's progress lines write there directly, past
    ``sys.stderr``, and the CLI's contract is one line on stderr for an error, none on success."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as scratch, open(os.devnull, "w") as sink:
        try:
            os.dup2(scratch.fileno(), 1), os.dup2(scratch.fileno(), 2)
            with redirect_stdout(sink), redirect_stderr(sink):  # Python-level writers too (rich, absl)
                yield
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def read_metadata(path: str | Path) -> str | None:
    """The ``cnnzoo`` metadata of a TFLite flatbuffer, read (never run); None when it has none."""
    try:
        from ai_edge_litert import schema_py_generated as schema  # lazy: an optional extra (cnnzoo[litert])
    except ImportError:
        raise UserError(f"{path}: {MISSING}") from None
    data = Path(path).read_bytes()
    try:
        model = schema.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == METADATA_KEY.encode():
                return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode()
    except Exception as exc:  # flatbuffers raises plain errors on a file that is not one
        raise UserError(f"{path}: not a readable TFLite model ({short_reason(exc)})") from None
    return None


class TFLiteModel(Classifier):
    """An exported ``.tflite`` file run by the LiteRT interpreter on the CPU."""

    format = "tflite"

    def __init__(self, path: str | Path, num_threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter  # lazy: an optional extra (cnnzoo[litert])
        except ImportError:
            raise UserError(f"{path}: {MISSING}") from None
        if not Path(path).is_file():
            raise UserError(f"{path}: file not found")
        raw = read_metadata(path)
        if raw is None:
            raise UserError(
                f"{path}: a TFLite model without cnnzoo's metadata (classes, input size, "
                f"normalisation); make it with cnnzoo export --format tflite"
            )
        super().__init__(parse_metadata(raw, path, "TFLite export"), path)
        try:
            with native_output_hidden():  # "INFO: Created TensorFlow Lite XNNPACK delegate" on every load
                self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
                self.interpreter.allocate_tensors()
        except Exception as exc:
            raise UserError(f"{path}: the LiteRT interpreter cannot load it ({short_reason(exc)})") from None
        self._check_graph()

    def _check_graph(self) -> None:
        """One float input [1, H, W, C] that agrees with the metadata, one output [1, classes]."""
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        expected = [1, *self.image_size, self.channels]
        if len(inputs) != 1 or inputs[0]["dtype"] != np.float32 or list(inputs[0]["shape"]) != expected:
            got = [(list(i["shape"]), np.dtype(i["dtype"]).name) for i in inputs]
            raise UserError(
                f"{self.path}: damaged or foreign TFLite export: its input is {got}, not float32 "
                f"{expected}; make it with cnnzoo export --format tflite"
            )
        # the logits [1, classes], and with the knn unknown score its [1] (the converter may list them in either order)
        by_rank = {len(o["shape"]): o for o in outputs}
        shape = list(by_rank[2]["shape"]) if 2 in by_rank and len(outputs) == len(by_rank) <= 2 else []
        if len(shape) != 2 or not self.outputs_fit(int(shape[1])) or (len(outputs) == 2 and 1 not in by_rank):
            raise UserError(
                f"{self.path}: damaged or foreign TFLite export: its output is "
                f"{[list(o['shape']) for o in outputs]}, not [1, {len(self.classes)}]"
            )
        self.input_index, self.output_index = inputs[0]["index"], by_rank[2]["index"]
        self.score_index = by_rank[1]["index"] if 1 in by_rank else None

    def network_outputs(self, pixels_hwc: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The logits, and the knn unknown score when the model computes it (its second output)."""
        x = np.moveaxis(preprocess.normalize_array(pixels_hwc, self.mean, self.std), -3, -1)  # channels last
        answers, scores = [], []
        for image in x:  # a fixed batch of one: mobile runtimes run one frame at a time
            self.interpreter.set_tensor(self.input_index, np.ascontiguousarray(image[None]))
            self.interpreter.invoke()
            answers.append(self.interpreter.get_tensor(self.output_index)[0].copy())
            if self.score_index is not None:
                scores.append(float(self.interpreter.get_tensor(self.score_index)[0]))
        logits = np.stack(answers) if answers else np.zeros((0, len(self.classes)), np.float32)
        return logits, np.asarray(scores, np.float32) if self.score_index is not None else None
