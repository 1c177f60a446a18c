#!/usr/bin/env python
"""FP32 ONNX, INT8 ONNX and TFLite exports of the same checkpoints, side by side, in one invocation.

    python scripts/bench_export.py CHECKPOINT [CHECKPOINT ...] [--calibration 256] [--repeat 3] [--out DIR]

For each checkpoint, writes the three exports (``cnnzoo export``, ``--int8``, ``--format tflite``)
into --out, then measures on the checkpoint's validation split:

  size          bytes of the file (with its metadata)
  accuracy      top-1 over every readable validation image
  images/s      one image at a time on one CPU thread (what a phone or a small server does; the
                three formats take turns image by image, so load slows them alike)
  cold start    wall time of ``cnnzoo predict --model FILE IMAGE`` as a fresh process, and its
                peak RSS (median of --repeat, the formats alternating)

and prints each against FP32 ONNX (size and speed ratios, accuracy difference in points). TFLite
needs litert-torch (``pip install 'cnnzoo[tflite]'``, a separate environment: see the docs'
Dependencies page); without it the TFLite rows say so and the rest runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_onnx import command  # noqa: E402  (scripts/ is this script's own folder)

FORMATS = ("FP32 ONNX", "INT8 ONNX", "TFLite")


def write_exports(checkpoint: Path, out: Path, calibration: int) -> dict[str, Path | str]:
    """The three exports of ``checkpoint`` in ``out`` (a reason instead of a path when one fails)."""
    from cnnzoo.deploy.export import export
    from cnnzoo.errors import UserError

    files: dict[str, Path | str] = {}
    for name, kwargs in (
        ("FP32 ONNX", {"fmt": "onnx"}),
        ("INT8 ONNX", {"fmt": "onnx", "int8": True, "calibration": calibration, "max_drop": 100.0}),
        ("TFLite", {"fmt": "tflite"}),
    ):
        start = time.perf_counter()
        try:
            result = export(checkpoint, out=out, **kwargs)
        except UserError as exc:
            files[name] = str(exc)
            continue
        files[name] = result.path
        print(f"  wrote {result.path.name} in {time.perf_counter() - start:.1f} s", flush=True)
        for line in result.int8.lines() if result.int8 else []:  # export's own report: batches of 32
            print(f"    {line}")
    return files


def single_thread(path: Path):
    """The cnnzoo model for ``path``, its runtime held to one thread."""
    from cnnzoo.inference import load
    from cnnzoo.inference.tflite import TFLiteModel

    if path.suffix == ".tflite":
        return TFLiteModel(path, num_threads=1)
    import onnxruntime

    model = load(path)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    model.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return model


def validation_split(checkpoint: Path):
    """The validation split the checkpoint was trained with."""
    from cnnzoo.checkpoint import load_checkpoint
    from cnnzoo.deploy import quantize

    ckpt = load_checkpoint(checkpoint)
    return quantize.data_splits(ckpt["config"], list(ckpt["meta"]["classes"]))[1]


def accuracy_and_speed(models: dict, validation) -> dict[str, tuple[float, float, int]]:
    """(accuracy, images/s, images) per model over the validation split, one image at a time."""
    from cnnzoo.deploy import quantize
    from cnnzoo.inference.classifier import probabilities

    first = next(iter(models.values()))
    correct = dict.fromkeys(models, 0)
    seconds = dict.fromkeys(models, 0.0)
    total = 0
    for images, rows in quantize.batches(first, validation, list(range(len(validation)))):
        for image, label in zip(images, [validation.labels[r] for r in rows]):
            for name, model in models.items():
                if total == 0:
                    model.logits(image[None])  # a first run sets up buffers
                start = time.perf_counter()
                logits = model.logits(image[None])
                seconds[name] += time.perf_counter() - start
                correct[name] += int(probabilities(logits).argmax(axis=1)[0] == label)
            total += 1
    return {name: (correct[name] / total, total / seconds[name], total) for name in models}


def cold_starts(files: dict[str, Path], image: str, repeat: int) -> dict[str, tuple[float, float]]:
    """(median wall seconds, median peak RSS MB) of ``cnnzoo predict --model FILE IMAGE``."""
    walls: dict[str, list[tuple[float, float]]] = {name: [] for name in files}
    for _ in range(repeat):
        for name, path in files.items():
            walls[name].append(command(path, image))
    return {n: (statistics.median(w for w, _ in v), statistics.median(r for _, r in v)) for n, v in walls.items()}


def report(checkpoint: Path, args: argparse.Namespace) -> dict:
    out = Path(args.out) / checkpoint.parent.name
    print(f"{checkpoint}:", flush=True)
    files = write_exports(checkpoint, out, args.calibration)
    ready = {name: path for name, path in files.items() if isinstance(path, Path)}
    models = {name: single_thread(path) for name, path in ready.items()}
    validation = validation_split(checkpoint)
    if validation.paths is None:
        sys.exit(f"{checkpoint}: the cold start needs image files; this model's data is an array dataset")
    scores = accuracy_and_speed(models, validation)
    image = validation.paths[0]
    starts = cold_starts(ready, image, args.repeat)
    base_size, (base_acc, base_speed, _) = ready["FP32 ONNX"].stat().st_size, scores["FP32 ONNX"]
    rows = {}
    print(
        f"  {'format':10s} {'size MB':>8s} {'x':>6s} {'acc %':>7s} {'pts':>6s} {'img/s':>8s} {'x':>6s} "
        f"{'cold s':>7s} {'RSS MB':>7s}"
    )
    for name in FORMATS:
        if name not in ready:
            print(f"  {name:10s} not measured: {files[name]}")
            rows[name] = {"error": files[name]}
            continue
        size, (acc, speed, n), (wall, rss) = ready[name].stat().st_size, scores[name], starts[name]
        rows[name] = {
            "bytes": size,
            "accuracy": acc,
            "images_per_s": speed,
            "cold_start_s": wall,
            "peak_rss_mb": rss,
            "validation_images": n,
        }
        print(
            f"  {name:10s} {size / 2**20:8.2f} {size / base_size:5.2f}x {100 * acc:7.2f} "
            f"{100 * (acc - base_acc):+6.2f} {speed:8.1f} {speed / base_speed:5.2f}x {wall:7.2f} {rss:7.0f}"
        )
    return {"checkpoint": str(checkpoint), "formats": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3, help="cold starts per format")
    parser.add_argument("--out", default="bench-exports", help="where the exports are written")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    results = [report(checkpoint, args) for checkpoint in args.checkpoints]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
