"""The package's import graph, checked: floors, the torch-free modules, lazy imports that say why.

Every module of cnnzoo sits on a floor (:data:`FLOORS`, the longest matching name wins) and
imports only from its own floor or below, wherever the import statement stands (a function-level
import is a dependency too). The one cycle is :mod:`cnnzoo.model.blocks` <-> :mod:`cnnzoo.model.layers`:
a block traces its own inner layer lists with the same tracer, so blocks imports layers when a
block is built. A new module fails here until it is given a floor.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import cnnzoo

PACKAGE = Path(cnnzoo.__file__).resolve().parent

# the floors, lowest first; see the package docstrings for what each owns
FLOORS = {
    "cnnzoo.errors": 0,
    "cnnzoo.console": 0,
    "cnnzoo.files": 0,
    "cnnzoo.configs": 0,  # the shipped YAML files as package data: no code
    "cnnzoo.config": 1,
    "cnnzoo.plots": 1,
    "cnnzoo.pages": 1,
    "cnnzoo.checkpoint": 2,
    "cnnzoo.runs": 2,
    "cnnzoo.runtime": 3,
    "cnnzoo.model": 4,
    "cnnzoo.data": 5,
    "cnnzoo.inference": 5,
    "cnnzoo.evaluation": 6,
    "cnnzoo.training": 7,
    "cnnzoo.deploy": 8,
    "cnnzoo.explanation": 8,
    "cnnzoo.cli": 9,
    "cnnzoo.__main__": 10,
    "cnnzoo": 10,  # the package's lazy map: names resolved on first use, imported by nothing
}
DOCUMENTED_CYCLES = [{"cnnzoo.model.blocks", "cnnzoo.model.layers"}]

# modules that never import torch (nor anything that does) at import time
TORCH_FREE = {
    "cnnzoo",
    "cnnzoo.errors",
    "cnnzoo.console",
    "cnnzoo.files",
    "cnnzoo.configs",
    "cnnzoo.plots",
    "cnnzoo.checkpoint",
    "cnnzoo.runs",
    "cnnzoo.runtime",
    "cnnzoo.runtime.versions",
    "cnnzoo.model",
    "cnnzoo.model.entries",
    "cnnzoo.model.shapes",
    "cnnzoo.data",
    "cnnzoo.data.preprocess",
    "cnnzoo.data.manifest",
    "cnnzoo.data.folds",
    "cnnzoo.data.manifest_files",
    "cnnzoo.data.hf",
    "cnnzoo.data.shard_files",
    "cnnzoo.data.shard_output",
    "cnnzoo.data.shard_index",
    "cnnzoo.data.shard_labels",
    "cnnzoo.data.shard_writer",
    "cnnzoo.data.stream_skips",
    "cnnzoo.data.shard_urls",
    "cnnzoo.data.remote",
    "cnnzoo.data.remote_images",
    "cnnzoo.data.remote_output",
    "cnnzoo.data.resume_state",
    "cnnzoo.evaluation.multilabel",
    "cnnzoo.inference",
    "cnnzoo.inference.classifier",
    "cnnzoo.inference.onnx",
    "cnnzoo.inference.tflite",
    "cnnzoo.inference.openvino_model",
    "cnnzoo.inference.inputs",
    "cnnzoo.inference.unknown",
    "cnnzoo.evaluation",
    "cnnzoo.training",
    "cnnzoo.training.inputs",
    "cnnzoo.deploy",
    "cnnzoo.deploy.paired",
    "cnnzoo.deploy.serve",
    "cnnzoo.deploy.serve.app",
    "cnnzoo.deploy.serve.limits",
    "cnnzoo.deploy.serve.service",
    "cnnzoo.deploy.serve.uploads",
    "cnnzoo.explanation",
    "cnnzoo.pages",
    "cnnzoo.evaluation.analysis",
    "cnnzoo.evaluation.page",
    # evaluate of an ONNX or TFLite export: folders listed, scored and drawn without torch
    "cnnzoo.data.sources",
    "cnnzoo.data.sources.base",
    "cnnzoo.data.shard_export",
    "cnnzoo.data.sources.samples",
    "cnnzoo.data.sources.fold_split",
    "cnnzoo.data.sources.folder",
    "cnnzoo.data.sources.shapes_source",
    "cnnzoo.data.sources.manifest_source",
    "cnnzoo.data.sources.hf_source",
    "cnnzoo.data.sources.shard_source",
    "cnnzoo.data.sources.torchvision_sets",
    "cnnzoo.data.shapes",
    "cnnzoo.evaluation.evaluate",
    "cnnzoo.evaluation.unknown_eval",
    "cnnzoo.evaluation.scores",
    "cnnzoo.evaluation.splits",
    "cnnzoo.evaluation.streams",
}
TORCH_FREE_PREFIXES = ("cnnzoo.config", "cnnzoo.cli")
TORCH_PACKAGES = {"torch", "torchvision", "timm"}
# the torch-free modules of inference import only these (and one another)
INFERENCE_MAY_IMPORT = {"cnnzoo.data", "cnnzoo.data.preprocess", "cnnzoo.data.manifest"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor(module: str) -> int:
    name = module
    while name not in FLOORS:
        name = name.rpartition(".")[0]
    return FLOORS[name]


def is_torch_free(module: str) -> bool:
    return module in TORCH_FREE or module.startswith(TORCH_FREE_PREFIXES)


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(module: str) -> list[tuple[ast.stmt, bool, str]]:
    """(statement, at module level, imported name) for every import in ``module``'s file, outside
    ``if TYPE_CHECKING:`` blocks; cnnzoo's own names resolved to the module they name."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.extend((child, top, alias.name) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in child.names:  # `from pkg import module` names the module, else the package
                    candidate = f"{base}.{alias.name}"
                    found.append((child, top, candidate if candidate in MODULES else base))
            else:
                inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
                visit(child, inner if not isinstance(child, ast.ClassDef) else top)

    visit(ast.parse(path.read_text()), True)
    return found


def own(name: str) -> bool:
    return name == "cnnzoo" or name.startswith("cnnzoo.")


def edges(top_only: bool = False) -> set[tuple[str, str]]:
    """(importer, imported) between cnnzoo's modules; the package itself (``__version__``) is left out,
    as every module's package runs before it."""
    return {
        (module, name)
        for module in MODULES
        for _, top, name in imports(module)
        if own(name) and name not in (module, "cnnzoo") and (top or not top_only)
    }


def test_every_module_imports_only_its_floor_or_below():
    upward = [
        f"{a} (floor {floor(a)}) imports {b} (floor {floor(b)})" for a, b in sorted(edges()) if floor(b) > floor(a)
    ]
    assert not upward, "\n".join(upward)


def test_nothing_imports_the_cli_and_inference_never_imports_training():
    wrong = [
        (a, b)
        for a, b in edges()
        if (b.startswith("cnnzoo.cli") and not a.startswith(("cnnzoo.cli", "cnnzoo.__main__")))
        or (a.startswith("cnnzoo.inference") and b.startswith("cnnzoo.training"))
    ]
    assert not wrong


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in list(graph):
        if v not in index:
            connect(v)
    return found


def test_the_only_import_cycle_is_the_documented_one():
    graph: dict[str, set[str]] = {}
    for a, b in edges():
        graph.setdefault(a, set()).add(b)
    assert sorted(map(sorted, _cycles(graph))) == sorted(map(sorted, DOCUMENTED_CYCLES))


def test_torch_free_modules_import_only_torch_free_modules_at_import_time():
    wrong = []
    for module in filter(is_torch_free, MODULES):
        for _, top, name in imports(module):
            if top and (name.split(".")[0] in TORCH_PACKAGES or (own(name) and not is_torch_free(name))):
                wrong.append(f"{module} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_torch_free_inference_imports_only_the_lowest_floors_and_the_preprocessing():
    wrong = [
        (a, b)
        for a, b in edges(top_only=True)
        if a.startswith("cnnzoo.inference")
        and is_torch_free(a)
        and not b.startswith("cnnzoo.inference")
        and floor(b) > 2
        and b not in INFERENCE_MAY_IMPORT
    ]
    assert not wrong


def test_every_function_level_import_says_why_it_is_lazy():
    """An import inside a function hides a dependency, so the few that must stay (torch-free modules,
    a fast ``--help``, optional extras, the documented cycle) carry ``# lazy: <reason>`` on their line
    or on the comment or import lines directly above it."""
    unexplained = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        for statement, top, _ in imports(module):
            if top:
                continue
            row = statement.lineno - 1
            while row >= 0 and "# lazy:" not in lines[row]:
                above = lines[row - 1].strip() if row else ""
                if not above.startswith(("#", "import ", "from ")):
                    row = -1
                    break
                row -= 1
            if row < 0:
                unexplained.append(
                    f"{path.relative_to(PACKAGE.parent)}:{statement.lineno}: {lines[statement.lineno - 1].strip()}"
                )
    assert not unexplained, "\n".join(sorted(set(unexplained)))


@pytest.mark.parametrize(
    "module",
    [
        "cnnzoo",
        "cnnzoo.cli",
        "cnnzoo.config",
        "cnnzoo.checkpoint",
        "cnnzoo.runs",
        "cnnzoo.inference",
        "cnnzoo.inference.inputs",
        "cnnzoo.data.preprocess",
        "cnnzoo.deploy.serve",
        "cnnzoo.evaluation.evaluate",
    ],
)
def test_importing_a_torch_free_module_leaves_torch_out(module):
    code = (
        f"import sys, {module}\n"
        f"heavy = sorted(m for m in {sorted(TORCH_PACKAGES)!r} if m in sys.modules)\n"
        f"assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_public_names_stay_functions_once_every_module_is_imported():
    """``cnnzoo.explain(...)`` and friends are resolved by the package's lazy map; a submodule with
    the same name would replace one of them on the package as soon as it is imported."""
    code = (
        "import importlib, pkgutil, cnnzoo\n"
        "for m in pkgutil.walk_packages(cnnzoo.__path__, 'cnnzoo.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = [n for n in cnnzoo.__all__ if n != '__version__' and not callable(getattr(cnnzoo, n))]\n"
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_every_package_has_an_init_saying_what_it_owns_and_ships():
    """A folder of modules without ``__init__.py`` imports (a namespace package) but is left out of
    the wheel (packages.find); each ``__init__`` says what the package owns and what it may import."""
    from setuptools import find_packages

    folders = {p.parent for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(f.relative_to(PACKAGE.parent)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, missing
    shipped = set(find_packages(str(PACKAGE.parent), include=["cnnzoo*"]))
    assert shipped == {module_name(f / "__init__.py") for f in folders}
    for folder in folders - {PACKAGE}:
        docstring = ast.get_docstring(ast.parse((folder / "__init__.py").read_text())) or ""
        assert "floor" in docstring.lower(), f"{folder.name}/__init__.py: say what the package owns and its floor"
