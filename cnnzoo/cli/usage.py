"""How cnnzoo's commands explain their own usage: help that reads as written, and Click's usage
errors (an unknown option, a missing argument, a bad value) as one line and exit code 2.

Typer's defaults print ``<bool>`` beside every flag, ``{image}`` and ``[[CHECKPOINT]]`` in the usage
line, and a Rich box for a usage error; :class:`CnnzooCommand` and :class:`CnnzooGroup` keep
Typer's help panels but show a flag without a type, arguments as Click writes them (``IMAGE``,
``[MODEL]``, ``[IMAGES]...``), and a docstring's prose as paragraphs the terminal wraps (a line that
starts with spaces, an example, stays a line of its own).

Floor 9 (cli): imports Typer (and the Click it uses) and errors.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import typer.core

from ..errors import terminal_safe

# Click's usage errors' base class, found from Typer's public BadParameter: recent Typer carries its
# own copy of Click (typer._click), older Typer used Click itself
ClickException: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


# a line of its own in help: indented, or a command after a short label ("Example:  cnnzoo ...")
_KEPT_LINE = re.compile(r"^\s|^([\w ]{0,16}:\s+)?(cnnzoo|curl|torchrun) ")


def reflowed(text: str | None) -> str | None:
    """``text`` (a docstring) with each paragraph's hand-broken prose lines joined into one, so that
    the terminal wraps it at its own width; example lines (indented, or a command after a short
    label) are kept as they are."""
    if not text:
        return text
    paragraphs = []
    for paragraph in text.strip().split("\n\n"):
        lines: list[str] = []
        for line in paragraph.splitlines():
            if lines and line.strip() and not _KEPT_LINE.match(line) and not _KEPT_LINE.match(lines[-1]):
                lines[-1] = f"{lines[-1].rstrip()} {line.strip()}"
            else:
                lines.append(line.rstrip())
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _untyped_flags(params: list[Any]) -> list[Any]:
    """``params`` with each on/off flag shown without a type (Typer writes ``<bool>``)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


def usage_piece(param: Any) -> list[str]:
    """An argument in the usage line as Click writes it: ``IMAGE``, ``[MODEL]``, ``[IMAGES]...``."""
    name = (param.metavar or param.name or "").strip("[]").upper()
    shown = name if param.required else f"[{name}]"
    return [shown + ("..." if param.nargs != 1 else "")]


class CnnzooCommand(typer.core.TyperCommand):
    """A command whose help reads as written (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = reflowed(self.help)

    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            pieces.extend(usage_piece(param) if isinstance(param, typer.core.TyperArgument) else [])
        return pieces


class CnnzooGroup(typer.core.TyperGroup):
    """A group (``cnnzoo``, ``cnnzoo data``) whose help reads as written, and which, as the command
    line's entry, turns Click's usage errors into cnnzoo's one line (exit code 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = reflowed(self.help)

    def get_params(self, ctx: Any) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))

    def main(self, args: Any = None, prog_name: str | None = None, *rest: Any, **kwargs: Any) -> Any:
        standalone = kwargs.pop("standalone_mode", True)
        try:
            returned = super().main(args, prog_name, *rest, standalone_mode=False, **kwargs)
        except ClickException as exc:
            if not standalone:
                raise
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group (``cnnzoo``, ``cnnzoo data``): its help
                if text := exc.ctx.get_help():  # Typer's rich help prints itself and returns nothing
                    typer.echo(text)
                sys.exit(exc.exit_code)
            fallback = command_path(self, sys.argv[1:] if args is None else list(args))
            typer.echo(f"cnnzoo: error: {usage_error_line(exc, fallback)}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            if not standalone:
                raise
            typer.echo("cnnzoo: aborted", err=True)
            sys.exit(1)
        if not standalone:
            return returned
        sys.exit(returned if isinstance(returned, int) else 0)


def command_path(group: Any, args: list[str]) -> str:
    """The command line's commands, ``cnnzoo data check``, read from ``args`` by name: the path a
    usage error names when Click's parser raised it without its context (an option missing its value)."""
    path, node = ["cnnzoo"], group
    for arg in args:
        commands = getattr(node, "commands", None)
        if arg.startswith("-") or not commands or arg not in commands:
            if not arg.startswith("-"):
                break
            continue
        path.append(arg)
        node = commands[arg]
    return " ".join(path)


def usage_error_line(exc: Any, fallback_path: str = "cnnzoo") -> str:
    """A usage error as one clause: ``export: no such option: -m (see cnnzoo export --help)``;
    ``fallback_path`` names the command when the error carries no context."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    message = message[:1].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else fallback_path
    command = f"{path.split(' ', 1)[1]}: " if " " in path else ""
    return terminal_safe(f"{command}{message} (see {path} --help)", one_line=True)
