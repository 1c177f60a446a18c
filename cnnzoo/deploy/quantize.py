"""Static INT8 quantization of an ONNX export, and its comparison with the FP32 export.

:func:`quantize_onnx` runs onnxruntime's static quantizer: QDQ format, per-channel INT8 weights,
UINT8 activations (U8S8, the fastest pair on x86 CPUs), MinMax ranges calibrated on training
images read with the model's own preprocessing (the FP32 :class:`~cnnzoo.inference.onnx.OnnxModel`
decodes and normalises them exactly as ``predict`` will). :func:`compare` scores any two
classifiers (FP32 and INT8, whatever the format) on the validation split, image by image: accuracy,
file size, images/s, and the images whose answer changed each way, which :class:`Int8Report` judges
with McNemar's exact test (:mod:`~cnnzoo.deploy.paired`).

Imports onnx and onnxruntime (the ``onnx`` extra) lazily, data sources for the splits; never torch.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import load_config
from ..console import console
from ..data import preprocess, sources
from ..errors import DataError, UserError, short_reason
from ..evaluation import scores
from ..inference.classifier import METADATA_KEY, Classifier, probabilities
from ..inference.onnx import OnnxModel
from ..inference.unknown import SCORE_OUTPUT
from . import paired

_BATCH = 32  # images per calibration and validation batch
SCHEME = "static QDQ, per-channel INT8 weights, UINT8 activations, MinMax calibration"


@dataclass(kw_only=True)
class Int8Report:
    """FP32 vs INT8 on the validation split, image by image; accuracies are fractions, ``drop`` is in
    points. ``now_wrong`` images FP32 answers right and INT8 wrong, ``now_right`` the other way (a
    multi-label image is right when its whole label set is)."""

    calibration_images: int
    validation_images: int
    fp32_accuracy: float
    int8_accuracy: float
    fp32_bytes: int
    int8_bytes: int
    fp32_images_per_s: float
    int8_images_per_s: float
    max_drop: float
    now_wrong: int
    now_right: int

    @property
    def drop(self) -> float:
        return 100 * (self.fp32_accuracy - self.int8_accuracy)

    @property
    def changes(self) -> paired.Changes:
        return paired.Changes(images=self.validation_images, now_wrong=self.now_wrong, now_right=self.now_right)

    @property
    def ok(self) -> bool:
        """False only when INT8 loses more than ``max_drop`` points and the loss is measurable
        (:func:`cnnzoo.deploy.paired.Changes.measurably_worse`): a drop that a model as good as
        FP32 gives by the luck of which few images changed passes."""
        return not (self.drop > self.max_drop and self.changes.measurably_worse)

    def metadata(self) -> dict[str, Any]:
        """What the INT8 file records about itself."""
        return {
            "scheme": SCHEME,
            "calibration_images": self.calibration_images,
            "validation_images": self.validation_images,
            "fp32_accuracy": self.fp32_accuracy,
            "int8_accuracy": self.int8_accuracy,
            "now_wrong": self.now_wrong,
            "now_right": self.now_right,
            "p_value": self.changes.p_value,
        }

    def lines(self) -> list[str]:
        size, speed = self.int8_bytes / self.fp32_bytes, self.int8_images_per_s / self.fp32_images_per_s
        return [
            f"INT8 calibrated on {self.calibration_images} training images; "
            f"on {self.validation_images} validation images:",
            f"  FP32 accuracy {100 * self.fp32_accuracy:.2f}%  {self.fp32_bytes / 2**20:.2f} MB  "
            f"{self.fp32_images_per_s:.0f} images/s",
            f"  INT8 accuracy {100 * self.int8_accuracy:.2f}%  {self.int8_bytes / 2**20:.2f} MB  "
            f"{self.int8_images_per_s:.0f} images/s   ({size:.2f}x the size, {speed:.2f}x the speed, "
            f"drop {self.drop:.2f} points, allowed {self.max_drop:g})",
            f"  {self.changes.describe()}: {self.verdict()}",
        ]

    def verdict(self) -> str:
        """Why the drop passes or fails, in words."""
        if self.drop <= self.max_drop:
            return f"within --max-drop {self.max_drop:g}: ok"
        if not self.ok:
            return f"measurably worse (p < {paired.SIGNIFICANCE:g}) and beyond --max-drop {self.max_drop:g}: FAILED"
        return f"beyond --max-drop {self.max_drop:g} but not measurably worse (p >= {paired.SIGNIFICANCE:g}): ok"


def data_splits(config: dict[str, Any], classes: list[str]) -> tuple[sources.Samples, sources.Samples]:
    """The training and validation splits the checkpoint was trained on, as training built them."""
    try:
        with console.scoped(True):  # the data's own lines are training's, not this export's
            cfg = load_config(config)
            spec = sources.load_data(cfg, task=cfg.train.task)
    except DataError as exc:
        raise DataError(f"{exc} (the data this checkpoint was trained on; --int8 calibrates on it)") from None
    if list(spec.classes) != list(classes):
        raise DataError(
            f"{spec.root}: its classes ({', '.join(spec.classes)}) are not the checkpoint's "
            f"({', '.join(classes)}); --int8 needs the data the model was trained on"
        )
    return spec.train, spec.val


def batches(model: Classifier, samples: sources.Samples, indices: list[int]) -> Iterator[tuple[np.ndarray, list[int]]]:
    """(uint8 images [B, H, W, C], their rows in ``samples``) read as ``model`` reads them;
    unreadable files skipped."""
    for start in range(0, len(indices), _BATCH):
        images, rows = [], []
        for i in indices[start : start + _BATCH]:
            array, _ = model.try_preprocess(samples.item(i))
            if array is not None:
                images.append(array)
                rows.append(i)
        if images:
            yield np.stack(images), rows


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol, read one batch at a time (``set_range`` with
    the ``CalibStridedMinMax`` option): the quantizer keeps every intermediate tensor of what it
    is handed, so a whole calibration set at once would hold gigabytes for a 224x224 model."""

    def __init__(self, model: OnnxModel, samples: sources.Samples, indices: list[int]):
        self.model, self.samples, self.seen = model, samples, 0
        self.chunks = [indices[start : start + _BATCH] for start in range(0, len(indices), _BATCH)]
        self.pending: Iterator[tuple[np.ndarray, list[int]]] = iter(())

    def __len__(self) -> int:
        return len(self.chunks)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pending = batches(self.model, self.samples, [i for c in self.chunks[start_index:end_index] for i in c])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.pending, None)
        if batch is None:
            return None
        self.seen += len(batch[0])
        return {self.model.input_name: preprocess.normalize_array(batch[0], self.model.mean, self.model.std)}


def quantize_onnx(fp32_path: Path, out_path: Path, train: sources.Samples, *, calibration: int) -> int:
    """Write the INT8 version of the cnnzoo ONNX export ``fp32_path`` to ``out_path`` (same
    metadata); returns how many training images calibrated it."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # lazy: onnx extra
    from onnxruntime.quantization.shape_inference import quant_pre_process  # lazy: as above

    fp32 = OnnxModel(fp32_path)
    order = np.random.default_rng(0).permutation(len(train))[:calibration].tolist()  # every class, not the first N
    reader = _Calibration(fp32, train, order)
    with tempfile.TemporaryDirectory(prefix="cnnzoo-int8-") as work:
        prepared = Path(work) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared))  # folds and infers shapes, as the quantizer advises
            quantize_static(
                str(prepared),
                str(out_path),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"CalibStridedMinMax": 1},  # ranges merged batch by batch: bounded memory
                nodes_to_exclude=score_only_nodes(prepared),
            )
        except Exception as exc:  # the quantizer's own error types
            raise UserError(f"{fp32_path}: onnxruntime cannot quantize this model ({short_reason(exc, 200)})") from None
    if reader.seen == 0:
        raise DataError("--int8: no readable training image to calibrate on")
    write_metadata(fp32_path, out_path, {"int8": {"calibration_images": reader.seen, "scheme": SCHEME}})
    return reader.seen


def score_only_nodes(path: Path) -> list[str]:
    """The nodes that compute only the knn unknown score (the normalised features against the bank,
    the k-th similarity): left in FP32, as the score's threshold was fitted there (an 8-bit
    similarity moves known images past it). None for a graph without the score."""
    import onnx  # lazy: onnx extra

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}

    def ancestors(name: str) -> set[str]:
        seen, stack = set(), [name]
        while stack:
            node = producer.get(stack.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                stack.extend(node.input)
        return seen

    outputs = [o.name for o in graph.output]
    if SCORE_OUTPUT not in outputs:
        return []
    return sorted(ancestors(SCORE_OUTPUT) - ancestors(outputs[0]))


def write_metadata(source: Path, target: Path, extra: dict[str, Any]) -> None:
    """``target``'s cnnzoo metadata becomes ``source``'s updated with ``extra``."""
    import onnx  # lazy: onnx extra

    meta = json.loads(OnnxModel(source).session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    proto = onnx.load(str(target))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({**meta, **extra}, default=str)
    proto.producer_name = "cnnzoo"
    onnx.save(proto, str(target))


def compare(fp32: Classifier, int8: Classifier, validation: sources.Samples, *, max_drop: float) -> Int8Report:
    """Both models on every readable validation image, read as ``fp32`` reads them; images/s counts
    the network only (decoding is shared), the two timed batch by batch in turn so that a busy
    machine slows both alike. Any two classifiers of the same classes compare (ONNX, OpenVINO ...);
    ``calibration_images`` is left for the caller."""
    right: list[list[np.ndarray]] = [[], []]
    seconds, total = [0.0, 0.0], 0
    for images, rows in batches(fp32, validation, list(range(len(validation)))):
        if total == 0:  # a first run sets up each session's buffers: not the model's speed
            fp32.logits(images), int8.logits(images)
        total += len(rows)
        for side, model in enumerate((fp32, int8)):
            start = time.perf_counter()
            logits = model.logits(images)
            seconds[side] += time.perf_counter() - start
            right[side].append(_right(model, logits, validation, rows))
    if total == 0:
        raise DataError("--int8: no readable validation image to compare FP32 and INT8 on")
    fp32_right, int8_right = (np.concatenate(r) for r in right)
    return Int8Report(
        calibration_images=0,
        validation_images=total,
        fp32_accuracy=float(fp32_right.mean()),
        int8_accuracy=float(int8_right.mean()),
        fp32_bytes=sum(file.stat().st_size for file in fp32.files()),
        int8_bytes=sum(file.stat().st_size for file in int8.files()),
        fp32_images_per_s=total / max(seconds[0], 1e-9),
        int8_images_per_s=total / max(seconds[1], 1e-9),
        max_drop=max_drop,
        now_wrong=int((fp32_right & ~int8_right).sum()),
        now_right=int((~fp32_right & int8_right).sum()),
    )


def _right(model: Classifier, logits: np.ndarray, samples: sources.Samples, rows: list[int]) -> np.ndarray:
    """bool [B]: whether each image's answer is right by ``evaluate``'s rule; for a multi-label
    model, whether its whole label set is (every class on the right side of its threshold)."""
    if not model.multi_label:
        return scores.predictions(logits) == np.asarray([samples.labels[r] for r in rows])
    yes = probabilities(logits, multi_label=True, temperature=model.temperature) >= np.asarray(model.thresholds)
    truth, sets = np.zeros_like(yes), samples.label_sets
    for i, r in enumerate(rows):
        truth[i, sets[r] if sets is not None else [samples.labels[r]]] = True
    return (yes == truth).all(axis=1)
