"""``cnnzoo predict`` and ``cnnzoo evaluate``: a trained model on images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from ..console import console
from ..errors import UserError, terminal_safe
from ..runs import resolve_checkpoint
from .app import TRUST_TORCHSCRIPT_HELP, app, guarded, model_option, one_model

PREDICT_MODEL_OPTION = model_option(
    "Checkpoint, or an .onnx, .tflite or OpenVINO .xml export (these run without torch). "
    "Default: runs/latest's best.pt."
)
EVALUATE_MODEL_OPTION = model_option("The model, as an option (the same as the argument).")


@app.command()
@guarded
def predict(
    images: list[str] = typer.Argument(
        None, metavar="IMAGES", help="Image files, folders (searched recursively) or glob patterns."
    ),
    checkpoint: Path | None = PREDICT_MODEL_OPTION,
    trust_torchscript: bool = typer.Option(False, "--trust-torchscript", help=TRUST_TORCHSCRIPT_HELP),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many ranked classes to show per image."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per image."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV rows, one per image."),
    batch_size: int = typer.Option(64, min=1, help="Images per forward pass."),
    device: str | None = typer.Option(None, help="auto, cpu, cuda, cuda:N."),
    runs: Path = typer.Option(Path("runs"), help="Where to look for runs/latest."),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="A manifest (.csv, .tsv, .jsonl, .parquet): predict each row's image, in its order "
        "(with --csv: one row per manifest row, a Kaggle submission).",
    ),
    tta: bool = typer.Option(
        False, "--tta", help="Test-time augmentation: average 5 views (mirror, 3 crops); torch models only."
    ),
    threshold: float | None = typer.Option(
        None,
        "--threshold",
        min=0.0,
        max=1.0,
        help="Multi-label models: the probability at which a class is listed, for every class "
        "(default: the model's own thresholds, 0.5 or tuned in training).",
    ),
    unknown_threshold: float | None = typer.Option(
        None,
        "--unknown-threshold",
        help="Answer unknown past this unknown score instead of the model's own threshold "
        "(knn score: 0 to 2, higher is stranger; docs/unknown.md).",
    ),
    no_unknown: bool = typer.Option(
        False, "--no-unknown", help="Always name one of the classes: no unknown answer, no unknown_score."
    ),
) -> None:
    """Predict the class of images with a trained checkpoint or an exported model.

    Exit code 0 when every image was predicted, 1 when some could not be read, 2 when none.
    Without torch:  cnnzoo predict --model runs/latest/best.onnx photo.jpg
    A manifest:     cnnzoo predict --data test.csv --csv > submission.csv
    """
    from ..inference import load  # lazy: see cnnzoo.cli
    from ..inference.inputs import expand_inputs, label_separator

    if as_json and as_csv:
        raise UserError("choose one of --json and --csv")
    if not images and data is None:
        raise UserError(
            "give the images to predict (files, folders or glob patterns), e.g. cnnzoo predict photo.jpg "
            "holiday/, or a manifest of them: cnnzoo predict --data test.csv"
        )
    if images and data is not None:
        raise UserError("give images to predict or --data MANIFEST, not both")
    path = resolve_checkpoint(checkpoint, runs)
    if checkpoint is None:
        typer.echo(terminal_safe(f"cnnzoo: using {path}", one_line=True), err=True)
    model = load(path, device, trust_torchscript=trust_torchscript)
    options = {"tta": tta, "threshold": threshold, "batch_size": batch_size, "progress": True}
    options.update(unknown=not no_unknown, unknown_threshold=unknown_threshold)
    header = "image"
    if data is not None:
        errors: list = []
        predicted = model.predict_manifest(data, top_k, errors=errors, **options)
        records, header = predicted.records, predicted.image_column
    else:
        paths, errors = expand_inputs(images)
        records = model.predict(paths, top_k, errors=errors, **options)
    for name, reason in errors:
        typer.echo(terminal_safe(f"cnnzoo: cannot read {name}: {reason}", one_line=True), err=True)
    if as_json:
        typer.echo(json.dumps(records, indent=1))
    elif as_csv:
        table = model.csv(records, top_k, image_header=header)
        typer.echo(
            terminal_safe(table) if sys.stdout.isatty() else table, nl=False
        )  # a file gets the names as they are
    else:
        width = max((len(r["image"]) for r in records), default=0)
        separator = label_separator(model.classes)
        for r in (r for r in records if r["top_k"]):
            ranked = ", ".join(f"{t['label']} {100 * t['probability']:.1f}%" for t in r["top_k"])
            if model.multi_label:
                line = f"{r['image']:<{width}}  {separator.join(r['labels']) or '(none)':<24} [{ranked}]"
            elif r.get("unknown"):
                line = (
                    f"{r['image']:<{width}}  unknown (looks like none of the {len(model.classes)} classes)  [{ranked}]"
                )
            else:
                line = f"{r['image']:<{width}}  {r['label']:<12} {100 * r['probability']:5.1f}%   [{ranked}]"
            typer.echo(terminal_safe(line, one_line=True))
    if errors:
        raise typer.Exit(2 if not records else 1)


@app.command()
@guarded
def evaluate(
    checkpoint_arg: Path | None = typer.Argument(
        None,
        metavar="MODEL",
        help="Checkpoint (default: runs/latest's best.pt), or an .onnx or OpenVINO .xml (FP32 or INT8) or "
        ".tflite export (scored without torch).",
    ),
    checkpoint: Path | None = EVALUATE_MODEL_OPTION,
    data: Path | None = typer.Option(
        None,
        help="Labelled data: a folder (with test/ or validation/, or of class folders), a manifest "
        "(.csv, .tsv, .jsonl, .parquet, or a folder holding one beside images/), WebDataset shards or a "
        "Hugging Face dataset folder. Default: the data the model trained on, split as training split it.",
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
    tta: bool = typer.Option(
        False, "--tta", help="Test-time augmentation: average the probabilities of 5 views (mirror, 3 crops)."
    ),
    unknown: Path | None = typer.Option(
        None,
        "--unknown",
        help="Photos of none of the model's classes (a folder or a manifest): report unknown_auroc, "
        "unknown_fpr95 and unknown_rejected (the model's unknown score against the split's images).",
    ),
    unknown_threshold: float | None = typer.Option(
        None, "--unknown-threshold", help="With --unknown: unknown_rejected at this threshold, not the model's own."
    ),
) -> None:
    """Score a checkpoint or an export: loss, accuracy, per-class precision/recall/F1, confusion matrix.

    Also writes report.html (unless --no-report): where the model fails, with example images.
    Without torch:  cnnzoo evaluate runs/latest/best.int8.onnx --data DIR
    """
    from ..evaluation.evaluate import evaluate as run_evaluation  # lazy: see cnnzoo.cli
    from ..evaluation.evaluate import format_report

    with console.scoped(as_json):  # --json: stdout is the one JSON object (warnings stay on stderr)
        report = run_evaluation(
            one_model(checkpoint_arg, checkpoint),
            data,
            split=split,
            top_k=top_k,
            batch_size=batch_size,
            out=out,
            device=device,
            runs_root=runs,
            progress=not as_json,
            html_report=html_report,
            tta=tta,
            unknown=unknown,
            unknown_threshold=unknown_threshold,
        )
    if as_json:
        typer.echo(json.dumps(report))
    else:
        typer.echo(terminal_safe(format_report(report)))
        if "unknown_auroc" in report:
            from ..evaluation.unknown_eval import format_unknown  # lazy: see cnnzoo.cli

            typer.echo(terminal_safe(format_unknown(report)))
        typer.echo(f"\nwrote {', '.join(report['outputs'])}")
