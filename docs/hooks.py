"""MkDocs hook: the reference pages that are generated from the code at build time.

* ``reference/cli.md``: the marker ``<!-- cnnzoo:cli -->`` becomes every command's usage, help
  text, arguments and options, read from the Typer app (``typer.main.get_command``) and formatted
  by click's own help records, so the page says what ``cnnzoo COMMAND --help`` says.
* ``reference/python-api.md``: the marker ``<!-- cnnzoo:python-api -->`` becomes the signature and
  docstring of every public name of the ``cnnzoo`` package, and the methods of the model that
  ``cnnzoo.load`` returns.
* ``reference/config.md``: the marker ``<!-- cnnzoo:config -->`` becomes every config key's type,
  default, range and documentation (:mod:`cnnzoo.config.reference`, read from the schema).

A page that lost its marker fails the build, so a generated section cannot silently vanish.
"""

from __future__ import annotations

import html
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

CLI_MARKER = "<!-- cnnzoo:cli -->"
API_MARKER = "<!-- cnnzoo:python-api -->"
CONFIG_MARKER = "<!-- cnnzoo:config -->"
# what a model returned by cnnzoo.load() offers its users (the rest of its methods serve those)
MODEL_METHODS = ("predict", "predict_manifest", "csv", "probabilities", "preprocess")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _document_this_tree() -> None:
    """Import cnnzoo from the tree being documented, installed or not (as the tests do)."""
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    generators: dict[str, tuple[str, Callable[[], str]]] = {
        "reference/cli.md": (CLI_MARKER, cli_reference),
        "reference/python-api.md": (API_MARKER, python_api_reference),
        "reference/config.md": (CONFIG_MARKER, config_reference),
    }
    if page.file.src_uri not in generators:
        return markdown
    marker, generate = generators[page.file.src_uri]
    if marker not in markdown:
        raise ValueError(
            f"docs/{page.file.src_uri}: the marker {marker} is missing; the generated reference has nowhere to go"
        )
    return markdown.replace(marker, generate())


# --------------------------------------------------------------------------- the command line


def _markdown_text(text: str) -> str:
    """Plain help text as Markdown that shows it verbatim: no HTML tags, emphasis or table cells."""
    text = html.escape(text, quote=False)
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", text)


def _command_section(command: Any, name: str, parent_ctx: Any) -> str:
    ctx = command.context_class(command, info_name=name, parent=parent_ctx)
    summary, _, details = inspect.cleandoc(command.help or "").partition("\n\n")
    lines = [
        f"## cnnzoo {name} {{#{name.replace(' ', '-')}}}",
        "",
        _markdown_text(" ".join(summary.split())),
        "",
        "```text",
        command.get_usage(ctx),
    ]
    if details:
        lines += ["", details]
    lines += ["```", "", "| argument or option | what it does |", "|---|---|"]
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is not None:
            names, help_text = record
            lines.append(f"| `{names}` | {_markdown_text(' '.join(help_text.split()))} |")
    return "\n".join(lines) + "\n"


def cli_reference() -> str:
    """Every command of ``cnnzoo``: a table of them, then each one's usage and options."""
    _document_this_tree()
    import typer

    from cnnzoo.cli import app

    group = typer.main.get_command(app)
    root_ctx = group.context_class(group, info_name="cnnzoo")
    names = group.list_commands(root_ctx)
    commands = {name: group.get_command(root_ctx, name) for name in names}
    table = ["| command | what it does |", "|---|---|"]
    table += [
        f"| [`cnnzoo {name}`](#{name}) | {_markdown_text(cmd.get_short_help_str(limit=200))} |"
        for name, cmd in commands.items()
    ]
    options = ["| option | what it does |", "|---|---|"]
    for param in group.get_params(root_ctx):
        record = param.get_help_record(root_ctx)
        if record is not None:
            options.append(f"| `{record[0]}` | {_markdown_text(record[1])} |")
    parts = [
        "```text",
        group.get_usage(root_ctx),
        "```",
        "",
        *table,
        "",
        "Options of `cnnzoo` itself (before the command; `--debug` is accepted anywhere on the line):",
        "",
        *options,
        "",
    ]
    for name, cmd in commands.items():
        parts.append(_command_section(cmd, name, root_ctx))
        if hasattr(cmd, "list_commands"):  # a group (cnnzoo data): each of its commands too
            ctx = cmd.context_class(cmd, info_name=name, parent=root_ctx)
            parts += [
                _command_section(cmd.get_command(ctx, sub), f"{name} {sub}", root_ctx) for sub in cmd.list_commands(ctx)
            ]
    return "\n".join(parts)


# --------------------------------------------------------------------------- the Python API


def _rst_to_markdown(doc: str) -> str:
    """The docstrings' reStructuredText roles and literals as Markdown code spans."""
    doc = re.sub(r":(?:func|class|mod|meth|attr|data|exc):`~?([^`]+)`", r"`\1`", doc)
    doc = re.sub(r"``(.+?)``", r"`\1`", doc, flags=re.DOTALL)
    return doc.replace("::\n", ":\n")


class _Written(str):
    """An annotation kept as source text (``from __future__ import annotations``), shown unquoted."""

    def __repr__(self) -> str:
        return str(self)


def _parameter_lines(signature: inspect.Signature) -> list[str]:
    """The parameters as ``str(signature)`` writes them, its ``/`` and ``*`` markers included."""
    params = list(signature.parameters.values())
    kinds = [param.kind for param in params]
    lines = []
    for index, param in enumerate(params):
        if param.kind is param.KEYWORD_ONLY and param.VAR_POSITIONAL not in kinds[:index] and "*" not in lines:
            lines.append("*")
        lines.append(str(param))
        if param.kind is param.POSITIONAL_ONLY and param.POSITIONAL_ONLY not in kinds[index + 1 :]:
            lines.append("/")
    return lines


def _signature(name: str, obj: Any, *, method: bool = False) -> str:
    """``name(a: T = default, *, b: U) -> R`` with the annotations as written in the source, one
    parameter a line when that is too long for one line."""
    signature = inspect.signature(obj)

    def written(annotation: Any) -> Any:
        return _Written(annotation) if isinstance(annotation, str) else annotation

    params = [param.replace(annotation=written(param.annotation)) for param in signature.parameters.values()]
    signature = signature.replace(
        parameters=params[1:] if method else params, return_annotation=written(signature.return_annotation)
    )
    one_line = f"{name}{signature}"
    if len(one_line) <= 88:
        return one_line
    returned = signature.return_annotation
    arrow = "" if returned is inspect.Signature.empty else f" -> {inspect.formatannotation(returned)}"
    return f"{name}(\n" + "".join(f"    {line},\n" for line in _parameter_lines(signature)) + f"){arrow}"


def _entry(heading: str, anchor: str, call: str, obj: Any) -> str:
    doc = inspect.getdoc(obj)
    if not doc:
        raise ValueError(f"{heading} has no docstring: the Python API page would say nothing about it")
    return "\n".join([f"### {heading} {{#{anchor}}}", "", "```python", call, "```", "", _rst_to_markdown(doc), ""])


def _loaded_model_class(load: Callable) -> type:
    """The class ``cnnzoo.load`` says it returns, looked up in its own module."""
    returned = inspect.signature(load).return_annotation
    if isinstance(returned, str):
        returned = getattr(sys.modules[load.__module__], returned)
    return returned


def python_api_reference() -> str:
    _document_this_tree()
    import cnnzoo

    parts = ["## Functions", ""]
    names = [name for name in cnnzoo.__all__ if not name.startswith("_")]
    for name in names:
        obj = getattr(cnnzoo, name)
        if inspect.isclass(obj):
            parts.append(_entry(f"cnnzoo.{name}", name, f"class cnnzoo.{name}({obj.__base__.__name__})", obj))
        else:
            parts.append(_entry(f"cnnzoo.{name}", name, _signature(f"cnnzoo.{name}", obj), obj))
    model_class = _loaded_model_class(cnnzoo.load)
    parts += [
        "## The model that `cnnzoo.load` returns",
        "",
        "A checkpoint, an ONNX export and a trusted TorchScript file all load as the same kind of "
        "object, whose methods read images the way training did:",
        "",
    ]
    for method in MODEL_METHODS:
        function = getattr(model_class, method)  # a renamed method fails the build rather than vanish
        call = _signature(f"model.{method}", function, method=True)
        parts.append(_entry(f"model.{method}", f"model-{method}", call, function))
    return "\n".join(parts)


# --------------------------------------------------------------------------- the config keys


def config_reference() -> str:
    _document_this_tree()
    from cnnzoo.config.reference import config_keys, markdown_table

    return markdown_table(config_keys())
