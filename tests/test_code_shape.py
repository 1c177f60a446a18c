"""The shape of cnnzoo's functions: outside the CLI (whose Typer commands declare one parameter
per option), none is longer than 60 lines, from ``def`` to its last line, and none takes more than
5 positional parameters (past those, keyword-only: a swapped argument cannot pass silently)."""

from __future__ import annotations

import ast
from pathlib import Path

import cnnzoo

PACKAGE = Path(cnnzoo.__file__).resolve().parent
MAX_LINES = 60
MAX_POSITIONAL = 5


def functions() -> list[tuple[str, ast.FunctionDef, int]]:
    """(where, function, positional parameters) of every function outside cnnzoo/cli, methods
    counted without ``self``/``cls``."""
    found = []

    def visit(node: ast.AST, where: str, in_class: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                positional = [*child.args.posonlyargs, *child.args.args]
                if in_class and positional and positional[0].arg in ("self", "cls"):
                    positional = positional[1:]
                found.append((f"{where}:{child.lineno} {child.name}", child, len(positional)))
                visit(child, where, False)
            else:
                visit(child, where, isinstance(child, ast.ClassDef) or (in_class and not isinstance(child, ast.stmt)))

    for path in sorted(PACKAGE.rglob("*.py")):
        if "cli" not in path.relative_to(PACKAGE).parts:
            visit(ast.parse(path.read_text(encoding="utf-8")), str(path.relative_to(PACKAGE.parent)), False)
    return found


def test_no_function_outside_the_cli_is_longer_than_60_lines():
    long = [
        f"{where}: {f.end_lineno - f.lineno + 1} lines"
        for where, f, _ in functions()
        if f.end_lineno - f.lineno + 1 > MAX_LINES
    ]
    assert not long, "\n".join(long)


def test_no_function_outside_the_cli_takes_more_than_5_positional_parameters():
    wide = [f"{where}: {n} positional parameters" for where, _, n in functions() if n > MAX_POSITIONAL]
    assert not wide, "\n".join(wide)


def test_the_checks_read_every_module():
    where = {w.split(":")[0] for w, _, _ in functions()}
    assert {"cnnzoo/training/run.py", "cnnzoo/model/layers.py", "cnnzoo/inference/classifier.py"} <= where
    assert not any("/cli/" in w for w in where)
