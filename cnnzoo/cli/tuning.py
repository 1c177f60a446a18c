"""``cnnzoo lr-find``, ``cnnzoo sweep`` and ``cnnzoo tune``: tuning a recipe."""

from __future__ import annotations

from pathlib import Path

import typer

from ..config import find_config, load_config
from ..errors import UserError
from .app import CONFIG_HELP, SET_HELP, app, guarded
from .train import (
    BATCH_SIZE_OPTION,
    DATA_OPTION,
    DEVICE_OPTION,
    EPOCHS_OPTION,
    IMAGE_SIZE_OPTION,
    UNSET_OPTION,
    Shortcuts,
    require_data,
)


def _checked(config: Path, overrides: list[str]) -> tuple[Path, list[str]]:
    """The config file (a shipped config by name, too) and the overrides, checked with the data
    named, before torch is imported: config errors come back at once."""
    config = find_config(config)
    require_data(load_config(config, overrides), config)
    return config, overrides


@app.command("lr-find")
@guarded
def lr_find(
    config: Path = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    unset: list[str] = UNSET_OPTION,
    data: str | None = DATA_OPTION,
    epochs: int | None = EPOCHS_OPTION,
    batch_size: int | None = BATCH_SIZE_OPTION,
    image_size: int | None = IMAGE_SIZE_OPTION,
    device: str | None = DEVICE_OPTION,
    steps: int = typer.Option(200, min=10, help="Training steps while the rate grows."),
    start: float = typer.Option(1e-7, help="First learning rate."),
    end: float = typer.Option(1.0, help="Last learning rate."),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="The plot: a .png/.svg/.pdf file, or a folder for <name>.png (default: <runs>/lr-find/<name>.png).",
    ),
    runs: Path = typer.Option(Path("runs"), "--runs", help="Folder that holds run folders (and lr-find/)."),
    apply: bool = typer.Option(
        False,
        "--apply",
        help="Also write the config with the suggested train.lr and "
        "this line's --set/shortcuts, beside the plot "
        "(<plot folder>/<config>.lr.yaml).",
    ),
) -> None:
    """Find a learning rate: train briefly while the rate grows exponentially, plot the loss, suggest one.

    Example:  cnnzoo lr-find -c configs/quickstart.yaml --apply
              (writes runs/lr-find/quickstart.png and runs/lr-find/quickstart.lr.yaml)
    Nothing is saved but the plot (and, with --apply, the config copy); configs/ is never written.
    """
    overrides = Shortcuts(
        data=data, epochs=epochs, batch_size=batch_size, image_size=image_size, device=device
    ).overrides(set_, unset)
    config = find_config(config)  # a shipped config by name, too (its copy is written beside the plot)
    cfg = load_config(config, overrides)  # config errors come back before torch is imported
    require_data(cfg, config)
    from ..training.lr_find import apply_lr  # lazy: see cnnzoo.cli
    from ..training.lr_find import lr_find as run_lr_find

    result = run_lr_find(cfg, [], steps=steps, start=start, end=end, out=out, runs_root=runs)
    typer.echo(
        f"suggested learning rate: {result.suggestion:.3g} ({result.how}); "
        f"config has {cfg.train.lr:g}; loss curve: {result.plot}"
    )
    if apply:
        written = apply_lr(config, result.suggestion, overrides=overrides, folder=result.plot.parent)
        typer.echo(f"wrote {written}; train with it: cnnzoo train -c {written}")


@app.command()
@guarded
def sweep(
    config: Path = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    grid: list[str] = typer.Option(
        ..., "--grid", "-g", help="A key and its values, e.g. --grid train.lr=0.01,0.003 (repeatable)."
    ),
    trials: int | None = typer.Option(None, min=1, help="Run this many random combinations, not all."),
    set_: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    unset: list[str] = UNSET_OPTION,
    data: str | None = DATA_OPTION,
    epochs: int | None = EPOCHS_OPTION,
    batch_size: int | None = BATCH_SIZE_OPTION,
    image_size: int | None = IMAGE_SIZE_OPTION,
    device: str | None = DEVICE_OPTION,
    runs: Path = typer.Option(Path("runs"), "--runs", help="Folder that holds run folders."),
    restart: bool = typer.Option(
        False, "--restart", help="Start the sweep over: forget its saved state (finished run folders stay)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-epoch lines."),
    folds: int | None = typer.Option(
        None, "--folds", help="Not taken: a sweep compares trials on one validation split (see the error)."
    ),
) -> None:
    """Train every combination of --grid values as its own run, then compare them (table and plot).

    Example:  cnnzoo sweep -c configs/quickstart.yaml --grid train.lr=0.01,0.003,0.001 \\
                  --grid model.layers.13.dense.out_features=32,64
    Runs go to runs/<name>-sweep/<N>/; run the same command again to finish an interrupted sweep.
    At the end runs/latest points at the best run. Over 1000 combinations need --trials K.
    """
    if folds is not None:
        raise UserError(
            f"--folds {folds}: a sweep compares its trials on one validation split; sweep first, then "
            f"cross-validate the config it picks with cnnzoo train -c CONFIG --folds {folds}"
        )
    shortcuts = Shortcuts(data=data, epochs=epochs, batch_size=batch_size, image_size=image_size, device=device)
    config, overrides = _checked(config, shortcuts.overrides(set_, unset))
    from ..training.run import TrainingInterrupted  # lazy: see cnnzoo.cli
    from ..training.sweep import markdown_table
    from ..training.sweep import sweep as run_sweep

    try:
        result = run_sweep(
            config, grid, trials=trials, overrides=overrides, runs_root=runs, quiet=quiet, restart=restart
        )
    except TrainingInterrupted as exc:
        typer.echo(f"\ncnnzoo: sweep interrupted in {exc.run_dir}; run the same command again to continue", err=True)
        raise typer.Exit(130) from None
    typer.echo(markdown_table(result.rows, list(result.rows[0])), nl=False)
    typer.echo(f"wrote {result.table_csv}, {result.table_md} and {result.plot}")
    typer.echo(f"{runs / 'latest'} -> the best run, {result.rows[0]['run']}")


@app.command()
@guarded
def tune(
    config: Path = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    trials: int = typer.Option(..., "--trials", "-t", min=1, help="Trials this worker runs (its share of the study)."),
    space: Path | None = typer.Option(
        None, "--space", help="A YAML file with the search space under tune: (default: the config's tune: section)."
    ),
    storage: str | None = typer.Option(
        None,
        "--storage",
        help="Where the study lives, so other workers can join: journal:///study.log (relative), "
        "journal:////abs/study.log, sqlite:///study.db, postgresql://... or mysql://... "
        "(default: <runs>/<name>-tune/study.log).",
    ),
    study: str | None = typer.Option(None, "--study", help="The study's name (default: the config's name)."),
    pruner: str = typer.Option("median", "--pruner", help="median, hyperband or none: stops poor trials early."),
    sampler: str = typer.Option("tpe", "--sampler", help="tpe (Optuna's default) or random."),
    seed: int | None = typer.Option(None, "--seed", help="Seeds the sampler (leave unset when workers share a study)."),
    set_: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    unset: list[str] = UNSET_OPTION,
    data: str | None = DATA_OPTION,
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs per trial (sets train.epochs)."),
    batch_size: int | None = BATCH_SIZE_OPTION,
    image_size: int | None = IMAGE_SIZE_OPTION,
    device: str | None = DEVICE_OPTION,
    runs: Path = typer.Option(Path("runs"), "--runs", help="Folder that holds run folders."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-epoch lines."),
) -> None:
    """Search hyperparameters with Optuna: TPE sampling, poor trials pruned early, a study many workers join.

    Example:  cnnzoo tune -c configs/quickstart.yaml --trials 20 --epochs 5
              (the space: a tune: section, e.g. tune: {train.lr: {log: [1.0e-4, 1.0e-2]},
               train.weight_decay: [0.0, 0.05], data.augment.trivialaugment: \\[true, false]})
    Workers:  run the same command with --storage journal:////shared/study.log (or a database URL)
              on as many machines as you like; each runs its --trials.
    Writes runs/<name>-tune/trials.csv, trials.md, trials.png and best.yaml; runs/latest -> the best trial's run.
    """
    shortcuts = Shortcuts(data=data, epochs=epochs, batch_size=batch_size, image_size=image_size, device=device)
    config, overrides = _checked(config, shortcuts.overrides(set_, unset))
    from ..training.run import TrainingInterrupted  # lazy: see cnnzoo.cli
    from ..training.sweep import markdown_table
    from ..training.tune import tune as run_tune

    try:
        result = run_tune(
            config,
            trials=trials,
            space=space,
            overrides=overrides,
            runs_root=runs,
            storage=storage,
            study=study,
            pruner=pruner,
            sampler=sampler,
            seed=seed,
            quiet=quiet,
        )
    except TrainingInterrupted as exc:
        typer.echo(
            f"\ncnnzoo: tune interrupted in {exc.run_dir}; its trial is marked failed and queued again: "
            f"run the same command to continue",
            err=True,
        )
        raise typer.Exit(130) from None
    typer.echo(markdown_table(result.rows, list(result.rows[0])) if result.rows else "no trials yet", nl=False)
    typer.echo(
        f"study {result.study!r}: {result.finished} finished trial(s); "
        f"wrote {result.table_csv}, {result.table_md} and {result.plot}"
    )
    if result.best_yaml is not None:
        typer.echo(f"best config: {result.best_yaml}   train it: cnnzoo train -c {result.best_yaml}")
