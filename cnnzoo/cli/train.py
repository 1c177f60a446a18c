"""``cnnzoo train``, and the shortcuts every command that trains takes (train, lr-find, sweep)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import typer

from ..config import Config, load_config
from ..errors import UserError
from .app import CONFIG_HELP, SET_HELP, _rank0, app, guarded

# The shortcuts every command that trains (train, lr-find, sweep) takes, each one config key.
UNSET_OPTION = typer.Option([], "--unset", help="Remove a config key, back to its default (repeatable).")
DATA_OPTION = typer.Option(
    None,
    "--data",
    help="Your data (sets data.root): a folder of class folders (or with train/ and validation/), a manifest "
    "(.csv, .tsv, .jsonl, .parquet, or a folder holding one beside images/), WebDataset shards or a Hugging "
    "Face dataset folder.",
)
EPOCHS_OPTION = typer.Option(None, "--epochs", min=1, help="Sets train.epochs.")
BATCH_SIZE_OPTION = typer.Option(None, "--batch-size", min=1, help="Sets train.batch_size.")
IMAGE_SIZE_OPTION = typer.Option(None, "--image-size", min=1, help="Sets data.image_size.")
DEVICE_OPTION = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps (sets train.device).")


@dataclass(kw_only=True)
class Shortcuts:
    """What the shortcut options of a training command (train, lr-find, sweep) were given."""

    data: str | None = None
    name: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    image_size: int | None = None
    device: str | None = None

    def overrides(self, set_: list[str], unset: list[str]) -> list[str]:
        """``--set`` items, then the shortcuts as ``key=value``, then ``--unset`` items as ``key!``
        (what :func:`cnnzoo.config.apply_override` removes)."""
        values = {
            "data.root": json.dumps(self.data) if self.data else None,
            "name": json.dumps(self.name) if self.name else None,
            "train.epochs": self.epochs,
            "train.batch_size": self.batch_size,
            "data.image_size": self.image_size,
            "train.device": json.dumps(self.device) if self.device else None,
        }
        return [*set_, *(f"{key}={value}" for key, value in values.items() if value is not None)] + [
            f"{key}!" for key in unset
        ]


def forwarded_argv(argv: list[str]) -> list[str]:
    """The command line as the user typed it (``sys.argv[1:]``) without ``--nproc N``: what each
    process of a ``--nproc`` run is started with, so every option reaches the processes as given."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--nproc="):
            skip = False
            continue
        skip = arg == "--nproc"
        if not skip:
            kept.append(arg)
    return kept


def _chosen(model: str | None, data: str | None, epochs: int | None) -> dict:
    """The config mapping ``train`` runs when no ``--config`` is given (``--data`` and maybe
    ``--model``), after the one line that says which and why."""
    if data is None:
        raise UserError(
            "give --data DIR (your images: class folders, or a manifest such as images.csv) to train "
            "a default model, --config FILE (or a shipped name: cnnzoo configs), or --resume runs/.../last.pt"
        )
    from ..training.defaults import default_choice, model_choice  # lazy: the check imports torch

    choice = default_choice(data, epochs) if model is None else model_choice(model, data)
    if _rank0():
        typer.echo(f"cnnzoo: {choice.reason}", err=True)
    return choice.raw


def require_data(cfg: Config, config: Path | None) -> None:
    """A folder-read config needs its data: without ``data.root`` (and without ``--data``), one line
    asking for ``--data`` before anything heavy loads."""
    if cfg.data.source == "folder" and not cfg.data.root:
        raise UserError(
            f"{config or 'the config'}: data.root is not set; give your data with --data DIR "
            f"(class folders, train/ and validation/ splits, or a manifest such as images.csv)"
        )


def _refuse_folds(folds: int, *, nproc: int) -> None:
    """What ``--folds`` refuses before torch is imported (``cnnzoo.train`` refuses ``--resume`` and
    torchrun's processes itself)."""
    if folds < 2:
        raise UserError(f"--folds {folds}: k-fold needs at least 2 folds (each image is held out once); give 2 or more")
    if nproc > 1:
        raise UserError(
            "--folds: k-fold trains one process at a time; drop --nproc/torchrun, or train each fold under "
            "torchrun with --set data.folds=K --set data.fold=N"
        )


@app.command()
@guarded
def train(
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    unset: list[str] = UNSET_OPTION,
    data: str | None = DATA_OPTION,
    name: str | None = typer.Option(
        None, "--name", "-n", help="Run name: the run folder is <runs>/<name>/<N> (sets name)."
    ),
    epochs: int | None = EPOCHS_OPTION,
    batch_size: int | None = BATCH_SIZE_OPTION,
    image_size: int | None = IMAGE_SIZE_OPTION,
    device: str | None = DEVICE_OPTION,
    runs: Path = typer.Option(
        Path("runs"), "--runs", "--out", help="Folder that holds run folders (<runs>/<name>/<N>, <runs>/latest)."
    ),
    resume: Path | None = typer.Option(None, help="Continue a run from its last.pt."),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Without --config: a backbone to fine-tune (a torchvision model such as resnet18, or "
        "timm/NAME) or a shipped config's name; unset, cnnzoo picks (the line it prints says why).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or per-epoch lines."),
    nproc: int = typer.Option(
        1,
        "--nproc",
        min=1,
        help="Processes on this machine, one per GPU (or sharing the CPU cores), "
        "trained together with DDP; runs torchrun for you.",
    ),
    folds: int | None = typer.Option(
        None,
        "--folds",
        help="k-fold cross-validation: K stratified, seeded folds of all labelled images (training and "
        "validation pooled), one run each in RUN/fold-1..K, cv.json (mean, std, per fold) and oof.csv "
        "(out-of-fold probabilities), then a model trained on all of them in RUN.",
    ),
    no_final: bool = typer.Option(
        False, "--no-final", help="With --folds: skip the final model trained on all the images."
    ),
) -> None:
    """Train a model from a YAML config, or on --data alone; writes a run folder (config, metrics, checkpoints, plots).

    Example:  cnnzoo train --config configs/quickstart.yaml --epochs 5
    Own data: cnnzoo train --data ~/photos    (no config: fine-tunes a pretrained model, else from scratch)
    A recipe: cnnzoo train -c clothing_recipe --data ~/photos --image-size 96 --name photos
    Resume:   cnnzoo train --resume runs/quickstart/1/last.pt
    k-fold:   cnnzoo train -c clothing_transfer --folds 5
    4 GPUs:   cnnzoo train -c clothing --data ~/photos --nproc 4
              (the same as: torchrun --nproc-per-node 4 -m cnnzoo train -c clothing --data ~/photos)
    """
    overrides = Shortcuts(data=data, name=name, epochs=epochs, batch_size=batch_size, image_size=image_size).overrides(
        set_, unset
    )
    if model is not None and (config is not None or resume is not None):
        raise UserError(f"--model: give --model NAME or {'--config' if config else '--resume'}, not both")
    if no_final and folds is None:
        raise UserError("--no-final: goes with --folds K (it skips the model trained on all the images)")
    if folds is not None:
        _refuse_folds(folds, nproc=nproc)
    source = config
    if resume is None:  # config errors come back before torch is imported
        source = load_config(_chosen(model, data, epochs) if config is None else config, overrides)
        require_data(source, config)
        overrides = []
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from ..runtime.distributed import launch  # lazy: see cnnzoo.cli

        code = launch(nproc, forwarded_argv(sys.argv[1:]))
        if code:
            raise typer.Exit(code)
        return
    from ..training.run import TrainingInterrupted  # lazy: see cnnzoo.cli
    from ..training.run import train as run_training

    try:
        run_dir = run_training(
            source, overrides, device=device, out=runs, quiet=quiet, resume=resume, folds=folds, final=not no_final
        )
    except TrainingInterrupted as exc:
        if _rank0():
            typer.echo(f"\ncnnzoo: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    if quiet and _rank0():
        typer.echo(str(run_dir))
