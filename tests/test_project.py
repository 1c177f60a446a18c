"""The project as a fresh clone meets it: tests that need ../shared, the install lines, versions."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import PROJECT_ROOT

TESTS = PROJECT_ROOT / "tests"


def _marked_needs_shared(node: ast.FunctionDef) -> bool:
    return any("needs_shared" in ast.unparse(d) for d in node.decorator_list)


def test_tests_reach_shared_only_through_conftest_and_carry_the_marker():
    # .ci/run runs `pytest -m needs_shared` from a copy without ../shared: that pass only sees
    # the tests that carry the marker, so no test may reach ../shared another way
    literal = re.compile(r"""["'](\.\./)*shared["'/]""")
    offenders = []
    for path in sorted(TESTS.glob("*.py")):
        if path.name == "conftest.py":
            continue
        text = path.read_text(encoding="utf-8")
        offenders += [f"{path.name}:{n}: names ../shared itself" for n, line in enumerate(text.splitlines(), 1)
                      if literal.search(line)]
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and not _marked_needs_shared(node):
                calls = {c.func.id for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
                if "shared_path" in calls:
                    offenders.append(f"{path.name}:{node.lineno}: {node.name} calls shared_path without "
                                     f"@pytest.mark.needs_shared")
    assert not offenders, "\n".join(offenders)


def test_ci_runs_the_shared_tests_again_without_shared():
    ci = (PROJECT_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "-m needs_shared" in ci and "mktemp -d" in ci
