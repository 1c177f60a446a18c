"""``cnnzoo explain``: one image through a trained network, in one HTML page."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, guarded, model_option

MODEL_OPTION = model_option("The checkpoint (default: runs/latest's best.pt).")


@app.command()
@guarded
def explain(
    image: Path = typer.Argument(..., metavar="IMAGE", help="The image to explain."),
    checkpoint: Path | None = MODEL_OPTION,
    out: Path | None = typer.Option(None, "--out", "-o", help="The HTML file (default: <run>/explain/<image>.html)."),
    target: str | None = typer.Option(None, help="Class for Grad-CAM (default: the predicted one)."),
    png: Path | None = typer.Option(None, "--png", help="Also write every picture as a PNG into this folder."),
    runs: Path = typer.Option(Path("runs"), help="Where to look for runs/latest."),
) -> None:
    """Show what the network does to one image: every layer's output, filters, Grad-CAM, in one HTML page.

    Example:  cnnzoo explain ~/.cache/cnnzoo/shapes-v1/validation/star/star_0000.jpg
    The page embeds its pictures and opens in any browser without a network.
    """
    from ..explanation.page import explain as run_explain  # lazy: see cnnzoo.cli

    path, report = run_explain(checkpoint, image, out=out, target=target, png_dir=png, runs_root=runs)
    chosen = report.classes[report.target]
    typer.echo(
        f"{image}: {report.classes[int(report.probabilities.argmax())]} "
        f"({100 * float(report.probabilities.max()):.1f}%); Grad-CAM for {chosen}"
    )
    typer.echo(f"wrote {path}" + (f" and the pictures in {png}" if png else ""))
