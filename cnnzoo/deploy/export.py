"""Export a checkpoint to ONNX or TorchScript, with the model's metadata inside, and check it.

The exported file carries what predicting needs (classes, input size, channels,
normalisation) as ONNX ``metadata_props`` or a TorchScript extra file, under
:data:`cnnzoo.inference.classifier.METADATA_KEY`, so it is used alone: ``cnnzoo predict --model
best.onnx`` needs neither the checkpoint nor torch. The batch dimension is dynamic.

After writing, :func:`export` runs the exported model and the checkpoint on the same
images (batches of 1 and 8) and compares the probabilities; the largest absolute
difference must stay within the tolerance (1e-4), and every output must be finite, or
the export counts as failed.

The output never replaces the checkpoint being exported, nor (without ``force``) any file
that is not already an export of the same format.
"""

from __future__ import annotations

import json
import math
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__, runs
from .. import checkpoint as ckpt_io
from ..errors import UserError, short_reason
from ..files import Replacement
from ..inference import is_onnx
from ..inference.classifier import METADATA_KEY, Classifier, probabilities
from ..inference.onnx import OnnxModel
from ..inference.torch_models import Model, TorchScriptModel
from . import DEFAULT_OPSET, PARITY_TOLERANCE

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


@dataclass(kw_only=True)
class Exported:
    path: Path
    format: str
    max_difference: float  # largest |probability difference| against the checkpoint
    tolerance: float
    images: int
    not_finite: str = ""  # whose outputs held NaN or infinity ("the checkpoint's" / "the export's"), if any

    @property
    def ok(self) -> bool:
        return math.isfinite(self.max_difference) and self.max_difference <= self.tolerance


def metadata(model: Model) -> dict:
    """What the exported file carries: the checkpoint's meta (classes, input, normalisation, ...)."""
    return {**model.meta, "epoch": model.epoch, "metrics": model.metrics, "cnnzoo_version": __version__}


def _parity_images(model: Classifier, count: int = 8, seed: int = 0) -> np.ndarray:
    """Random uint8 images at the model's input size: every pixel value, every channel."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, *model.image_size, model.channels), dtype=np.uint8)


def max_difference(reference: Classifier, exported: Classifier, images: np.ndarray) -> float:
    """Largest absolute probability difference over a batch of one and the whole batch; NaN when
    either side's output is not finite (``max`` would skip a NaN, and an all-NaN export pass)."""
    worst = 0.0
    for batch in (images[:1], images):
        diff = np.abs(probabilities(reference.logits(batch)) - probabilities(exported.logits(batch)))
        if not np.isfinite(diff).all():
            return math.nan
        worst = max(worst, float(diff.max()))
    return worst


def _not_finite(reference: Classifier, images: np.ndarray) -> str:
    """Whose outputs are not finite, once the comparison came out NaN."""
    return "the export's" if np.isfinite(probabilities(reference.logits(images))).all() else "the checkpoint's"


def _write_onnx(model: Model, example: torch.Tensor, path: Path, opset: int) -> None:
    try:
        import onnx  # lazy: an optional extra (cnnzoo[onnx]); a missing one is a clear error
    except ImportError:
        raise UserError("--format onnx needs the onnx and onnxruntime packages; pip install 'cnnzoo[onnx]'") from None
    with warnings.catch_warnings():  # the exporter's notes on tracing and deprecations are not the user's
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model.module,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
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


def _write_torchscript(model: Model, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():  # torch marks TorchScript deprecated; LibTorch still loads it
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model.module, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={METADATA_KEY: json.dumps(metadata(model), default=str)})


def default_path(checkpoint: Path, fmt: str) -> Path:
    return checkpoint.with_name(checkpoint.stem + FORMATS[fmt])


def export(
    checkpoint: str | Path | None = None,
    fmt: str = "onnx",
    *,
    out: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = PARITY_TOLERANCE,
    runs_root: str | Path = "runs",
    force: bool = False,
) -> Exported:
    """Write ``checkpoint`` (default: the newest run's best.pt) as ``fmt`` and check it against the
    checkpoint. ``out`` never replaces the checkpoint; an existing file there that is not an
    export of the same format is replaced only with ``force``."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    source = runs.resolve_checkpoint(checkpoint, runs_root)
    if is_onnx(source):
        raise UserError(f"{source}: already an export; export from a checkpoint (.pt with weights)")
    model = Model(ckpt_io.load_checkpoint(source), device="cpu")  # a TorchScript file is refused unopened
    source = Path(model.path)  # a run folder stands for its best.pt
    model.module.to(memory_format=torch.contiguous_format)  # an export holds plain layouts
    model.channels_last = False
    path = Path(out) if out else default_path(source, fmt)
    if path.is_dir() or not path.suffix:  # a folder (made if need be)
        path = path / default_path(source, fmt).name
    _check_output(path, source, fmt, force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replacement = Replacement(path)
    except OSError as exc:
        raise UserError(f"{path}: cannot write there ({exc.strerror or exc}); choose another --out") from None
    tmp = replacement.temporary
    example = torch.zeros(2, model.channels, *model.image_size)
    try:
        if fmt == "onnx":
            _write_onnx(model, example, tmp, opset)
            exported: Classifier = OnnxModel(tmp)
        else:
            _write_torchscript(model, example, tmp)
            exported = TorchScriptModel(tmp, device="cpu")  # the code just traced here, not a file handed in
        images = _parity_images(model)
        worst = max_difference(model, exported, images)
        replacement.commit()  # only a finished file takes the name
    finally:
        replacement.discard()
    not_finite = _not_finite(model, images) if math.isnan(worst) else ""
    return Exported(
        path=path, format=fmt, max_difference=worst, tolerance=tolerance, images=len(images), not_finite=not_finite
    )


def _check_output(path: Path, source: Path, fmt: str, force: bool) -> None:
    """Refuse to write over the checkpoint itself, or over a file that is not a ``fmt`` export
    (another checkpoint, metrics.csv ...) unless ``force``: the export replaces what is there."""
    if not (path.exists() or path.is_symlink()):
        return
    if path.exists() and os.path.samefile(path, source):
        raise UserError(
            f"--out {path}: that is the checkpoint being exported; writing there would replace "
            f"it; choose another --out (default: {default_path(source, fmt).name} beside it)"
        )
    if not force and not is_export(path, fmt):
        raise UserError(
            f"--out {path}: a file that is not {'an ONNX' if fmt == 'onnx' else 'a TorchScript'} "
            f"export is there already and would be replaced; choose another --out, or add --force"
        )


def is_export(path: Path, fmt: str) -> bool:
    """Whether ``path`` is a cnnzoo export of ``fmt`` (read, never run: an ONNX protobuf's
    metadata, a TorchScript archive's file listing)."""
    if fmt == "onnx":
        try:
            import onnx  # lazy: an optional extra, as in _write_onnx

            proto = onnx.load(str(path), load_external_data=False)
        except Exception:  # protobuf's decode errors, a folder, an unreadable file
            return False
        return any(entry.key == METADATA_KEY for entry in proto.metadata_props)

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(name.endswith(f"/extra/{METADATA_KEY}") for name in names) and any("/code/" in n for n in names)
