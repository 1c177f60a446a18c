#!/usr/bin/env python
"""OpenVINO (FP32, INT8) against ONNX Runtime (FP32, INT8) on one checkpoint, in one invocation.

    python scripts/bench_openvino.py CHECKPOINT [--out DIR] [--threads N] [--rounds 3] [--reuse]
                                     [--latency-images 64] [--calibration 256] [--static] [--json FILE]

Writes the four exports of CHECKPOINT with ``cnnzoo export`` (ONNX, ``--int8``, ``--format
openvino``, ``--format openvino --int8``) into --out, reads the checkpoint's validation split once
with the model's own preprocessing, then measures each file through cnnzoo's own reader (the
runtime held to --threads threads, the same images for every format):

  accuracy       top-1 over every readable validation image
  images/s b32   batches of 32 over the validation images (network and normalisation; decoding is
                 shared and not counted), the median of --rounds rounds, the formats taking turns
                 round by round so that a busy machine slows them alike
  latency b1     the median milliseconds of one image, over --latency-images images, the formats
                 taking turns image by image

and prints each against ONNX Runtime FP32 (the baseline): the speed ratios and the accuracy
difference in points. ``--static`` adds the OpenVINO files compiled with a fixed batch (32 for the
throughput, 1 for the latency) instead of the free batch the export carries.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASELINE = "ONNX Runtime FP32"
EXPORTS = {
    BASELINE: {"fmt": "onnx"},
    "ONNX Runtime INT8": {"fmt": "onnx", "int8": True},
    "OpenVINO FP32": {"fmt": "openvino"},
    "OpenVINO INT8": {"fmt": "openvino", "int8": True},
}


def write_exports(checkpoint: Path, out: Path, calibration: int, reuse: bool) -> dict[str, Path]:
    """The four exports of ``checkpoint`` in ``out``; each export's own report printed. ``reuse``:
    the files already there under the default names are measured as they are."""
    from cnnzoo.deploy.export import default_path, export

    files = {}
    for name, kwargs in EXPORTS.items():
        kept = out / default_path(checkpoint, kwargs["fmt"], kwargs.get("int8", False)).name
        if reuse and kept.is_file():
            files[name] = kept
            continue
        start = time.perf_counter()
        options = {"calibration": calibration, "max_drop": 100.0} if kwargs.get("int8") else {}
        result = export(checkpoint, out=out, **kwargs, **options)  # max_drop 100: measured here, not judged
        files[name] = result.path
        print(f"  wrote {result.path.name} in {time.perf_counter() - start:.1f} s", flush=True)
        for line in result.int8.lines() if result.int8 else []:
            print(f"    {line}")
    return files


def with_threads(path: Path, threads: int):
    """cnnzoo's reader of ``path`` with its runtime held to ``threads`` threads."""
    from cnnzoo.inference import OnnxModel, OpenVinoModel

    if path.suffix == ".xml":
        return OpenVinoModel(path, threads=threads)
    import onnxruntime

    model = OnnxModel(path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    model.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return model


class StaticOpenVino:
    """An OpenVINO file compiled twice with a fixed batch (``batch`` and 1), as a fixed-shape
    deployment would; ``logits`` picks the compiled model that fits."""

    def __init__(self, path: Path, threads: int, batch: int):
        import openvino as ov

        from cnnzoo.inference import OpenVinoModel

        self.model = OpenVinoModel(path, threads=threads)
        core, config = ov.Core(), {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
        self.compiled = {}
        for size in (batch, 1):
            network = self.model.network.clone()
            network.reshape([size, self.model.channels, *self.model.image_size])
            self.compiled[size] = core.compile_model(network, "CPU", config)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        from cnnzoo.data import preprocess

        if len(pixels) not in self.compiled:  # a last, partial batch: the free-batch model
            return self.model.logits(pixels)
        x = preprocess.normalize_array(pixels, self.model.mean, self.model.std)
        return self.compiled[len(pixels)](x)[0]


def validation_images(checkpoint: Path, reader) -> tuple[np.ndarray, np.ndarray]:
    """Every readable validation image of the checkpoint's split, uint8 [N, H, W, C], and its labels."""
    from cnnzoo.checkpoint import load_checkpoint
    from cnnzoo.deploy import quantize

    ckpt = load_checkpoint(checkpoint)
    validation = quantize.data_splits(ckpt["config"], list(ckpt["meta"]["classes"]))[1]
    pairs = list(quantize.batches(reader, validation, list(range(len(validation)))))
    labels = [validation.labels[r] for _, rows in pairs for r in rows]
    return np.concatenate([p for p, _ in pairs]), np.asarray(labels)


def accuracy(model, images: np.ndarray, labels: np.ndarray) -> float:
    from cnnzoo.evaluation import scores

    logits = np.concatenate([model.logits(images[i : i + 32]) for i in range(0, len(images), 32)])
    return float((scores.predictions(logits) == labels).mean())


def throughput(models: dict, images: np.ndarray, rounds: int, batch: int) -> dict[str, float]:
    """Images/s over the full batches of ``images``: the median of ``rounds``, formats in turn."""
    batch = min(batch, len(images))  # a validation split smaller than a batch: one batch of it
    full = images[: len(images) // batch * batch]
    speeds: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.logits(full[:batch])  # a first run sets up buffers
    for r in range(rounds):
        names = list(models)[r % len(models) :] + list(models)[: r % len(models)]  # who goes first moves
        for name in names:
            start = time.perf_counter()
            for i in range(0, len(full), batch):
                models[name].logits(full[i : i + batch])
            speeds[name].append(len(full) / (time.perf_counter() - start))
    return {name: statistics.median(v) for name, v in speeds.items()}


def latency(models: dict, images: np.ndarray, count: int) -> dict[str, float]:
    """Median milliseconds of one image, the formats taking turns image by image."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.logits(images[:1])
    for image in images[:count]:
        for name, model in models.items():
            start = time.perf_counter()
            model.logits(image[None])
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, default=Path("bench-openvino"), help="where the exports are written")
    parser.add_argument("--threads", type=int, default=2, help="threads of every runtime (default 2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--latency-images", type=int, default=64)
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--static", action="store_true", help="also OpenVINO compiled with fixed batch sizes")
    parser.add_argument("--reuse", action="store_true", help="measure the exports already in --out")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    print(f"{args.checkpoint}: exports into {args.out}", flush=True)
    files = write_exports(args.checkpoint, args.out, args.calibration, args.reuse)
    models = {name: with_threads(path, args.threads) for name, path in files.items()}
    if args.static:
        for name in ("OpenVINO FP32", "OpenVINO INT8"):
            models[f"{name} static"] = StaticOpenVino(files[name], args.threads, args.batch)
    images, labels = validation_images(args.checkpoint, models[BASELINE])
    print(f"  {len(images)} validation images, {args.threads} threads, batch {args.batch}", flush=True)
    scores = {name: accuracy(model, images, labels) for name, model in models.items()}
    speeds = throughput(models, images, args.rounds, args.batch)
    waits = latency(models, images, args.latency_images)
    rows = table(files, models, scores, speeds, waits)
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": str(args.checkpoint), "rows": rows}, indent=2) + "\n")


def table(files: dict, models: dict, scores: dict, speeds: dict, waits: dict) -> dict:
    """The printed table, each figure against ONNX Runtime FP32; the rows as data."""
    print(f"  {'format':24s} {'MB':>6s} {'acc %':>7s} {'pts':>6s} {'img/s b32':>10s} {'x':>6s} {'ms b1':>7s} {'x':>6s}")
    rows = {}
    for name in models:
        path = files[name.removesuffix(" static")]
        size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)
        row = {"bytes": size, "accuracy": scores[name], "images_per_s_b32": speeds[name], "ms_b1": waits[name]}
        rows[name] = row
        print(
            f"  {name:24s} {size / 2**20:6.2f} {100 * scores[name]:7.2f} "
            f"{100 * (scores[name] - scores[BASELINE]):+6.2f} {speeds[name]:10.1f} "
            f"{speeds[name] / speeds[BASELINE]:5.2f}x {waits[name]:7.1f} {waits[BASELINE] / waits[name]:5.2f}x"
        )
    return rows


if __name__ == "__main__":
    main()
