"""What a prediction is, whatever runs the network (torch-free).

:class:`Classifier` owns preprocessing (:func:`cnnzoo.data.preprocess.load_image`), batching
with decoding in threads, the rule from logits to probabilities, and the records
``predict --json`` prints. A format supplies only ``logits``: :class:`cnnzoo.inference.onnx.OnnxModel`
(onnxruntime + NumPy, no torch imported), :class:`cnnzoo.inference.torch_models.Model` for
checkpoints and TorchScript files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import check_meta
from ..console import console
from ..data import preprocess
from ..errors import UserError, short_reason
from . import inputs, unknown

METADATA_KEY = "cnnzoo"  # ONNX metadata_props key / TorchScript extra file holding the model's meta


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    """The sigmoid in float32, what an exported model and training's ``torch.sigmoid`` compute."""
    with np.errstate(over="ignore"):  # exp(large) = inf gives p = 0, as it should
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def probabilities(
    logits: np.ndarray, *, multi_label: bool = False, temperature: float | np.ndarray | None = None
) -> np.ndarray:
    """[B, K] logits -> [B, K] softmax probabilities; a one-logit (binary) head [B, 1] -> [B, 2]
    as ``[1 - sigmoid, sigmoid]``; a multi-label model's -> a sigmoid per class (independent,
    not summing to 1). The one rule, for every format and for evaluation. ``temperature`` (a
    calibrated model's, :func:`temperature_of`) divides the logits first: one number, or one per
    class for a multi-label model."""
    logits = np.asarray(logits, dtype=np.float32)
    if temperature is not None:
        logits = (logits / np.asarray(temperature, dtype=np.float32)).astype(np.float32)
    if multi_label:
        return _sigmoid(logits)
    if logits.shape[1] == 1:
        p = _sigmoid(logits)
        return np.concatenate([1.0 - p, p], axis=1)
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def temperature_of(meta: dict[str, Any]) -> float | np.ndarray | None:
    """The temperature a model's probabilities are calibrated with (``meta.calibration``, fitted
    after training: :mod:`cnnzoo.training.calibrate`): one number, or [K] for a multi-label
    model; None for a model without one (trained with ``train.calibrate: none``, or before it)."""
    calibration = meta.get("calibration")
    if not isinstance(calibration, dict) or calibration.get("temperature") is None:
        return None
    value = calibration["temperature"]
    return np.asarray(value, dtype=np.float32) if isinstance(value, list) else float(value)


def calibrated_thresholds(thresholds: list[float], temperature: float | np.ndarray | None) -> list[float]:
    """Multi-label thresholds chosen on the raw sigmoids, moved to where the calibrated ones cross
    them: sigmoid(logit(t) / T), so a calibrated model lists exactly the labels it listed before."""
    if temperature is None:
        return thresholds
    t = np.clip(np.asarray(thresholds, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore"):  # a threshold of 0 or 1 stays where it is (logit +-inf)
        logit = np.log(t) - np.log1p(-t)
    return [float(v) for v in 1.0 / (1.0 + np.exp(-logit / np.asarray(temperature, dtype=np.float64)))]


@dataclass
class ManifestPredictions:
    """What :meth:`Classifier.predict_manifest` answers: one record per manifest row, in its order
    (a row whose image could not be read has an empty one), and the manifest's image column, which
    a CSV of them (:meth:`Classifier.csv`) is headed with, as a Kaggle submission is."""

    records: list[dict[str, Any]]
    image_column: str


def _image_label(item: Any, position: int) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    return f"<{type(item).__name__} {position}>"


class Classifier:
    """A trained classifier with its preprocessing; subclasses supply :meth:`logits`."""

    format = "?"
    averages_views = False  # can ``tta`` average five views of each image (the torch formats)

    def __init__(self, meta: dict[str, Any], path: str | Path | None):
        check_meta(meta, path, self.kind, prefix="meta." if self.format == "checkpoint" else "metadata ")
        self.meta = dict(meta)
        self.classes: list[str] = list(meta["classes"])
        self.image_size = tuple(int(v) for v in meta["image_size"])
        self.channels = int(meta["channels"])
        self.mean, self.std = list(meta["mean"]), list(meta["std"])
        # checked above: squash, letterbox or crop; the test-time crop chosen after training (absent: none)
        self.fit = preprocess.Fit.of(meta.get("resize"), self.mean, meta.get("test_crop"))
        self.path = str(path) if path is not None else None
        self.multi_label = meta.get("task") == "multi"
        self.temperature = temperature_of(meta)  # None: the raw softmax/sigmoid (not calibrated)
        # multi-label: a class is in ``labels`` at or above its threshold (predict --threshold sets one for all),
        # in the calibrated probabilities' terms
        raw = [float(v) for v in meta.get("thresholds") or [0.5] * len(self.classes)]
        self.thresholds: list[float] = calibrated_thresholds(raw, self.temperature)
        # the "unknown" answer (issue 31): its score and threshold, or None (trained before it, multi-label)
        self.unknown: dict[str, Any] | None = meta.get("unknown") if not self.multi_label else None

    @property
    def kind(self) -> str:
        """What the file is, in words, for error lines."""
        return "checkpoint" if self.format == "checkpoint" else f"{self.format} export".replace("onnx", "ONNX")

    def files(self) -> list[Path]:
        """The files the model is stored in (one, but for a format that keeps its weights beside it)."""
        return [Path(str(self.path))]

    def outputs_fit(self, outputs: int) -> bool:
        """A network output per class, or one logit for two classes (a binary head)."""
        return outputs == len(self.classes) or (outputs == 1 and len(self.classes) == 2 and not self.multi_label)

    def network_outputs(self, pixels_hwc: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 [B, H, W, C] -> float32 logits [B, outputs] and, from a network that computes it (the
        ``knn`` score), the unknown score [B]; each format's reader runs its network here."""
        raise NotImplementedError

    def logits(self, pixels_hwc: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, C] -> float32 logits [B, outputs]."""
        return self.network_outputs(pixels_hwc)[0]

    def probabilities(self, pixels_hwc: np.ndarray) -> np.ndarray:
        """Class probabilities [B, classes]; a network whose output does not fit its classes, or
        is not finite, is a :class:`UserError` naming the file (JSON has no NaN to answer with)."""
        return self.logits_and_probabilities(pixels_hwc)[1]

    def logits_and_probabilities(self, pixels_hwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The network's logits [B, outputs] (raw) and class probabilities [B, classes] (calibrated
        when the model carries a temperature), checked as :meth:`probabilities` says (``evaluate``
        needs both: the loss comes from the logits)."""
        logits, probs, _ = self.scored(pixels_hwc)
        return logits, probs

    def scored(self, pixels_hwc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Logits, probabilities and the unknown score of each image (None: the model has no score)."""
        logits, second = self.network_outputs(pixels_hwc)
        logits = np.asarray(logits)
        if logits.ndim != 2 or logits.shape[0] != len(pixels_hwc) or not self.outputs_fit(logits.shape[1]):
            raise UserError(
                f"{self.path}: the network answers shape {list(logits.shape)} for "
                f"{len(pixels_hwc)} images, but its metadata names {len(self.classes)} classes; "
                f"a damaged or foreign {self.kind}"
            )
        probs = probabilities(logits, multi_label=self.multi_label, temperature=self.temperature)
        if not np.isfinite(probs).all():
            raise UserError(
                f"{self.path}: the network's output is not finite (NaN or infinite); "
                f"its weights or the {self.kind} are broken"
            )
        return logits, probs, self.unknown_scores(logits, second)

    def unknown_scores(self, logits: np.ndarray, second: np.ndarray | None) -> np.ndarray | None:
        """The unknown score [B] of :attr:`unknown` (higher = less like the training images), from the
        raw logits (so a calibration temperature leaves it alone) or the network's second output."""
        if self.unknown is None:
            return None
        name = self.unknown["score"]
        if name in unknown.LOGIT_SCORES:
            return unknown.logit_score(name, logits)
        if second is None:
            raise UserError(
                f"{self.path}: its metadata names the {name} unknown score but the network does not compute it; "
                f"a damaged {self.kind}, or export it again"
            )
        return np.asarray(second, dtype=np.float64).reshape(len(logits))

    def unknown_threshold_for(self, *, enabled: bool = True, threshold: float | None = None) -> float | None:
        """The threshold past which an image is answered unknown, None for no unknown answer:
        ``threshold`` (checked against the score's range) or the stored one; ``enabled`` False
        (``--no-unknown``) turns it off."""
        if threshold is not None:
            if not enabled:
                raise UserError("--unknown-threshold: cannot be combined with --no-unknown")
            if self.unknown is None:
                raise UserError(f"--unknown-threshold: {self.path} {unknown.NO_SCORE}")
            return unknown.check_threshold(threshold, self.unknown["score"])
        if not enabled or self.unknown is None:
            return None
        return float(self.unknown["threshold"])

    def preprocess(self, item: Any) -> np.ndarray:
        """One image (path, PIL image, HxWxC array) -> uint8 HxWxC at the model's size."""
        return preprocess.load_image(item, self.image_size, self.channels, self.fit)

    def info(self) -> dict[str, Any]:
        """What the model expects and answers, as ``serve``'s ``GET /info`` reports it: format, file,
        classes, input [C, H, W], the normalisation and resize (with a stored test-time crop, its share)."""
        return {
            "format": self.format,
            "path": self.path,
            "classes": self.classes,
            "input": [self.channels, *self.image_size],
            "mean": self.mean,
            "std": self.std,
            "resize": self.fit.mode,
            **({"test_crop": self.fit.crop} if self.fit.crop != 1.0 else {}),  # a centre crop chosen after training
            **({"task": "multi", "thresholds": self.thresholds} if self.multi_label else {}),
        }

    def records(
        self,
        names: list[str],
        pixels_hwc: np.ndarray,
        top_k: int,
        *,
        thresholds: list[float] | None = None,
        unknown_threshold: float | None = None,
    ) -> list[dict[str, Any]]:
        """``predict --json`` records for a batch of preprocessed images; a multi-label model lists
        the classes at or above ``thresholds`` (default: its own :attr:`thresholds`). With
        ``unknown_threshold`` each record says whether the image is ``unknown`` (its score past
        it: the label is then ``unknown``; the probabilities stay)."""
        _, probs, scores = self.scored(pixels_hwc)
        k = max(1, min(top_k, len(self.classes)))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        out = []
        for name, row, idx in zip(names, probs, order):
            ranked = [{"label": self.classes[i], "probability": float(row[i])} for i in idx]
            record = {"image": name, "label": ranked[0]["label"], "probability": ranked[0]["probability"]}
            if self.multi_label:
                record.update(self.label_set(row, thresholds))
            out.append({**record, "top_k": ranked})
        if unknown_threshold is not None and scores is not None:
            for record, score in zip(out, scores):
                record.update(unknown.answer(float(score), unknown_threshold))
                if record["unknown"]:
                    record["label"] = unknown.UNKNOWN_LABEL
        return out

    def label_set(self, probs: np.ndarray, thresholds: list[float] | None = None) -> dict[str, Any]:
        """Multi-label: ``labels`` (every class at or above its threshold, most probable first)
        and ``probabilities`` (each class's own sigmoid)."""
        thresholds = self.thresholds if thresholds is None else thresholds
        order = np.argsort(-probs, kind="stable")
        return {
            "labels": [self.classes[i] for i in order if probs[i] >= thresholds[i]],
            "probabilities": {c: float(p) for c, p in zip(self.classes, probs)},
        }

    def thresholds_for(self, *, tta: bool = False, threshold: float | None = None) -> list[float]:
        """The thresholds a prediction with these options lists labels at, once the options are
        checked: ``tta`` needs a torch model, ``threshold`` a multi-label one (one for every class)."""
        if tta and not self.averages_views:
            raise UserError(
                f"--tta: runs on torch models (a checkpoint or TorchScript file), not on {Path(str(self.path)).name}"
            )
        if threshold is None:
            return self.thresholds
        if not self.multi_label:
            raise UserError(f"--threshold: {self.path} is a single-label model (it names the most probable class)")
        return [float(threshold)] * len(self.classes)

    @contextmanager
    def views_averaged(self, tta: bool) -> Iterator[None]:
        """Within it, with ``tta``, a torch model scores the average of five views of each image."""
        yield

    def predict(
        self,
        images: Any,
        top_k: int = 5,
        *,
        tta: bool = False,
        threshold: float | None = None,
        unknown: bool = True,
        unknown_threshold: float | None = None,
        batch_size: int = 64,
        errors: list | None = None,
        progress: bool = False,
    ) -> list[dict[str, Any]]:
        """Predict one image or a list; returns one record per readable image.

        Each record is ``{"image", "label", "probability", "top_k": [{"label",
        "probability"}]}`` with probabilities over all classes; a multi-label model's also has
        ``labels`` and ``probabilities`` (each class's own). Unreadable images are
        skipped; when ``errors`` is a list, ``(image, reason)`` pairs are appended to it,
        otherwise the first failure raises :class:`cnnzoo.errors.UserError`.

        ``tta`` scores each image as the average of five views (mirror, three crops; torch models
        only, :mod:`cnnzoo.inference.tta`). ``threshold`` (multi-label models) lists every class
        at or above it, instead of the model's own :attr:`thresholds`. A model with an unknown
        score (:attr:`unknown`) adds ``unknown`` (and ``unknown_score``) to each record, and the
        label ``unknown`` past the stored threshold or ``unknown_threshold``; ``unknown=False``
        leaves both out. ``cnnzoo predict`` is this call (``--tta``, ``--threshold``, ``--top-k``,
        ``--batch-size``, ``--unknown-threshold``, ``--no-unknown``).
        """
        thresholds = self.thresholds_for(tta=tta, threshold=threshold)
        cut = self.unknown_threshold_for(enabled=unknown, threshold=unknown_threshold)
        if not isinstance(images, (list, tuple)):
            images = [images]
        results: list[dict[str, Any]] = []
        with self.views_averaged(tta):
            for positions, pixels in self.batches(images, batch_size=batch_size, errors=errors, progress=progress):
                names = [_image_label(images[i], i) for i in positions]
                results.extend(self.records(names, pixels, top_k, thresholds=thresholds, unknown_threshold=cut))
        return results

    def predict_manifest(
        self,
        manifest: str | Path,
        top_k: int = 5,
        *,
        tta: bool = False,
        threshold: float | None = None,
        unknown: bool = True,
        unknown_threshold: float | None = None,
        batch_size: int = 64,
        errors: list | None = None,
        progress: bool = False,
    ) -> ManifestPredictions:
        """Predict the image of every row of a manifest (.csv, .tsv, .jsonl, .parquet; labels not
        needed), in its order, with :meth:`predict`'s options; ``cnnzoo predict --data``.

        Each record is named as its row names the image. A row whose image is missing or
        unreadable gets an empty record (label ``""``, probability ``None``, no top-k) so that
        :meth:`csv` writes every row a submission needs; its ``(image, reason)`` goes to
        ``errors`` as in :meth:`predict` (without a list, the first one raises)."""
        self.thresholds_for(tta=tta, threshold=threshold)  # the options are refused before the file is read
        self.unknown_threshold_for(enabled=unknown, threshold=unknown_threshold)
        names, paths, image_column = inputs.manifest_images(manifest)
        missing = [(name, "file not found") for name, path in zip(names, paths) if not path]
        if missing and errors is None:
            raise UserError(f"{missing[0][0]}: cannot read image ({missing[0][1]})")
        if errors is not None:
            errors.extend(missing)
        options = {"tta": tta, "threshold": threshold, "batch_size": batch_size, "progress": progress}
        options.update(unknown=unknown, unknown_threshold=unknown_threshold)
        records = self.predict([p for p in paths if p], top_k, errors=errors, **options)
        return ManifestPredictions(inputs.records_in_order(names, paths, records), image_column)

    def csv(self, records: list[dict[str, Any]], top_k: int = 5, *, image_header: str = "image") -> str:
        """Records of :meth:`predict` or :meth:`predict_manifest` as ``predict --csv`` writes them:
        one row per record, the label(s) and the top-k (:func:`cnnzoo.inference.inputs.records_to_csv`)."""
        k = min(top_k, len(self.classes))
        return inputs.records_to_csv(
            records, k, image_header=image_header, multi_label=self.multi_label, classes=self.classes
        )

    def batches(
        self,
        images: list | tuple,
        *,
        batch_size: int = 64,
        errors: list | None = None,
        progress: bool = False,
        task: str = "predict",
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """(positions in ``images``, uint8 [B, H, W, C]) for every batch of readable images, in
        order, decoded in threads while the previous batch runs; unreadable images are skipped as
        :meth:`predict` says. ``predict`` and ``evaluate`` of an export both read images this way
        (``task`` names the progress bar)."""
        bar = console.bar(len(images), task, unit="img") if progress and len(images) > batch_size else None
        starts = list(range(0, len(images), batch_size))
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes outside the GIL

            def submit(start: int) -> list:
                return [pool.submit(self.try_preprocess, item) for item in images[start : start + batch_size]]

            pending = submit(starts[0]) if starts else []
            for n, start in enumerate(starts):
                decoded = [future.result() for future in pending]
                if n + 1 < len(starts):  # decode the next batch while this one runs forward
                    pending = submit(starts[n + 1])
                positions, arrays = [], []
                for offset, (array, reason) in enumerate(decoded):
                    if array is None:
                        name = _image_label(images[start + offset], start + offset)
                        if errors is None:
                            raise UserError(f"{name}: cannot read image ({reason})")
                        errors.append((name, reason))
                    else:
                        positions.append(start + offset)
                        arrays.append(array)
                if arrays:
                    yield positions, np.stack(arrays)
                if bar is not None:
                    bar.update(min(batch_size, len(images) - start))
        if bar is not None:
            bar.close()

    def try_preprocess(self, item: Any) -> tuple[np.ndarray | None, str]:
        try:
            return self.preprocess(item), ""
        except FileNotFoundError:
            return None, "file not found"
        except Exception as exc:  # PIL raises many types for broken files
            return None, f"{type(exc).__name__}: {str(exc).strip() or 'unreadable'}"

    def __repr__(self) -> str:
        return (
            f"cnnzoo.{type(self).__name__}({self.path!r}, classes={len(self.classes)}, "
            f"input={self.channels}x{self.image_size[0]}x{self.image_size[1]})"
        )


def parse_metadata(raw: str, path: str | Path, kind: str) -> dict[str, Any]:
    """The JSON metadata an export carries -> a dict (checked further by :class:`Classifier`)."""
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise UserError(
            f"{path}: damaged or foreign {kind}: its cnnzoo metadata is not JSON ({short_reason(exc)})"
        ) from None
    if not isinstance(meta, dict):
        raise UserError(
            f"{path}: damaged or foreign {kind}: its cnnzoo metadata should be a JSON object, not {type(meta).__name__}"
        )
    return meta
