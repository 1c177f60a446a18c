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
    out: str = typer.Argument(
        ...,
        metavar="OUT",
        help="A new folder, or a store prefix (s3://bucket/prefix): OUT/train/, OUT/validation/, OUT/dataset.json.",
    ),
    shard_size: int = typer.Option(1000, "--shard-size", min=1, help="Images per shard (tar file)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT when it is a shard set cnnzoo wrote."),
    set_: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
) -> None:
    """Write WebDataset shards (tar files of images and labels) from any source, for streaming.

    The source's own splits are kept (or data.val_fraction is held out, seeded, when it has none);
    the training split is shuffled so that every shard mixes the classes. OUT is written beside
    itself and renamed into place when complete: a kill leaves no OUT or a whole one. An OUT that
    holds anything is refused, and with --force replaced only when it is a shard set cnnzoo wrote.
    Multi-label data and files outside the source's folder are refused. An OUT in a store
    (s3://, gs://, az://) is written locally first and uploaded, dataset.json last. Then:
    cnnzoo train -c CONFIG --data OUT
    """
    cfg = data_config(None, source, set_)
    from ..data.shard_export import write_source  # lazy: see cnnzoo.cli
    from ..training.inputs import preprocessing_for

    write_source(cfg, out, shard_size=shard_size, force=force, task=cfg.train.task, pretrained=preprocessing_for(cfg))


ISSUES_SHOWN = 10  # rows of each kind printed (issues.csv has them all)


def format_issues(report, shown: int = ISSUES_SHOWN) -> str:
    """The first rows of each kind as an aligned table, then the counts and where the files are."""
    header = ("kind", "score", "given", "suggested", "image")
    rows = []
    for kind in report.counts:
        rows += [
            (i.kind, f"{i.score:.3f}", i.given_label, i.suggested_label or "-", i.image)
            for i in [i for i in report.issues if i.kind == kind][:shown]
        ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[4] for r in [header, *rows]]
    counts = ", ".join(f"{n} {kind}" for kind, n in report.counts.items())
    return "\n".join(
        [*lines, f"{report.images} images: {counts}", f"wrote {report.out}/issues.csv and {report.out}/issues.html"]
    )


@data_app.command("issues")
@guarded
def issues(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="The config whose backbone gives the features (default: clothing_transfer)."
    ),
    data: str | None = typer.Option(
        None, "--data", help="Folder of class folders, manifest (images.csv) or Hugging Face folder (sets data.root)."
    ),
    folds: int = typer.Option(5, "--folds", "-k", help="Folds for the out-of-fold probabilities (2 or more)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Folder for issues.csv and issues.html (default: a new ./issues)."
    ),
    set_: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
) -> None:
    """Rank likely problems in a data set: wrong labels, near-duplicates, leaks between splits, outliers.

    Every labelled split is pooled. A pretrained backbone (the config's) embeds each image once;
    K logistic heads give every image probabilities from a head that never saw it, and cleanlab
    ranks the labels they disagree with. Writes issues.csv (image,kind,given_label,suggested_label,score)
    and issues.html (thumbnails) into --out, and prints the first rows.
    Example:  cnnzoo data issues --data clothing/images.csv -c clothing_transfer
    """
    from ..training.issues import CLEANLAB_MISSING, check_out, default_out  # lazy: see cnnzoo.cli

    if folds < 2:
        raise UserError(f"--folds {folds}: out-of-fold probabilities need at least 2 folds; give 2 or more")
    if out is not None:
        check_out(out)
    try:
        import cleanlab  # noqa: F401  # lazy: an optional extra, asked for before the features' minutes
    except ImportError:
        raise UserError(CLEANLAB_MISSING) from None
    from ..training.issues import data_issues  # lazy: see cnnzoo.cli

    target = out if out is not None else default_out()
    report = data_issues(
        config if config is not None else "clothing_transfer", data, folds=folds, out=target, overrides=set_
    )
    typer.echo(terminal_safe(format_issues(report)))
