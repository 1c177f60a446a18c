"""Prediction with torch: checkpoints (``load(path).predict(images)``) and TorchScript exports.

A checkpoint carries its classes, input size, channels and normalisation (plain data in
``meta``), so no config or data folder is needed. Batching, preprocessing and the
records come from :class:`cnnzoo.inference.classifier.Classifier`, shared with the ONNX model;
here is only how torch runs the network. This module does not import torchvision (a
torchvision backbone's architecture does, a timm one needs timm), which keeps
``cnnzoo predict`` quick to start.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import checkpoint as ckpt_io
from .. import runs
from ..errors import UserError, short_reason
from ..model.layers import build_from_infos, trace_records
from ..runtime.device import norm_tensors, pick_device, prefers_channels_last, to_model_input
from .classifier import METADATA_KEY, Classifier, parse_metadata
from .scored import ScoredNetwork
from .tta import AveragedViews


def _tensor_to_array(t: torch.Tensor) -> np.ndarray:
    """[C, H, W] uint8 pixels, or float in [0, 1] (torchvision's ToTensor convention) -> HxWxC uint8."""
    if t.ndim != 3:
        raise ValueError(f"expected a [C, H, W] tensor, got shape {list(t.shape)}")
    if t.dtype != torch.uint8:
        t = (t.float().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = t.permute(1, 2, 0).cpu().numpy()
    return arr[:, :, 0] if arr.shape[2] == 1 else arr


class _FirstOutput(torch.nn.Module):
    """A scored network's logits alone (what test-time augmentation averages)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        answer = self.module(x)
        return answer[0] if isinstance(answer, (tuple, list)) else answer


class _TorchClassifier(Classifier):
    """What runs a torch module: device, memory format, normalisation on the device.
    ``tta = True`` (or ``predict(..., tta=True)`` for one call) scores every image as the average
    of five views (:mod:`cnnzoo.inference.tta`)."""

    tta: bool = False
    averages_views = True

    @contextmanager
    def views_averaged(self, tta: bool) -> Iterator[None]:
        before = self.tta
        self.tta = before or tta
        try:
            yield
        finally:
            self.tta = before

    def _place(self, module: torch.nn.Module, device: str | None) -> None:
        # module: the network (logits only, for a checkpoint); runner: what predicts, the network
        # with its kNN score inside when the model has one (a TorchScript file holds it already)
        self.module = self.runner = module.eval()
        self.device = pick_device(device or "auto", key="--device")
        self.channels_last = prefers_channels_last(self.device)  # the memory format training used
        self.module.to(
            self.device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
        )
        self.norm = norm_tensors(self.mean, self.std, self.device)

    def preprocess(self, item: Any) -> np.ndarray:
        """One image (path, PIL image, NumPy HxWxC array or [C, H, W] tensor) -> uint8 HxWxC."""
        if isinstance(item, torch.Tensor):
            item = _tensor_to_array(item)
        return super().preprocess(item)

    @torch.inference_mode()
    def network_outputs(self, pixels_hwc: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The logits, and the unknown score of a network that answers it as a second output
        (:class:`~cnnzoo.inference.scored.ScoredNetwork`; with ``tta``, of the image as it is)."""
        images = torch.from_numpy(pixels_hwc).permute(0, 3, 1, 2)
        x = to_model_input(images, *self.norm, device=self.device, channels_last=self.channels_last)
        answer = self.runner(x)
        logits, score = answer if isinstance(answer, (tuple, list)) else (answer, None)
        if self.tta:
            logits = AveragedViews(_FirstOutput(self.runner))(x)
        return logits.float().cpu().numpy(), None if score is None else score.float().cpu().numpy()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "device": str(self.device)}


class Model(_TorchClassifier):
    """A trained classifier from a checkpoint; see :func:`load`."""

    format = "checkpoint"

    def __init__(self, ckpt: dict[str, Any], device: str | None = None):
        super().__init__(ckpt["meta"], ckpt.get("path"))
        self.epoch = ckpt.get("epoch")
        self.metrics = ckpt.get("metrics", {})
        self.config = ckpt.get("config", {})
        try:
            self.infos = trace_records(ckpt["layers"], [self.channels, *self.image_size], len(self.classes))
            module = build_from_infos(self.infos)
            module.load_state_dict(ckpt["model_state"])
        except UserError as exc:
            raise UserError(f"{self.path}: its layers cannot be rebuilt: {exc}") from None
        except (RuntimeError, ValueError, TypeError) as exc:  # missing, extra or mis-shaped tensors
            raise UserError(f"{self.path}: its weights do not fit its layers ({short_reason(exc)})") from None
        broken = ckpt_io.nonfinite_tensors(ckpt["model_state"])
        if broken:  # every output would be NaN: a prediction, an export or a served answer means nothing
            raise UserError(
                f"{self.path}: its weights hold NaN or infinite values ({len(broken)} of "
                f"{len(ckpt['model_state'])} tensors, the first {broken[0]}); training diverged? "
                f"use an earlier checkpoint, or train again with a lower train.lr"
            )
        self._place(module, device)
        self.runner = self._scored(self.module, ckpt).to(self.device)

    def _scored(self, module: torch.nn.Module, ckpt: dict[str, Any]) -> torch.nn.Module:
        """The network with its kNN score inside when ``meta.unknown`` names it (the bank of training
        features is the checkpoint's ``unknown_bank``)."""
        if self.unknown is None or self.unknown["score"] != "knn":
            return module
        bank = ckpt.get("unknown_bank")
        if not isinstance(bank, torch.Tensor) or bank.ndim != 2 or not len(bank):
            raise UserError(f"{self.path}: meta.unknown names the knn score but unknown_bank is missing or not [N, D]")
        try:
            # eval, as the network is: an exporter that restores the mode it found must find eval
            scored = ScoredNetwork(module, bank, int(self.unknown.get("k", 1))).eval()
        except ValueError as exc:  # a head that is no Linear
            raise UserError(f"{self.path}: meta.unknown names the knn score but {exc}") from None
        if bank.shape[1] != scored.head.in_features:
            raise UserError(
                f"{self.path}: its unknown_bank holds {bank.shape[1]} features per image, its head takes "
                f"{scored.head.in_features}; a damaged checkpoint"
            )
        return scored

    def __repr__(self) -> str:
        return (
            f"cnnzoo.Model({self.path!r}, classes={len(self.classes)}, "
            f"input={self.channels}x{self.image_size[0]}x{self.image_size[1]}, device={self.device})"
        )


class TorchScriptModel(_TorchClassifier):
    """A ``cnnzoo export --format torchscript`` file: the traced network with its metadata inside.

    Loading one runs the code it holds, whatever it does: only for files the caller trusts
    (``load(..., trust_torchscript=True)``, ``--trust-torchscript``, or the file export just wrote).
    """

    format = "torchscript"

    def __init__(self, path: str | Path, device: str | None = None):
        extra = {METADATA_KEY: ""}
        try:
            with warnings.catch_warnings():  # torch marks TorchScript deprecated; it still loads
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as exc:
            raise UserError(f"{path}: not a readable TorchScript file ({short_reason(exc)})") from None
        if not extra[METADATA_KEY]:
            raise UserError(f"{path}: a TorchScript file without cnnzoo's metadata; make it with cnnzoo export")
        super().__init__(parse_metadata(extra[METADATA_KEY], path, "TorchScript export"), path)
        self._place(module, device)


def load_torch(
    path: str | Path | None = None,
    device: str | None = None,
    runs_root: str | Path = "runs",
    *,
    trust_torchscript: bool = False,
) -> _TorchClassifier:
    """Load a checkpoint (default: the newest run's best.pt) as a :class:`Model` (``.onnx``:
    :func:`cnnzoo.inference.load`). A TorchScript archive is refused before it is opened, as
    its code would run, unless ``trust_torchscript`` says the file is trusted."""
    path = runs.resolve_checkpoint(path, runs_root)
    try:
        return Model(ckpt_io.load_checkpoint(path), device)
    except ckpt_io.TorchScriptRefused:
        if not trust_torchscript:
            raise UserError(
                f"{path}: {ckpt_io.TORCHSCRIPT_RUNS_CODE} (any code, not only a network), so cnnzoo "
                f"opens one only when told the file is trusted (--trust-torchscript; "
                f"trust_torchscript=True in Python); or use its checkpoint or an .onnx export"
            ) from None
    return TorchScriptModel(path, device)
