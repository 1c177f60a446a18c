"""Prediction: the model formats, the loop they share, and :func:`load`, which picks a format by the file.

* :mod:`~cnnzoo.inference.classifier` (torch-free): what a prediction is, whatever runs the
  network: preprocessing, batches decoded in threads, the one rule from logits to
  probabilities, the records ``predict --json`` prints.
* :mod:`~cnnzoo.inference.onnx` (torch-free): an exported ``.onnx`` file run by onnxruntime.
* :mod:`~cnnzoo.inference.tflite` (torch-free): an exported ``.tflite`` file run by LiteRT.
* :mod:`~cnnzoo.inference.openvino_model` (torch-free): an exported OpenVINO IR (``.xml`` and
  its ``.bin``) run by the OpenVINO runtime.
* :mod:`~cnnzoo.inference.torch_models`: checkpoints and TorchScript files, run by torch.
* :mod:`~cnnzoo.inference.tta`: test-time augmentation, five views of each image averaged.
* :mod:`~cnnzoo.inference.inputs` (torch-free): image arguments expanded, records as CSV.

Floor 5. The torch-free modules import floors 0-2 and :mod:`cnnzoo.data.preprocess` only;
``torch_models`` may also import :mod:`cnnzoo.model` and :mod:`cnnzoo.runtime`. Nothing here
imports :mod:`cnnzoo.training`. This ``__init__`` is the torch-free boundary: :func:`load`
imports the torch formats only when the file is not an ONNX, TFLite or OpenVINO export.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .classifier import Classifier
from .onnx import OnnxModel
from .openvino_model import OpenVinoModel
from .tflite import TFLiteModel


def is_onnx(path: str | Path) -> bool:
    return str(path).lower().endswith(".onnx")


def is_tflite(path: str | Path) -> bool:
    return str(path).lower().endswith(".tflite")


def is_openvino(path: str | Path) -> bool:
    """An OpenVINO IR, named by its ``.xml`` (the weights are the ``.bin`` beside it)."""
    return str(path).lower().endswith(".xml")


def is_export(path: str | Path) -> bool:
    """A file the torch-free formats open (ONNX, TFLite, OpenVINO), told by its name."""
    return is_onnx(path) or is_tflite(path) or is_openvino(path)


def load(
    path: str | Path | None = None,
    device: str | None = None,
    runs_root: str | Path = "runs",
    *,
    trust_torchscript: bool = False,
    threads: int | None = None,
) -> Classifier:
    """A model from a checkpoint (default: the newest run's best.pt) or an ``.onnx``, ``.tflite``
    or OpenVINO ``.xml`` export; only the exports leave torch unimported. A TorchScript archive
    runs the code it holds when loaded, so it is refused unless ``trust_torchscript`` says the
    file is trusted. ``threads`` sets an export's runtime's CPU threads (default: the runtime's
    own); torch's are process-wide (``torch.set_num_threads``)."""
    if path is not None and is_onnx(path):
        if device not in (None, "auto", "cpu"):
            raise UserError(f"--device {device}: an ONNX model runs on the CPU here (onnxruntime)")
        return OnnxModel(path, threads=threads)
    if path is not None and is_tflite(path):
        if device not in (None, "auto", "cpu"):
            raise UserError(f"--device {device}: a TFLite model runs on the CPU here (LiteRT)")
        return TFLiteModel(path, num_threads=threads)
    if path is not None and is_openvino(path):
        if device not in (None, "auto", "cpu"):
            raise UserError(f"--device {device}: an OpenVINO model runs on the CPU here")
        return OpenVinoModel(path, threads=threads)
    from .torch_models import load_torch  # lazy: the torch-free boundary: only a non-ONNX file imports torch

    return load_torch(path, device, runs_root, trust_torchscript=trust_torchscript)
