"""The config reference: every key's dotted name, type, default, range and documentation, read
from the schema itself (a field's documentation is the string literal right after it, as Sphinx
reads attribute docstrings), so the docs site's key table cannot drift from what the loader
accepts. Imports only the schema and the standard library."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

from .checks import Bounds
from .schema import Config


@dataclass(frozen=True)
class KeyDoc:
    """One config key as the reference shows it."""

    key: str  # dotted, e.g. "train.lr"
    type: str  # in words, e.g. "sgd or adam or adamw"
    default: str  # as YAML would write it; "" for a section
    range: str  # the checked range in words; "" when only the type is checked
    doc: str  # the field's attribute docstring, "" when it has none
    section: bool  # a mapping of further keys (data.augment)


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> the string literal right after the field in ``cls``'s source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for statement, following in zip(body, body[1:]):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[statement.target.id] = inspect.cleandoc(following.value.value)
    return docs


def config_keys(cls: type = Config, prefix: str = "") -> list[KeyDoc]:
    """Every key a config file may hold, sections before the keys inside them, in schema order."""
    hints = typing.get_type_hints(cls)
    docs = attribute_docs(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        key = f"{prefix}{f.name}"
        hint = hints[f.name]
        bounds = f.metadata.get("bounds")
        if dataclasses.is_dataclass(hint):
            keys.append(KeyDoc(key, "section", "", "", docs.get(f.name, ""), True))
            keys.extend(config_keys(hint, f"{key}."))
            continue
        keys.append(
            KeyDoc(
                key,
                " or ".join(f.metadata["choices"]) if "choices" in f.metadata else type_words(hint),
                _default_words(f),
                bounds.describe(integer=hint is int) if isinstance(bounds, Bounds) else "",
                docs.get(f.name, ""),
                False,
            )
        )
    return keys


def type_words(hint: Any) -> str:
    """A type hint as a config writer reads it: ``Optional[int]`` -> ``int or null``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return " or ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(type_words(a) for a in args)
    if hint is type(None):
        return "null"
    if origin is list:
        return f"list of {type_words(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {type_words(args[0])} to {type_words(args[1])}"
    if hint is Any:
        return "any"
    return getattr(hint, "__name__", str(hint))


def _default_words(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def markdown_table(keys: list[KeyDoc]) -> str:
    """The reference as one Markdown table per section, top-level keys first (the docs site's
    Config keys page)."""
    intros = {entry.key: entry.doc for entry in keys if entry.section}
    tables: dict[str, list[str]] = {"": []}
    for entry in keys:
        if entry.section:
            tables.setdefault(entry.key, [])
            continue
        doc = entry.doc.replace("\n", " ")
        if entry.range:
            doc += f" Range: {entry.range}."
        cells = [f"`{entry.key}`", entry.type, f"`{entry.default}`" if entry.default else "", doc]
        section = entry.key.rpartition(".")[0]
        tables.setdefault(section, []).append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    parts = []
    for section, rows in tables.items():
        parts += [f"## `{section}`" if section else "## Top level", ""]
        if intros.get(section):
            parts += [intros[section].replace("\n", " "), ""]
        parts += ["| key | type | default | what it does |", "|---|---|---|---|", *rows, ""]
    return "\n".join(parts)
