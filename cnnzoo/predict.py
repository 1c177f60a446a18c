"""Prediction from a checkpoint alone: ``load(path).predict(images)``.

A checkpoint carries its classes, input size, channels and normalisation (plain data in
``meta``), so no config or data folder is needed. Images go through the same
:func:`cnnzoo.preprocess.load_image` as validation did in training. This module does
not import torchvision (a torchvision backbone's architecture does, a timm one needs timm),
which keeps ``cnnzoo predict`` quick to start.
"""

from __future__ import annotations

import glob
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch

from . import checkpoint as ckpt_io
from . import preprocess
from .console import console
from .device import norm_tensors, pick_device, prefers_channels_last, to_model_input
from .errors import UserError
from .layers import build_from_records
from .metrics import probabilities


def _image_label(item: Any, position: int) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    return f"<{type(item).__name__} {position}>"


def _tensor_to_array(t: torch.Tensor) -> np.ndarray:
    """[C, H, W] uint8 pixels, or float in [0, 1] (torchvision's ToTensor convention) -> HxWxC uint8."""
    if t.ndim != 3:
        raise ValueError(f"expected a [C, H, W] tensor, got shape {list(t.shape)}")
    if t.dtype != torch.uint8:
        t = (t.float().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = t.permute(1, 2, 0).cpu().numpy()
    return arr[:, :, 0] if arr.shape[2] == 1 else arr


class Model:
    """A trained classifier with its preprocessing; see :func:`load`."""

    def __init__(self, ckpt: dict[str, Any], device: Optional[str] = None):
        self.meta = dict(ckpt["meta"])
        self.classes: list[str] = list(self.meta["classes"])
        self.image_size = tuple(self.meta["image_size"])
        self.channels = int(self.meta["channels"])
        self.path = ckpt.get("path")
        self.epoch = ckpt.get("epoch")
        self.metrics = ckpt.get("metrics", {})
        self.config = ckpt.get("config", {})
        try:
            self.module = build_from_records(ckpt["layers"], [self.channels, *self.image_size], len(self.classes))
            self.module.load_state_dict(ckpt["model_state"])
        except UserError as exc:
            raise UserError(f"{self.path}: its layers cannot be rebuilt: {exc}") from None
        except (RuntimeError, ValueError, TypeError) as exc:  # missing, extra or mis-shaped tensors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{self.path}: its weights do not fit its layers ({first[:160]})") from None
        self.module.eval()
        self.device = pick_device(device or "auto", key="--device")
        self.channels_last = prefers_channels_last(self.device)  # the memory format training used
        self.module.to(self.device, memory_format=torch.channels_last if self.channels_last
                       else torch.contiguous_format)
        self.norm = norm_tensors(self.meta["mean"], self.meta["std"], self.device)

    def preprocess(self, item: Any) -> np.ndarray:
        """One image (path, PIL image, NumPy HxWxC array or [C, H, W] tensor) -> uint8 HxWxC."""
        if isinstance(item, torch.Tensor):
            item = _tensor_to_array(item)
        return preprocess.load_image(item, self.image_size, self.channels)

    @torch.inference_mode()
    def logits(self, pixels_hwc: np.ndarray) -> torch.Tensor:
        """uint8 [B, H, W, C] -> float32 logits [B, outputs] on the CPU."""
        images = torch.from_numpy(pixels_hwc).permute(0, 3, 1, 2)
        x = to_model_input(images, *self.norm, self.device, self.channels_last)
        return self.module(x).float().cpu()

    def _records(self, names: list[str], probs: torch.Tensor, top_k: int) -> list[dict[str, Any]]:
        k = max(1, min(top_k, len(self.classes)))
        top_p, top_i = probs.topk(k, dim=1)
        records = []
        for name, ps, idx in zip(names, top_p.tolist(), top_i.tolist()):
            ranked = [{"label": self.classes[i], "probability": p} for p, i in zip(ps, idx)]
            records.append({"image": name, "label": ranked[0]["label"],
                            "probability": ranked[0]["probability"], "top_k": ranked})
        return records

    def predict(self, images: Any, top_k: int = 5, batch_size: int = 64, errors: Optional[list] = None,
                progress: bool = False) -> list[dict[str, Any]]:
        """Predict one image or a list; returns one record per readable image.

        Each record is ``{"image", "label", "probability", "top_k": [{"label",
        "probability"}]}`` with softmax probabilities over all classes. Unreadable images
        are skipped; when ``errors`` is a list, ``(image, reason)`` pairs are appended to it,
        otherwise the first failure raises :class:`cnnzoo.errors.UserError`.
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        records: list[dict[str, Any]] = []
        bar = console.bar(len(images), "predict", unit="img") if progress and len(images) > batch_size else None
        workers = min(8, os.cpu_count() or 1)
        starts = list(range(0, len(images), batch_size))
        with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes outside the GIL
            def submit(start: int) -> list:
                return [pool.submit(self._try_preprocess, item) for item in images[start:start + batch_size]]

            pending = submit(starts[0]) if starts else []
            for n, start in enumerate(starts):
                chunk = list(images[start:start + batch_size])
                decoded = [future.result() for future in pending]
                if n + 1 < len(starts):  # decode the next batch while this one runs forward
                    pending = submit(starts[n + 1])
                names, arrays = [], []
                for offset, (item, (array, reason)) in enumerate(zip(chunk, decoded)):
                    name = _image_label(item, start + offset)
                    if array is None:
                        if errors is None:
                            raise UserError(f"{name}: cannot read image ({reason})")
                        errors.append((name, reason))
                    else:
                        names.append(name)
                        arrays.append(array)
                if arrays:
                    probs = probabilities(self.logits(np.stack(arrays)))
                    records.extend(self._records(names, probs, top_k))
                if bar is not None:
                    bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return records

    def _try_preprocess(self, item: Any) -> tuple[Optional[np.ndarray], str]:
        try:
            return self.preprocess(item), ""
        except FileNotFoundError:
            return None, "file not found"
        except Exception as exc:  # PIL raises many types for broken files
            return None, f"{type(exc).__name__}: {str(exc).strip() or 'unreadable'}"

    def __repr__(self) -> str:
        return (f"cnnzoo.Model({self.path!r}, classes={len(self.classes)}, "
                f"input={self.channels}x{self.image_size[0]}x{self.image_size[1]}, device={self.device})")


def load(path: str | Path | None = None, device: Optional[str] = None, runs_root: str | Path = "runs") -> Model:
    """Load a checkpoint (default: the newest run's best.pt) as a :class:`Model`."""
    path = Path(path) if path else ckpt_io.default_checkpoint(runs_root)
    return Model(ckpt_io.load_checkpoint(path), device)


def _unreadable_reason(path: str) -> str:
    if os.path.islink(path) and not os.path.exists(path):
        return "broken link"
    return "not a regular file"


def expand_inputs(arguments: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files, folders (recursively) and glob patterns -> image paths, plus what cannot be read.

    Every image-named file met is either returned or named with a reason: FIFOs and other
    special files are never opened (they would block), dangling links are named too.
    """
    paths: list[str] = []
    missing: list[tuple[str, str]] = []
    for arg in arguments:
        if os.path.isdir(arg):
            named = sorted(str(p) for p in Path(arg).rglob("*") if preprocess.is_image_file(p))
            found = [p for p in named if os.path.isfile(p)]
            missing.extend((p, _unreadable_reason(p)) for p in named if not os.path.isfile(p))
            if not named:
                missing.append((arg, "folder holds no images"))
            paths.extend(found)
        elif os.path.lexists(arg):
            if os.path.isfile(arg):
                paths.append(arg)
            else:
                missing.append((arg, _unreadable_reason(arg)))
        elif glob.has_magic(arg):
            found = sorted(p for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
            if not found:
                missing.append((arg, "pattern matched no files"))
            paths.extend(found)
        else:
            missing.append((arg, "file not found"))
    return paths, missing


def records_to_csv(records: Iterable[dict[str, Any]], top_k: int) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["image", "label", "probability"]
    for i in range(1, top_k + 1):
        header += [f"top{i}_label", f"top{i}_probability"]
    writer.writerow(header)
    for r in records:
        row = [r["image"], r["label"], f"{r['probability']:.6f}"]
        for entry in r["top_k"]:
            row += [entry["label"], f"{entry['probability']:.6f}"]
        row += [""] * (len(header) - len(row))
        writer.writerow(row)
    return buffer.getvalue()
