"""``cnnzoo benchmark``: which file to ship. A checkpoint exported to every format that is installed,
each scored and timed on the same images, in one table.

The formats are :data:`~cnnzoo.deploy.formats.EXPORT_FORMATS`' (and an INT8 version of each that
``export --int8`` quantizes), so a format added to that table is benchmarked without a change
here. Each row is what a user gets: the file :func:`~cnnzoo.deploy.export.export` writes (its
parity check included), opened by :func:`cnnzoo.inference.load` as ``predict`` opens it, and run
through that :class:`~cnnzoo.inference.classifier.Classifier`'s own ``logits_and_probabilities``
(normalisation, the network, the softmax). The images are decoded and resized once, by the
checkpoint's preprocessing (the one every format shares), so decoding is left out of the timings
and every format sees the same pixels: its accuracy is what ``evaluate`` of the file gives.

A format whose packages do not import gets a row naming its extra; a format that fails (a
converter that cannot take the model, an INT8 export without its training data) gets a row with
its one-line error, and the others still run.

Floor 8 (deploy): imports export (the formats), inference (load), evaluation (the split
``evaluate`` scores, its scores), runs, files, and torch (its threads).
"""

from __future__ import annotations

import csv
import importlib
import io
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import runs
from ..config import load_config
from ..console import console
from ..errors import DataError, UserError, short_reason
from ..evaluation import multilabel, scores
from ..evaluation.evaluate import EXPORT_BATCH, label_array, labelled_batches
from ..evaluation.splits import check_split, samples_for, trained_rule
from ..files import is_temporary_name, spreadsheet_safe, write_text
from ..inference import Classifier, load
from ..inference.classifier import probabilities
from .export import EXPORT_FORMATS, export

CHECKPOINT = "checkpoint"  # the row every other is compared with
INT8_SUFFIX = "-int8"
ALIASES = {"int8": "onnx-int8"}  # what `export --int8` writes
THROUGHPUT_BATCH = 32
WARMUP = 3  # batch-1 calls before the timed ones (first calls allocate, compile, pick kernels)
LATENCY_RUNS = (20, 1000)  # batch-1 calls timed: at least, at most (in between: until `seconds` pass)
THROUGHPUT_RUNS = (3, 200)  # batches of 32 timed, likewise
DEFAULT_SECONDS = 1.0


@dataclass(frozen=True)
class Variant:
    """One row to measure: the checkpoint itself (``fmt`` None), or a format, or its INT8 version."""

    name: str
    fmt: str | None = None
    int8: bool = False


def variants() -> list[Variant]:
    """Every row ``--formats all`` measures, in the formats' table's order."""
    found = [Variant(CHECKPOINT)]
    for name, spec in EXPORT_FORMATS.items():
        found.append(Variant(name, name))
        if spec.int8:
            found.append(Variant(name + INT8_SUFFIX, name, int8=True))
    return found


def chosen(formats: str | Sequence[str]) -> list[Variant]:
    """The rows ``formats`` names (``all``, or names separated by commas), the checkpoint always
    first; an unknown name is one line listing the valid ones."""
    every = {v.name: v for v in variants()}
    names = [n.strip().lower() for n in (formats.split(",") if isinstance(formats, str) else formats)]
    names = [n for n in names if n]
    if not names or "all" in names:
        return list(every.values())
    unknown = [n for n in names if ALIASES.get(n, n) not in every]
    if unknown:
        raise UserError(
            f"--formats {unknown[0]}: not a format; give all, or some of {', '.join([*every, *ALIASES])} "
            f"separated by commas"
        )
    wanted = {ALIASES.get(n, n) for n in names} | {CHECKPOINT}
    return [v for v in every.values() if v.name in wanted]


@dataclass(kw_only=True)
class Row:
    """One format's figures; None where it was not measured (not installed, failed)."""

    format: str
    file: str = ""
    size_bytes: int | None = None
    score: float | None = None  # accuracy or mAP, a fraction
    drop: float | None = None  # points below the checkpoint's score (negative: above it)
    load_s: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    images_per_s: float | None = None
    status: str = "ok"  # ok, not installed, failed
    note: str = ""


@dataclass
class Images:
    """The scored split, decoded once: the batches ``evaluate`` reads (positions kept), their labels,
    and a batch of 32 for the timings."""

    batches: list[np.ndarray]
    labels: np.ndarray
    split: str
    where: str
    timing: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        first = np.concatenate(self.batches[: 1 + THROUGHPUT_BATCH // max(1, len(self.batches[0]))])
        self.timing = first[np.arange(THROUGHPUT_BATCH) % len(first)]  # fewer images: repeated

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(kw_only=True)
class Benchmark:
    """What ``benchmark`` measured: a row per format, and how (images, threads); ``files`` are
    benchmark.csv and benchmark.md."""

    rows: list[Row]
    metric: str  # "accuracy" or "mAP"
    images: int
    split: str
    data: str
    threads: int
    checkpoint: str
    out: Path
    files: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status == "failed"]

    def title(self) -> str:
        return (
            f"{self.checkpoint} on {self.images} {self.split} images of {self.data}; "
            f"{self.threads} CPU thread{'s' if self.threads != 1 else ''}; "
            f"latency at batch 1, images/s at batch {THROUGHPUT_BATCH}; decoding and resizing not timed"
        )

    def header(self, short: bool = False) -> list[str]:
        """The columns' names: in benchmark.md, or ``short`` for a terminal's width."""
        if short:
            return [
                "format",
                "file",
                "MB",
                f"{self.metric} %",
                "drop",
                "load s",
                "p50 ms",
                "p95 ms",
                "images/s",
                "note",
            ]
        timing = ["load (s)", "p50 (ms)", "p95 (ms)", f"images/s (batch {THROUGHPUT_BATCH})"]
        return ["format", "file", "size (MB)", f"{self.metric} (%)", "drop (points)", *timing, "note"]

    def cells(self, row: Row) -> list[str]:
        """``row`` as the printed table and benchmark.md show it."""

        def shown(value: float | None, digits: int) -> str:
            return "" if value is None else f"{value:.{digits}f}"

        size = None if row.size_bytes is None else row.size_bytes / 2**20
        score = None if row.score is None else 100 * row.score
        timing = [shown(row.load_s, 2), shown(row.p50_ms, 2), shown(row.p95_ms, 2), shown(row.images_per_s, 0)]
        file = (
            Path(row.file).name if row.format == CHECKPOINT else os.path.relpath(row.file, self.out) if row.file else ""
        )
        note = row.note if row.status == "ok" else f"{row.status}: {row.note}"
        return [row.format, file, shown(size, 2), shown(score, 2), shown(row.drop, 2), *timing, note]

    def markdown(self) -> str:
        lines = [f"{self.title()}.", "", "| " + " | ".join(self.header()) + " |", "|---" * len(self.header()) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in self.cells(r)) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def csv_text(self) -> str:
        metric = "map" if self.metric == "mAP" else "accuracy"
        columns = ["format", "file", "size_bytes", metric, "drop_points", "load_s", "p50_ms", "p95_ms"]
        columns += ["images_per_s", "batch", "threads", "images", "status", "note"]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for r in self.rows:
            figures = [r.size_bytes, r.score, r.drop, r.load_s, r.p50_ms, r.p95_ms, r.images_per_s]
            cells = [r.format, r.file, *figures, THROUGHPUT_BATCH, self.threads, self.images, r.status, r.note]
            writer.writerow(["" if v is None else spreadsheet_safe(v) for v in cells])
        return buffer.getvalue()


def default_threads() -> int:
    """Every core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def benchmark(
    model: str | Path | None = None,
    formats: str | Sequence[str] = "all",
    *,
    data: str | Path | None = None,
    split: str | None = None,
    out: str | Path | None = None,
    threads: int | None = None,
    images: int | None = None,
    runs_root: str | Path = "runs",
    seconds: float = DEFAULT_SECONDS,
) -> Benchmark:
    """Export ``model`` (a checkpoint; default: the newest run's best.pt) to each of ``formats``
    that is installed, into ``out`` (default: ``benchmark/`` beside it), and score and time every
    file on the same images: the validation split the checkpoint was trained with (``split``: or
    its test split), or ``data``'s (a folder or manifest, as ``evaluate --data`` reads it),
    ``images`` of them at random if given. Every runtime runs on ``threads`` CPU threads (default:
    all cores); each timing runs for about ``seconds``. Writes benchmark.csv and benchmark.md."""
    picked = chosen(formats)  # an unknown name is refused before anything loads
    check_split(split)
    threads = default_threads() if threads is None else int(threads)
    for option, value in (("--threads", threads), ("--images", images)):
        if value is not None and value < 1:
            raise UserError(f"{option} {value}: give at least 1")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # torch's threads are the process's; given back below
    try:
        source = runs.resolve_checkpoint(model, runs_root)
        settings = {"data": data, "split": split, "out": out, "threads": threads, "seconds": seconds}
        return _measured(picked, source, limit=images, **settings)
    finally:
        torch.set_num_threads(before)


def _measured(
    picked: list[Variant],
    source: Path,
    *,
    data: str | Path | None,
    split: str | None,
    out: str | Path | None,
    threads: int,
    limit: int | None,
    seconds: float,
) -> Benchmark:
    """The checkpoint's row, then each format's; the table written into ``out``."""
    load(source, device="cpu")  # a TorchScript file is refused unopened; torch's lazy imports run once, untimed
    start = time.perf_counter()
    reference = load(source, device="cpu")
    load_s = time.perf_counter() - start
    if reference.format != CHECKPOINT:
        raise UserError(f"{source}: a {reference.format} export; benchmark its checkpoint (.pt), which it exports")
    images = _images(reference, data, split, limit)
    out_dir = Path(out) if out else Path(str(reference.path)).parent / "benchmark"
    rows = [_measure(reference, images, seconds)]
    rows[0].file, rows[0].load_s = str(reference.path), load_s
    rows[0].size_bytes = Path(str(reference.path)).stat().st_size
    for variant in picked[1:]:
        console.log(f"benchmark: {variant.name}")
        rows.append(_format_row(variant, Path(str(reference.path)), out_dir, images, threads=threads, seconds=seconds))
    for row in rows:
        if row.score is not None and rows[0].score is not None:
            row.drop = 100 * (rows[0].score - row.score)
    result = Benchmark(
        rows=rows,
        metric="mAP" if reference.multi_label else "accuracy",
        images=len(images),
        split=images.split,
        data=images.where,
        threads=threads,
        checkpoint=str(reference.path),
        out=out_dir,
    )
    result.files = _write(result, out_dir)
    return result


def _images(reference: Classifier, data: str | Path | None, split: str | None, limit: int | None) -> Images:
    """The split to score, decoded once with the checkpoint's preprocessing (``evaluate``'s batches)."""
    cfg = load_config(reference.config)
    if split is None and data is None:
        split = "validation"
    samples, where = samples_for(
        cfg,
        reference.classes,
        data=data,
        split=split,
        multi_label=reference.multi_label,
        rule=trained_rule(reference.meta, cfg),
    )
    if limit is not None and limit < len(samples) and not samples.streamed:
        keep = np.random.default_rng(0).permutation(len(samples))[:limit]
        samples = samples.subset(sorted(keep.tolist()))
    errors: list = []
    batches, labels = [], []
    for _, pixels, batch_labels in labelled_batches(
        reference, samples, batch_size=EXPORT_BATCH, errors=errors, progress=False
    ):
        batches.append(pixels)
        labels.extend(batch_labels)
        if limit is not None and len(labels) >= limit:  # a stream: its first images
            break
    for name, reason in errors:
        console.warn(f"skipped {name}: cannot read image ({reason})")
    if not labels:
        raise DataError(f"{where}: no readable images to benchmark on")
    return Images(batches, label_array(labels, len(reference.classes), reference.multi_label), samples.name, where)


def _format_row(variant: Variant, source: Path, out_dir: Path, images: Images, *, threads: int, seconds: float) -> Row:
    """``variant`` exported into its own folder, loaded as ``predict`` loads it, scored and timed; a
    row saying what to install, or the one-line error, when it cannot be."""
    spec = EXPORT_FORMATS[str(variant.fmt)]
    missing = [m for m in spec.modules if not _imports(m)]
    if missing:
        hint = f"pip install 'cnnzoo[{spec.extra}]'" if spec.extra else "see the install page"
        return Row(format=variant.name, status="not installed", note=f"{hint} ({', '.join(missing)} missing)")
    try:
        exported = export(source, variant.fmt, out=out_dir / variant.name, int8=variant.int8)
        start = time.perf_counter()
        model = load(exported.path, device="cpu", trust_torchscript=True, threads=threads)  # the file just written
        load_s = time.perf_counter() - start
        row = _measure(model, images, seconds, name=variant.name)
    except UserError as exc:
        return Row(format=variant.name, status="failed", note=" ".join(str(exc).split()))
    except Exception as exc:  # a converter's own error: this format fails, the others still run
        return Row(format=variant.name, status="failed", note=f"{type(exc).__name__}: {short_reason(exc, 200)}")
    row.file, row.load_s, row.size_bytes = str(exported.path), load_s, _size(exported.path)
    row.note = _export_note(exported)
    return row


def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _size(path: Path) -> int:
    """The bytes a format ships: its file and any it wrote beside it in its own folder (weights)."""
    folder = path if path.is_dir() else path.parent
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and not is_temporary_name(p.name))


def _export_note(exported: Any) -> str:
    """What ``export`` found wrong with the file (its exit code would be 1), if anything."""
    notes = []
    if exported.not_finite:
        notes.append(f"do not ship: {exported.not_finite} probabilities are NaN or infinite")
    elif not exported.ok:
        notes.append(
            f"do not ship: differs from the checkpoint by {exported.max_difference:.1e} > {exported.tolerance:g}"
        )
    if exported.int8 is not None and not exported.int8.ok:
        notes.append("export --int8 refuses it: the INT8 drop is beyond --max-drop")
    return "; ".join(notes)


def _measure(model: Classifier, images: Images, seconds: float, name: str = CHECKPOINT) -> Row:
    """``model``'s score on ``images`` and its timings, through its own predict path."""
    logits = np.concatenate([model.logits_and_probabilities(batch)[0] for batch in images.batches])
    if model.multi_label:
        probs = probabilities(logits, multi_label=True, temperature=model.temperature)
        score = multilabel.mean_average_precision(probs, images.labels)
    else:
        score = float((scores.predictions(logits) == images.labels).sum() / len(images))
    p50, p95 = latency_ms(model, images.timing, seconds)
    throughput = images_per_second(model, images.timing, seconds)
    return Row(format=name, score=score, p50_ms=p50, p95_ms=p95, images_per_s=throughput)


def latency_ms(model: Classifier, pixels: np.ndarray, seconds: float) -> tuple[float, float]:
    """The median and 95th percentile of one image's time through ``model`` (uint8 [B, H, W, C]
    taken in turn), after a warm-up: at least 20 calls, then until ``seconds`` have passed."""
    for i in range(WARMUP):
        model.logits_and_probabilities(pixels[i % len(pixels)][None])
    times: list[float] = []
    least, most = LATENCY_RUNS
    start = time.perf_counter()
    while len(times) < least or (len(times) < most and time.perf_counter() - start < seconds):
        image = pixels[len(times) % len(pixels)][None]
        began = time.perf_counter()
        model.logits_and_probabilities(image)
        times.append(time.perf_counter() - began)
    p50, p95 = np.percentile(np.asarray(times) * 1000, [50, 95])
    return float(p50), float(p95)


def images_per_second(model: Classifier, batch: np.ndarray, seconds: float) -> float:
    """Images per second through ``model`` in batches of ``batch`` after one warm-up batch: at least
    3 batches, then until ``seconds`` have passed."""
    model.logits_and_probabilities(batch)
    least, most = THROUGHPUT_RUNS
    done, start = 0, time.perf_counter()
    while done < least or (done < most and time.perf_counter() - start < seconds):
        model.logits_and_probabilities(batch)
        done += 1
    return done * len(batch) / (time.perf_counter() - start)


def _write(result: Benchmark, out_dir: Path) -> list[Path]:
    written = [out_dir / "benchmark.csv", out_dir / "benchmark.md"]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(written[0], result.csv_text())
        write_text(written[1], result.markdown())
    except OSError as exc:
        raise UserError(f"--out {out_dir}: cannot write there ({exc.strerror or exc}); choose another --out") from None
    return written
