"""``cnnzoo predict`` and ``cnnzoo evaluate``: a trained model on images."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import UserError
from ..runs import resolve_checkpoint
from .app import TRUST_TORCHSCRIPT_HELP, app, guarded


@app.command()
@guarded
def predict(
    images: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or glob patterns."),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        "--model",
        "-m",
        help="Checkpoint, or an .onnx export (runs without torch). Default: runs/latest's best.pt.",
    ),
    trust_torchscript: bool = typer.Option(False, "--trust-torchscript", help=TRUST_TORCHSCRIPT_HELP),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many ranked classes to show per image."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per image."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV rows, one per image."),
    batch_size: int = typer.Option(64, min=1, help="Images per forward pass."),
    device: str | None = typer.Option(None, help="auto, cpu, cuda, cuda:N."),
    runs: Path = typer.Option(Path("runs"), help="Where to look for runs/latest."),
) -> None:
    """Predict the class of images with a trained checkpoint or an exported model.

    Exit code 0 when every image was predicted, 1 when some could not be read, 2 when none.
    Without torch:  cnnzoo predict --model runs/latest/best.onnx photo.jpg
    """
    # lazy: a command loads its parts (torch) when it runs, so --help and config errors come at once
    from ..inference import load
    from ..inference.inputs import expand_inputs, records_to_csv

    if as_json and as_csv:
        raise UserError("choose one of --json and --csv")
    path = resolve_checkpoint(checkpoint, runs)
    if checkpoint is None:
        typer.echo(f"cnnzoo: using {path}", err=True)
    model = load(path, device, trust_torchscript=trust_torchscript)
    paths, failures = expand_inputs(images)
    errors: list = list(failures)
    records = model.predict(paths, top_k=top_k, batch_size=batch_size, errors=errors, progress=True)
    for name, reason in errors:
        typer.echo(f"cnnzoo: cannot read {name}: {reason}", err=True)
    if as_json:
        typer.echo(json.dumps(records, indent=1))
    elif as_csv:
        typer.echo(records_to_csv(records, min(top_k, len(model.classes))), nl=False)
    else:
        width = max((len(r["image"]) for r in records), default=0)
        for r in records:
            ranked = ", ".join(f"{t['label']} {100 * t['probability']:.1f}%" for t in r["top_k"])
            typer.echo(f"{r['image']:<{width}}  {r['label']:<12} {100 * r['probability']:5.1f}%   [{ranked}]")
    if errors:
        raise typer.Exit(2 if not records else 1)


@app.command()
@guarded
def evaluate(
    checkpoint_arg: Path | None = typer.Argument(
        None,
        metavar="[MODEL]",
        help="Checkpoint (default: runs/latest's best.pt), or an .onnx (FP32 or INT8) or .tflite export "
        "(scored without torch).",
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", "--model", "-m", help="Checkpoint or export, as in predict (same as the argument)."
    ),
    data: Path | None = typer.Option(
        None,
        help="Labelled folder: a data root with test/ or validation/, "
        "or a folder of class folders. Default: the training data (an export: the data root it names).",
    ),
    split: str | None = typer.Option(None, help="test or validation (default: test if there is one)."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="k for top-k accuracy."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
    out: Path | None = typer.Option(
        None,
        help="Where to write eval.json, confusion_matrix.png and report.html (default: the checkpoint's "
        "folder; for an export, eval-<file>/ beside it).",
    ),
    batch_size: int | None = typer.Option(None, min=1, help="Images per forward pass."),
    device: str | None = typer.Option(None, help="auto, cpu, cuda, cuda:N."),
    runs: Path = typer.Option(Path("runs"), help="Where to look for runs/latest."),
    html_report: bool = typer.Option(
        True,
        "--report/--no-report",
        help="Write report.html beside eval.json: confusion matrix, most confused pairs, top losses, "
        "calibration, precision-recall curves (one file, opens offline).",
    ),
) -> None:
    """Score a checkpoint or an export: loss, accuracy, per-class precision/recall/F1, confusion matrix.

    Also writes report.html (unless --no-report): where the model fails, with example images.
    Without torch:  cnnzoo evaluate runs/latest/best.int8.onnx --data DIR
    """
    # lazy: a command loads its parts (torch) when it runs, so --help and config errors come at once
    from ..evaluation.evaluate import evaluate as run_evaluation
    from ..evaluation.evaluate import format_report

    if checkpoint_arg and checkpoint and checkpoint_arg != checkpoint:
        raise UserError(f"two checkpoints given ({checkpoint_arg} and --checkpoint {checkpoint}); give one")
    report = run_evaluation(
        checkpoint or checkpoint_arg,
        data,
        split=split,
        top_k=top_k,
        batch_size=batch_size,
        out=out,
        device=device,
        runs_root=runs,
        progress=not as_json,
        html_report=html_report,
    )
    if as_json:
        typer.echo(json.dumps(report))
    else:
        typer.echo(format_report(report))
        typer.echo(f"\nwrote {', '.join(report['outputs'])}")
