"""``cnnzoo runs sync``: a run folder copied to a store (checkpoints kept off the node) or back
(to resume or evaluate it elsewhere)."""

from __future__ import annotations

import typer

from .app import CnnzooTyper, app, guarded

runs_app = CnnzooTyper(
    help="Run folders: copy them to object storage and back.", no_args_is_help=True, add_completion=False
)
app.add_typer(runs_app, name="runs")


@runs_app.command("sync")
@guarded
def sync(
    source: str = typer.Argument(..., metavar="SRC", help="A run folder (runs/NAME/N), or its URL in a store."),
    target: str = typer.Argument(
        ..., metavar="DST", help="The URL to copy it to (s3://bucket/runs/NAME/N), or a folder."
    ),
) -> None:
    """Copy a run folder to object storage (s3://, gs://, az://) or back, every file replaced whole.

    Keep checkpoints off the node: cnnzoo runs sync runs/NAME/N s3://bucket/runs/NAME/N
    (after training, or every few minutes while it trains). Resume on another machine:
    cnnzoo runs sync s3://bucket/runs/NAME/N runs/NAME/N
    cnnzoo train --resume runs/NAME/N/last.pt
    Credentials come from the environment, a profile or an instance role (docs: remote-data).
    """
    from ..console import console  # lazy: see cnnzoo.cli
    from ..data.remote import sync as copy_run

    count = copy_run(source, target)
    console.log(f"copied {count} files from {source} to {target}")
