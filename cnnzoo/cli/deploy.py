"""``cnnzoo export`` and ``cnnzoo serve``: a trained model taken elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..deploy import DEFAULT_CALIBRATION, DEFAULT_MAX_BYTES, DEFAULT_MAX_DROP, DEFAULT_OPSET, PARITY_TOLERANCE
from ..errors import UserError
from .app import TRUST_TORCHSCRIPT_HELP, _fail, app, guarded, model_option, one_model

EXPORT_MODEL_OPTION = model_option("The checkpoint, as an option (the same as the argument).")
MODEL_OPTION = model_option("The model, as an option (the same as the argument).")


@app.command()
@guarded
def export(
    model_arg: Path | None = typer.Argument(
        None, metavar="MODEL", help="The checkpoint to export (default: runs/latest's best.pt)."
    ),
    model: Path | None = EXPORT_MODEL_OPTION,
    fmt: str = typer.Option(
        "onnx",
        "--format",
        "-f",
        help="onnx (runs without torch), openvino (Intel's CPU runtime, without torch), tflite (LiteRT, for phones) "
        "or torchscript.",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="File or folder to write (default: beside the checkpoint, best.onnx / best.openvino.xml with its "
        ".bin / best.torchscript.pt).",
    ),
    opset: int = typer.Option(DEFAULT_OPSET, "--opset", min=7, help="ONNX opset version."),
    tolerance: float = typer.Option(
        PARITY_TOLERANCE, "--tolerance", min=0.0, help="Largest probability difference from the checkpoint that passes."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace a file at --out that is not an export of this format (never the checkpoint itself).",
    ),
    runs: Path = typer.Option(Path("runs"), help="Where to look for runs/latest."),
    int8: bool = typer.Option(
        False,
        "--int8",
        help="ONNX or OpenVINO: write an INT8 model (best.int8.onnx, best.int8.openvino.xml) calibrated on "
        "training images, and compare it with FP32 on the validation split.",
    ),
    calibration: int = typer.Option(
        DEFAULT_CALIBRATION, "--calibration", help="With --int8: training images that calibrate it."
    ),
    max_drop: float = typer.Option(
        DEFAULT_MAX_DROP,
        "--max-drop",
        min=0.0,
        help="With --int8: accuracy points INT8 may lose against FP32 on validation; exit 1 beyond, "
        "when the loss is measurable (McNemar's exact test on the images whose answer changed, p < 0.05).",
    ),
) -> None:
    """Export a checkpoint to ONNX, OpenVINO, TFLite or TorchScript, then check it gives the checkpoint's probabilities.

    The file holds the classes, input size and normalisation, so it is used alone:
      cnnzoo export                  (writes runs/latest/best.onnx)
      cnnzoo export --int8           (writes runs/latest/best.int8.onnx, about 0.3x the size)
      cnnzoo export -f openvino      (writes runs/latest/best.openvino.xml and .bin; the openvino extra)
      cnnzoo predict -m runs/latest/best.onnx photo.jpg
      cnnzoo serve runs/latest/best.onnx
    Exit code 1 when the exported model disagrees with the checkpoint beyond --tolerance, or gives
    NaN or infinite probabilities, or (--int8) loses more than --max-drop points of validation
    accuracy and the loss is measurable (McNemar's exact test, p < 0.05, on the images whose
    answer changed); the file is written all the same, to inspect.

    TorchScript is code: cnnzoo writes it for LibTorch (C++) and opens one only with
    predict/serve --trust-torchscript.
    """
    from ..deploy.export import export as run_export  # lazy: see cnnzoo.cli

    result = run_export(
        one_model(model_arg, model),
        fmt,
        out=out,
        opset=opset,
        tolerance=tolerance,
        runs_root=runs,
        force=force,
        int8=int8,
        calibration=calibration,
        max_drop=max_drop,
    )
    size = sum(file.stat().st_size for file in result.files)
    verdict = "ok" if result.ok else "FAILED"
    beside = "".join(f" + {file.name}" for file in result.files[1:])  # an OpenVINO export's weights
    typer.echo(f"wrote {result.path}{beside} ({result.format}{' INT8' if int8 else ''}, {size / 2**20:.1f} MB)")
    typer.echo(
        f"{'the FP32 graph' if int8 else 'parity'} with the checkpoint on {result.images} images: largest "
        f"probability difference {result.max_difference:.2e} (tolerance {result.tolerance:g}): {verdict}"
    )
    for line in result.int8.lines() if result.int8 else []:
        typer.echo(line)
    if result.not_finite:
        _fail(f"{result.path}: {result.not_finite} probabilities are NaN or infinite; do not deploy it", code=1)
    if not result.ok:
        _fail(
            f"{result.path}: the exported model's probabilities differ from the checkpoint's by "
            f"{result.max_difference:.2e} > {result.tolerance:g}; do not deploy it (try another "
            f"--opset or --format)",
            code=1,
        )
    if result.int8 and not result.int8.ok:
        _fail(
            f"{result.path}: INT8 loses {result.int8.drop:.2f} points of validation accuracy against FP32 "
            f"(--max-drop {max_drop:g}), measurably: {result.int8.changes.describe()}; do not deploy it "
            "(try more --calibration images, or the FP32 export)",
            code=1,
        )


@app.command()
@guarded
def serve(
    model_arg: Path | None = typer.Argument(
        None,
        metavar="MODEL",
        help="Checkpoint, .onnx, .tflite or OpenVINO .xml export (these run without torch). "
        "Default: runs/latest's best.pt.",
    ),
    model: Path | None = MODEL_OPTION,
    trust_torchscript: bool = typer.Option(False, "--trust-torchscript", help=TRUST_TORCHSCRIPT_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    workers: int = typer.Option(1, min=1, help="Server processes, each with its own copy of the model."),
    max_bytes: int = typer.Option(
        DEFAULT_MAX_BYTES,
        "--max-bytes",
        min=1,
        help="Largest request body accepted: one image, or all files of a multipart "
        "upload together (counted as it arrives; never spooled to disk).",
    ),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Default top-k when a request gives none."),
    device: str | None = typer.Option(None, help="auto, cpu, cuda, cuda:N (checkpoints and TorchScript)."),
    runs: Path = typer.Option(Path("runs"), help="Where to look for runs/latest."),
    unknown_threshold: float | None = typer.Option(
        None, "--unknown-threshold", help="Answer unknown past this unknown score, not the model's own threshold."
    ),
    no_unknown: bool = typer.Option(False, "--no-unknown", help="Always name one of the classes."),
) -> None:
    """Serve a model over HTTP, with a page to try it: open http://127.0.0.1:8000/ in a browser.

    POST /predict takes an image as the body or as multipart files (?top_k=N) and answers the
    records of predict --json; GET /info and GET /health describe the service.
      curl --data-binary @photo.jpg http://127.0.0.1:8000/predict
      curl -F file=@a.jpg -F file=@b.jpg 'http://127.0.0.1:8000/predict?top_k=3'
    Bounds: --max-bytes per request, 64 megapixels and 1 GiB of decoding memory at once (larger
    images get 413). On a public network put a reverse proxy in front (docs/security.md).
    """
    from ..deploy.serve import serve as run_server  # lazy: see cnnzoo.cli

    run_server(
        one_model(model_arg, model),
        host=host,
        port=port,
        workers=workers,
        max_bytes=max_bytes,
        top_k=top_k,
        device=device,
        runs_root=runs,
        trust_torchscript=trust_torchscript,
        unknown=_unknown_setting(no_unknown, unknown_threshold),
    )


def _unknown_setting(no_unknown: bool, threshold: float | None) -> str:
    """serve's --no-unknown / --unknown-threshold as one setting the worker processes read."""
    if no_unknown and threshold is not None:
        raise UserError("--unknown-threshold: cannot be combined with --no-unknown")
    return "off" if no_unknown else ("" if threshold is None else repr(float(threshold)))


@app.command()
@guarded
def benchmark(
    model_arg: Path | None = typer.Argument(
        None, metavar="MODEL", help="The checkpoint to export and measure (default: runs/latest's best.pt)."
    ),
    model: Path | None = EXPORT_MODEL_OPTION,
    formats: str = typer.Option(
        "all",
        "--formats",
        "-f",
        help="all, or formats separated by commas: onnx, onnx-int8 (or int8), openvino, openvino-int8, torchscript, "
        "tflite. "
        "The checkpoint itself is always the first row.",
    ),
    data: Path | None = typer.Option(
        None, "--data", help="Labelled images to score on (default: the split the checkpoint was validated on)."
    ),
    split: str | None = typer.Option(
        None, "--split", help="test or validation (default: validation; with --data, the split evaluate --data scores)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Folder for the exports and the table (default: benchmark/ beside the checkpoint)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="CPU threads of every runtime (torch, onnxruntime, ...). Default: all cores."
    ),
    images: int | None = typer.Option(None, "--images", min=1, help="Score this many of the images, drawn at random."),
    runs: Path = typer.Option(Path("runs"), help="Where to look for runs/latest."),
) -> None:
    """Which file to ship: export a checkpoint to every installed format and measure each on the same images.

    One row per format: file size, accuracy (mAP for a multi-label model), its drop against the
    checkpoint in points, load time, latency p50/p95 at batch 1 and images/s at batch 32, every
    runtime on the same threads. The images are decoded once (decoding and resizing are not
    timed). Printed, and saved as benchmark.csv and benchmark.md in --out.
      cnnzoo benchmark                          (runs/latest/best.pt, every format)
      cnnzoo benchmark --formats onnx,int8 --threads 1
    A format that is not installed gets a row naming its extra; one that fails gets its error, and
    the others still run (exit code 1 when one failed).
    """
    from ..deploy.benchmark import benchmark as run_benchmark  # lazy: see cnnzoo.cli

    result = run_benchmark(
        one_model(model_arg, model),
        formats,
        data=data,
        split=split,
        out=out,
        threads=threads,
        images=images,
        runs_root=runs,
    )
    _print_table(result)
    typer.echo(f"wrote {result.files[0]} and {result.files[1].name}")
    if result.failed:
        names = ", ".join(row.format for row in result.failed)
        _fail(f"{names}: failed; the note column says why (the other formats were measured)", code=1)


def _print_table(result: Any) -> None:
    """The table, drawn by Rich (typer's own dependency), its notes below it (benchmark.md has them as a column)."""
    from rich.console import Console  # lazy: see cnnzoo.cli
    from rich.table import Table

    typer.echo(result.title())  # one line of its own: a title inside a narrow table wraps mid-phrase
    table = Table()
    shown = [n for n in range(len(result.header(short=True)) - 1) if n != 1]  # the files: listed below
    for n in shown:  # a narrow window wraps the headers; no figure is cut short
        table.add_column(result.header(short=True)[n], justify="right" if n >= 2 else "left", no_wrap=n >= 2)
    for row in result.rows:
        cells = result.cells(row)
        table.add_row(*(cells[n] for n in shown))
    Console(soft_wrap=False).print(table)
    files = [f"{row.format} {result.cells(row)[1]}" for row in result.rows if result.cells(row)[1]]
    typer.echo("files: " + ", ".join(files))
    for row in result.rows:
        if note := result.cells(row)[-1]:
            typer.echo(f"{row.format}: {note}")
