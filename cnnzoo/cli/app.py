"""The Typer app every command registers on, the error contract, and :func:`main`.

Every command imports its heavy parts (torch, the engine) when it runs (why: :mod:`cnnzoo.cli`).
A :class:`cnnzoo.errors.UserError` becomes one line on stderr and exit code 2; ``--debug`` shows
the traceback instead. Click's usage errors (an unknown option, a missing argument, a bad value)
come out the same way (:class:`CnnzooGroup`), and help reads as written (:mod:`.usage`).
Every command that reads a model takes it as ``-m/--model`` (``--checkpoint`` an alias):
:func:`model_option`, :func:`one_model`.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from .. import __version__
from ..console import console
from ..errors import UserError, short_reason, terminal_safe
from ..runtime.versions import describe_failure
from .usage import CnnzooCommand, CnnzooGroup


class CnnzooTyper(typer.Typer):
    """A Typer app whose commands and groups are cnnzoo's: help as written, usage errors in one line."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=CnnzooGroup, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        return super().command(*args, cls=kwargs.pop("cls", CnnzooCommand), **kwargs)


app = CnnzooTyper(
    name="cnnzoo",
    help="Train, evaluate and predict with convolutional image classifiers described in YAML.\n\n"
    "Start with:  cnnzoo train --config configs/quickstart.yaml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


_state = {"debug": False}
CONFIG_HELP = "YAML config file, or a shipped config's name (cnnzoo configs lists them)."


TRUST_TORCHSCRIPT_HELP = (
    "Open a TorchScript file: it holds code that runs when loaded, so only one you "
    "made (cnnzoo export) or otherwise trust. Without it, TorchScript is refused unopened."
)


MODEL_NAMES = ("--model", "-m", "--checkpoint")  # one flag in every command that reads a model


def model_option(help: str) -> Any:
    """``-m/--model MODEL`` (``--checkpoint`` an alias): the flag every model-reading command takes."""
    return typer.Option(None, *MODEL_NAMES, metavar="MODEL", help=help)


def one_model(positional: Path | None, option: Path | None) -> Path | None:
    """The model a command whose subject is the model was given, positionally or with ``-m``."""
    if positional is not None and option is not None and positional != option:
        raise UserError(f"two models given ({positional} and --model {option}); give one")
    return option if option is not None else positional


SET_HELP = (
    "Override a config key, e.g. --set train.epochs=5 or "
    "--set model.layers.0.Conv2d.out_channels=64 (value read as YAML; repeatable)."
)


def _rank0() -> bool:
    """In a torchrun job every process runs the command; only rank 0 reports."""
    return os.environ.get("RANK", "0") == "0"


def _fail(message: str, code: int = 2) -> None:
    if _rank0():
        typer.echo(f"cnnzoo: error: {terminal_safe(message.strip(), one_line=True)}", err=True)
    raise typer.Exit(code)


def guarded(command: Callable[..., None]) -> Callable[..., None]:
    """A command whose :class:`UserError` becomes one line and exit 2 (the traceback with --debug),
    and whose Ctrl-C is one line and exit 130. Typer reads the command's own signature (``wraps``)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except UserError as exc:
            if _state["debug"]:
                raise
            _fail(str(exc))
        except KeyboardInterrupt:
            if _rank0():
                typer.echo("cnnzoo: interrupted", err=True)
            raise typer.Exit(130) from None

    return run


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cnnzoo {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    _state["debug"] = console.debug = debug


def _is_collective_failure(exc: Exception) -> bool:
    """A DDP collective that failed because another process died or stopped answering."""
    dist_error = getattr(sys.modules.get("torch.distributed"), "DistError", ())
    text = str(exc)
    return isinstance(exc, dist_error) or any(
        sign in text
        for sign in (
            "Connection closed by peer",
            "Connection reset by peer",
            "Broken pipe",
            "Timed out",
            "timed out",
            "NCCL",
        )
    )


def main() -> None:
    if "--debug" in sys.argv[1:]:  # accepted anywhere on the line, not only before the command
        sys.argv.remove("--debug")
        _state["debug"] = console.debug = True
        sys.argv.insert(1, "--debug")
    try:
        app()
    except Exception as exc:  # a failure cnnzoo did not foresee: still one line unless --debug
        if _state["debug"]:
            raise
        if isinstance(exc, ModuleNotFoundError) and exc.name in ("torch", "torchvision"):
            # a deployment installed with --no-deps: exports run without torch, the rest needs it
            typer.echo(
                f"cnnzoo: error: this command needs {exc.name} (pip install torch torchvision); "
                f"without torch cnnzoo predicts and serves .onnx exports only",
                err=True,
            )
            sys.exit(2)

        if (mismatch := describe_failure(exc)) is not None:  # "operator torchvision::nms does not exist"
            typer.echo(f"cnnzoo: error: {mismatch}", err=True)
            sys.exit(2)
        if "WORLD_SIZE" in os.environ and _is_collective_failure(exc):
            typer.echo(
                f"cnnzoo: error: process {os.environ.get('RANK', '?')}: another process of this run "
                f"stopped answering ({short_reason(exc)})",
                err=True,
            )
            sys.exit(1)
        reason = terminal_safe(f"{type(exc).__name__}: {exc}")
        typer.echo(f"cnnzoo: internal error: {reason} (run with --debug for the traceback)", err=True)
        sys.exit(1)
