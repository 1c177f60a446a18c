"""``cnnzoo data``: look at a data set before training on it (``data check``)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..config import load_config
from ..console import console
from ..errors import UserError, terminal_safe
from .app import CONFIG_HELP, SET_HELP, CnnzooTyper, app, guarded
from .train import require_data

data_app = CnnzooTyper(
    help="Look at a data set before training on it (check), or write it as WebDataset shards (shards).",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")

CHECK_IMAGE_SIZE = 64  # what the check resolves a config without an image size to: sizes do not matter to it


def data_config(config: Path | None, data: str | None, set_: list[str]):
    """The config a data command reads: ``config`` with ``--data`` as data.root, or ``--data`` alone."""
    if config is None and data is None:
        raise UserError(
            "give a config that names its data (cnnzoo data check -c quickstart) or --data FOLDER_OR_MANIFEST"
        )
    overrides = [*set_, *([f"data.root={json.dumps(data)}"] if data else [])]
    cfg = load_config(config if config is not None else {"data": {}}, overrides)
    require_data(cfg, config)
    if cfg.data.image_size is None and not cfg.model.input:
        cfg.data.image_size = CHECK_IMAGE_SIZE
    return cfg


@data_app.command("check")
@guarded
def check(
    config_arg: Path | None = typer.Argument(None, metavar="CONFIG", help=CONFIG_HELP),
    config: Path | None = typer.Option(None, "--config", "-c", help="The config, as an option."),
    data: str | None = typer.Option(
        None,
        "--data",
        help="Folder of class folders, manifest (or a folder holding one beside images/), shards or "
        "Hugging Face folder (sets data.root).",
    ),
    set_: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Print what cnnzoo will train on: images per class and split, and what is wrong with them.

    Missing, unreadable and duplicate files, image sizes, class imbalance, classes only some splits have.

    Exit code 0 when every image can be read, 1 when some are missing or unreadable.
    Example:  cnnzoo data check --data clothing/images.csv
    """
    if config_arg and config and config_arg != config:
        raise UserError(f"two configs given ({config_arg} and --config {config}); give one")
    cfg = data_config(config or config_arg, data, set_)
    from ..data.check import check_data, format_check, problems  # lazy: see cnnzoo.cli
    from ..training.inputs import preprocessing_for

    with console.scoped(as_json):  # --json: stdout is the one JSON object, without the data's log lines
        report = check_data(cfg, task=cfg.train.task, pretrained=preprocessing_for(cfg))
    typer.echo(json.dumps(report) if as_json else terminal_safe(format_check(report)))
    if problems(report):
        raise typer.Exit(1)


@data_app.command("shards")
@guarded
def shards(
    source: str = typer.Argument(..., metavar="SRC", help="Image folder, manifest or shard set to write as shards."),
    out: Path = typer.Argument(..., metavar="OUT", help="A new folder: OUT/train/, OUT/validation/, OUT/dataset.json."),
    shard_size: int = typer.Option(1000, "--shard-size", min=1, help="Images per shard (tar file)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT when it is a shard set cnnzoo wrote."),
    set_: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
) -> None:
    """Write WebDataset shards (tar files of images and labels) from any source, for streaming.

    The source's own splits are kept (or data.val_fraction is held out, seeded, when it has none);
    the training split is shuffled so that every shard mixes the classes. OUT is written beside
    itself and renamed into place when complete: a kill leaves no OUT or a whole one. An OUT that
    holds anything is refused, and with --force replaced only when it is a shard set cnnzoo wrote.
    Multi-label data and files outside the source's folder are refused. Then:
    cnnzoo train -c CONFIG --data OUT
    """
    cfg = data_config(None, source, set_)
    from ..data.shard_export import write_source  # lazy: see cnnzoo.cli
    from ..training.inputs import preprocessing_for

    write_source(cfg, out, shard_size=shard_size, force=force, task=cfg.train.task, pretrained=preprocessing_for(cfg))
