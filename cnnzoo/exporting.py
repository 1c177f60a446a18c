"""Export a checkpoint to ONNX or TorchScript, with the model's metadata inside, and check it.

The exported file carries what predicting needs (classes, input size, channels,
normalisation) as ONNX ``metadata_props`` or a TorchScript extra file, under
:data:`cnnzoo.inference.METADATA_KEY`, so it is used alone: ``cnnzoo predict --model
best.onnx`` needs neither the checkpoint nor torch. The batch dimension is dynamic.

After writing, :func:`export` runs the exported model and the checkpoint on the same
images (batches of 1 and 8) and compares the probabilities; the largest absolute
difference must stay within the tolerance (1e-4) or the export counts as failed.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import __version__
from . import checkpoint as ckpt_io
from .errors import UserError
from .inference import METADATA_KEY, Classifier, OnnxModel, load
from .predict import Model, TorchScriptModel

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
DEFAULT_OPSET = 17
PARITY_TOLERANCE = 1e-4


@dataclass
class Exported:
    path: Path
    format: str
    max_difference: float  # largest |probability difference| against the checkpoint
    tolerance: float
    images: int

    @property
    def ok(self) -> bool:
        return self.max_difference <= self.tolerance


def metadata(model: Model) -> dict:
    """What the exported file carries: the checkpoint's meta (classes, input, normalisation, ...)."""
    return {**model.meta, "epoch": model.epoch, "metrics": model.metrics, "cnnzoo_version": __version__}


def _parity_images(model: Classifier, count: int = 8, seed: int = 0) -> np.ndarray:
    """Random uint8 images at the model's input size: every pixel value, every channel."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, *model.image_size, model.channels), dtype=np.uint8)


def max_difference(reference: Classifier, exported: Classifier, images: np.ndarray) -> float:
    """Largest absolute probability difference over a batch of one and the whole batch."""
    worst = 0.0
    for batch in (images[:1], images):
        diff = np.abs(reference.probabilities(batch) - exported.probabilities(batch))
        worst = max(worst, float(diff.max()))
    return worst


def _write_onnx(model: Model, example: torch.Tensor, path: Path, opset: int) -> None:
    try:
        import onnx
    except ImportError:
        raise UserError("--format onnx needs the onnx and onnxruntime packages; pip install 'cnnzoo[onnx]'") from None
    with warnings.catch_warnings():  # the exporter's notes on tracing and deprecations are not the user's
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model.module, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{model.path}: cannot export to ONNX opset {opset} ({first}); "
                            f"try --opset 18, or --format torchscript") from None
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata(model), default=str)
    proto.producer_name, proto.doc_string = "cnnzoo", f"cnnzoo {__version__} export of {model.path}"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _write_torchscript(model: Model, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():  # torch marks TorchScript deprecated; LibTorch still loads it
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.module, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={METADATA_KEY: json.dumps(metadata(model), default=str)})


def default_path(checkpoint: Path, fmt: str) -> Path:
    return checkpoint.with_name(checkpoint.stem + FORMATS[fmt])


def export(checkpoint: Optional[str | Path] = None, fmt: str = "onnx", out: Optional[str | Path] = None,
           opset: int = DEFAULT_OPSET, tolerance: float = PARITY_TOLERANCE,
           runs_root: str | Path = "runs") -> Exported:
    """Write ``checkpoint`` (default: the newest run's best.pt) as ``fmt`` and check it against the checkpoint."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    source = Path(checkpoint) if checkpoint else ckpt_io.default_checkpoint(runs_root)
    model = load(source, device="cpu")
    if not isinstance(model, Model):
        raise UserError(f"{source}: already an export; export from a checkpoint (.pt with weights)")
    model.module.to(memory_format=torch.contiguous_format)  # an export holds plain layouts
    model.channels_last = False
    path = Path(out) if out else default_path(source, fmt)
    if path.is_dir() or not path.suffix:  # a folder (made if need be)
        path = path / default_path(source, fmt).name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
    except OSError as exc:
        raise UserError(f"{path}: cannot write there ({exc.strerror or exc}); choose another --out") from None
    tmp = Path(tmp_name)
    example = torch.zeros(2, model.channels, *model.image_size)
    try:
        if fmt == "onnx":
            _write_onnx(model, example, tmp, opset)
            exported: Classifier = OnnxModel(tmp)
        else:
            _write_torchscript(model, example, tmp)
            exported = TorchScriptModel(tmp, device="cpu")
        images = _parity_images(model)
        worst = max_difference(model, exported, images)
        tmp.replace(path)  # only a finished file takes the name
    finally:
        tmp.unlink(missing_ok=True)
    return Exported(path, fmt, worst, tolerance, len(images))
