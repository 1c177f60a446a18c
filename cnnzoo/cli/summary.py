"""``cnnzoo summary``: a config's network, layer by layer; ``cnnzoo configs``: the shipped configs."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..config import about, load_config, shipped_configs
from ..config.shipped import SHIPPED_FOLDER
from .app import CONFIG_HELP, SET_HELP, app, guarded


@app.command()
@guarded
def summary(
    config: Path = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
    expand: bool = typer.Option(False, "--expand", help="Also list the stages inside a backbone layer."),
) -> None:
    """Show every layer's output shape and parameters, the totals, MACs and memory.

    Like Keras' model.summary(); shapes are checked with out = floor((W - K + 2P) / S) + 1.
    A pretrained backbone is one row; its frozen parameters are counted apart.
    """
    cfg = load_config(config, set_)  # config errors come back before torch is imported
    from ..model.summary import format_summary  # lazy: see cnnzoo.cli
    from ..training.inputs import summarize

    result = summarize(cfg, expand)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(format_summary(result, cfg.run_name))


@app.command("configs")
@guarded
def configs() -> None:
    """List the configs cnnzoo ships, one line each; name one with --config NAME.

    Example:  cnnzoo train --config clothing_recipe --data ~/photos
    """
    shipped = shipped_configs()
    width = max(map(len, shipped))
    for name, path in shipped.items():
        typer.echo(f"{name:<{width}}  {about(path)}")
    typer.echo(
        f"\nUse one:  cnnzoo train --config NAME --data DIR   (cnnzoo summary --config NAME shows its layers)\n"
        f"Edit one: cp {SHIPPED_FOLDER}/NAME.yaml my.yaml, change it, then cnnzoo train --config my.yaml"
    )
