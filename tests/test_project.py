"""The project as a fresh clone meets it: tests that need ../shared, the install lines, versions."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from support.runs import tiny_config
from support.shared import PROJECT_ROOT

TESTS = PROJECT_ROOT / "tests"


def _marked_needs_shared(node: ast.FunctionDef) -> bool:
    return any("needs_shared" in ast.unparse(d) for d in node.decorator_list)


def test_tests_reach_shared_only_through_support_and_carry_the_marker():
    # .ci/run runs `pytest -m needs_shared` from a copy without ../shared: that pass only sees
    # the tests that carry the marker, so no test may reach ../shared another way than through
    # support/shared.py (shared_path, and conftest's clothing_root fixture built on it)
    literal = re.compile(r"""["'](\.\./)*shared["'/]""")
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path == TESTS / "support" / "shared.py":
            continue
        text = path.read_text(encoding="utf-8")
        offenders += [
            f"{path.relative_to(TESTS)}:{n}: names ../shared itself"
            for n, line in enumerate(text.splitlines(), 1)
            if literal.search(line)
        ]
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and not _marked_needs_shared(node):
                calls = {c.func.id for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
                if "shared_path" in calls:
                    offenders.append(
                        f"{path.name}:{node.lineno}: {node.name} calls shared_path without @pytest.mark.needs_shared"
                    )
    assert not offenders, "\n".join(offenders)


def test_ci_runs_the_shared_tests_again_without_shared():
    ci = (PROJECT_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "-m needs_shared" in ci and "mktemp -d" in ci


# --------------------------------------------------------------------------- torch and torchvision


def test_pair_rules_on_the_versions_pip_installs():
    from cnnzoo.runtime.versions import pair_problem

    # what a CPU wheel index for torch next to PyPI's torchvision gave (issue 22): operator torchvision::nms
    line = pair_problem("2.13.0+cpu", None, "0.28.0+cu130")
    assert line == (
        "torch 2.13.0+cpu and torchvision 0.28.0+cu130 do not work together (that torchvision is a "
        "CUDA build (cu130), that torch a CPU-only build); install the torchvision built for this "
        "torch: pip install --force-reinstall --no-deps 'torchvision==0.28.*' "
        "--index-url https://download.pytorch.org/whl/cpu"
    )
    assert "(that torchvision is for torch 2.14)" in pair_problem("2.13.0+cpu", None, "0.29.1+cpu")
    assert "built for CUDA 12, that torch for CUDA 13.0" in pair_problem("2.14.1+cu130", "13.0", "0.29.1+cu128")
    assert "--index-url https://download.pytorch.org/whl/cu130" in pair_problem("2.14.1+cu130", "13.0", "0.28.0")
    for good in [
        ("2.14.1+cu130", "13.0", "0.29.1+cu130"),
        ("2.14.1", None, "0.29.1"),  # macOS: no tags
        ("2.14.1+cpu", None, "0.29.1+cpu"),
        ("2.14.1+cu130", "13.0", "0.29.1+cpu"),
        ("2.15.0.dev20270101+cpu", None, "0.30.0.dev20270101+cpu"),
        ("3.0.0", None, "1.0.0"),
    ]:
        assert pair_problem(*good) is None, good


def _fake_torchvision(folder: Path, version: str, init: str) -> Path:
    """A torchvision package folder that says ``version`` and runs ``init`` when imported."""
    package = folder / "torchvision"
    package.mkdir(parents=True)
    (package / "version.py").write_text(f"__version__ = '{version}'\ngit_version = 'x'\n")
    (package / "__init__.py").write_text(init)
    return folder


def _cnnzoo_with(site: Path, args: list, cwd: Path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(PROJECT_ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "cnnzoo", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_a_mismatched_torchvision_is_named_before_it_is_imported(tmp_path):
    from cnnzoo.runtime.versions import installed

    torch_version, cuda, _ = installed()
    minor = int(torch_version.split(".")[1])
    older = f"0.{minor + 14}.0+cu130"  # the torchvision of the torch release before this one
    site = _fake_torchvision(tmp_path / "site", older, "raise SystemExit('imported torchvision')\n")
    result = _cnnzoo_with(site, ["summary", "-c", PROJECT_ROOT / "configs" / "lenet5.yaml"], tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"cnnzoo: error: torch {torch_version} and torchvision {older} do not work together (that torchvision "
        f"is for torch 2.{minor - 1}); install the torchvision built for this torch: pip install --force-reinstall "
        f"--no-deps 'torchvision==0.{minor + 15}.*' --index-url "
        f"https://download.pytorch.org/whl/{'cu' + cuda.replace('.', '') if cuda else 'cpu'}"
    )


def test_torchvision_that_cannot_load_its_operators_is_one_line(image_root, tmp_path):
    import yaml

    from cnnzoo.runtime.versions import installed

    torch_version, _, vision_version = installed()
    # what torchvision's own import raises when its compiled operators do not fit torch
    site = _fake_torchvision(
        tmp_path / "site", vision_version, "raise RuntimeError('operator torchvision::nms does not exist')\n"
    )
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(image_root)))
    result = _cnnzoo_with(site, ["train", "-c", config, "--runs", tmp_path / "runs"], tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    line = result.stderr.strip()
    assert (
        line.startswith(
            f"cnnzoo: error: torchvision {vision_version} cannot load its operators with torch {torch_version}"
        )
        and "pip install --force-reinstall --no-deps" in line
    )
    assert len(line.splitlines()) == 1


# --------------------------------------------------------------------------- README's set-up lines


def _setup_block(path: Path) -> list[tuple[str, str]]:
    """The first ```bash block of a page: (what the comment above it names, the command) per command."""
    text = path.read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()
    return [(block[i - 1].lstrip("# ").split(":")[0], line) for i, line in enumerate(block) if not line.startswith("#")]


def _extras_closure(line: str) -> set[str]:
    """The distributions an install line's ``.[a,b]`` brings in: the extras (nested ones opened) and
    everything they require, as installed here."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    optional = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    todo, names = re.search(r"'\.\[([\w,]+)\]'", line).group(1).split(","), []
    while todo:
        for requirement in map(Requirement, optional[todo.pop()]):
            if requirement.name == "cnnzoo":
                todo += sorted(requirement.extras)
            else:
                names.append(requirement.name)
    return _closure(names)


def test_readme_has_three_set_up_lines_and_ci_runs_its_test_line():
    lines = _setup_block(PROJECT_ROOT / "README.md")
    assert [what for what, _ in lines] == ["install", "main job", "tests"], lines
    commands = dict(lines)
    assert re.fullmatch(r"pip install -e '\.\[test\]' -c \.ci/constraints\.txt && pytest -q", commands["tests"]), (
        commands["tests"]
    )
    assert commands["main job"].startswith("cnnzoo train ")
    ci = (PROJECT_ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert commands["tests"] in ci, ".ci/run must run README's test line as it is written"
    assert "pip install -e '.[test]'" not in commands["install"]
    # the home page shows the same three lines, and the install page the same two install lines
    assert _setup_block(PROJECT_ROOT / "docs" / "index.md") == lines
    block = re.search(r"```bash\n(.*?)```", (PROJECT_ROOT / "docs" / "index.md").read_text(encoding="utf-8"), re.S)
    too_wide = [line for line in block.group(1).splitlines() if len(line) > 78]
    assert not too_wide, f"the home page shows 78 characters of a code line beside the navigation: {too_wide}"
    install_page = (PROJECT_ROOT / "docs" / "getting-started" / "install.md").read_text(encoding="utf-8")
    assert commands["install"] in install_page and commands["tests"] in install_page


def test_readme_install_line_trains_predicts_exports_and_serves_without_the_test_tools():
    pytest.importorskip("timm")  # the closure is read from what is installed here (the test extra)
    install = dict(_setup_block(PROJECT_ROOT / "README.md"))["install"]
    needed = _extras_closure(install)
    # timm (the default recipe's backbone), export and INT8 (onnx, onnxruntime), serve's ASGI stack
    assert {"timm", "onnx", "onnxruntime", "starlette", "uvicorn", "python-multipart"} <= needed, sorted(needed)
    heavy = {"pytest", "selenium", "mlflow", "tensorboard", "datasets", "pyarrow", "mkdocs", "ruff", "pandas"}
    assert not needed & heavy, f"README's install line pulls in the test tools: {sorted(needed & heavy)}"
    assert {"pytest", "selenium", "mlflow"} <= _extras_closure("'.[test]'")  # the check itself can fail


def test_the_ci_constraints_pin_the_whole_test_extra_within_pyproject_ranges():
    """README's test line installs with ``-c .ci/constraints.txt``: a package it brings in without a
    pin would be resolved against that day's PyPI again, and a pin outside pyproject's range would
    make the install impossible."""
    tomllib = pytest.importorskip("tomllib")
    pytest.importorskip("mlflow")  # the closure is read from what is installed here (the test extra)
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    lines = (PROJECT_ROOT / ".ci" / "constraints.txt").read_text(encoding="utf-8").splitlines()
    pins = {}
    for line in lines:
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    stated = [Requirement(text) for texts in project["optional-dependencies"].values() for text in texts]
    stated += [Requirement(text) for text in project["dependencies"]]
    outside = [
        f"{r.name}=={pins[canonicalize_name(r.name)]} (pyproject: {r.specifier})"
        for r in stated
        if r.name != "cnnzoo"
        and canonicalize_name(r.name) in pins
        and pins[canonicalize_name(r.name)] not in r.specifier
    ]
    assert not outside, f".ci/constraints.txt pins versions pyproject.toml excludes: {outside}"
    brought = _extras_closure("'.[test]'") | _closure([r.name for r in map(Requirement, project["dependencies"])])
    unpinned = {canonicalize_name(n) for n in brought} - set(pins) - {"cnnzoo", "pip", "setuptools", "wheel"}
    assert not unpinned, (
        f".ci/constraints.txt lacks pins for {sorted(unpinned)}: regenerate it (docs/design/dependencies.md)"
    )
    assert {"torch", "mlflow", "moto"} <= set(pins)


# --------------------------------------------------------------------------- the torch-free install


def _readme_torch_free_packages() -> list[str]:
    """The packages of README's torch-free install line (the line after `pip install --no-deps .`)."""
    lines = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("pip install --no-deps ."))
    deps = next(line for line in lines[start + 1 :] if line.startswith("pip install "))
    return deps.split()[2:]


def _closure(names: list[str]) -> set[str]:
    """These installed distributions and everything they require (markers evaluated here)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(names)
    while todo:
        dist = metadata.distribution(todo.pop())
        name = dist.metadata["Name"].lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _link_installed(names: set[str], folder: Path) -> None:
    """Put these installed distributions (modules and metadata) into ``folder`` as links."""
    from importlib import metadata

    folder.mkdir()
    for name in names:
        dist = metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)


def test_every_file_beside_the_modules_ships_as_package_data():
    """A wheel holds a package's modules only, unless pyproject's package-data names its other files:
    without the entry serve's page (``deploy/serve/page.html``) would be in a checkout but not in an install."""
    from fnmatch import fnmatch

    tomllib = pytest.importorskip("tomllib")
    listed = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = [
        p
        for p in (PROJECT_ROOT / "cnnzoo").rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    ]
    unlisted = [
        str(p.relative_to(PROJECT_ROOT))
        for p in files
        if not any(fnmatch(p.name, glob) for glob in listed.get(".".join(p.parent.relative_to(PROJECT_ROOT).parts), []))
    ]
    assert files and not unlisted, unlisted

    from cnnzoo.deploy.serve import page_html

    assert page_html().startswith("<!doctype html>") and "predict?top_k=" in page_html()


@pytest.mark.slow
def test_torch_free_install_from_a_built_wheel_predicts_an_onnx_export(image_root, tmp_path):
    """README's torch-free lines, offline: a wheel built from this tree, installed with --no-deps into
    a fresh venv beside exactly the packages README lists (and what they require), predicts an export."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile

    setuptools = pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools here")
    if int(setuptools.__version__.split(".")[0]) < 70:
        pytest.importorskip("wheel", reason="setuptools < 70 needs the wheel package to build a wheel offline")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    packages = _readme_torch_free_packages()
    needed = _closure(packages)
    assert not needed & {"torch", "torchvision"}, f"README's torch-free line pulls in torch: {sorted(needed)}"

    source = tmp_path / "source"  # a clean copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(PROJECT_ROOT / "cnnzoo", source / "cnnzoo", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp_path / "dist", source],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = (tmp_path / "dist").glob("cnnzoo-*.whl")
    with zipfile.ZipFile(wheel) as archive:  # package data: serve's page
        assert "cnnzoo/deploy/serve/page.html" in archive.namelist()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=300)
    python = venv / "bin" / "python"
    # without PYTHONPATH: a tree on it with cnnzoo.egg-info (an editable install's) would count as
    # cnnzoo already installed in the new venv, and pip would install nothing
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run(
        [*pip, "--python", python, "install", "--no-deps", "--no-index", wheel],
        check=True,
        capture_output=True,
        timeout=600,
        env=clean_env,
    )
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
        ).strip()
    )
    _link_installed(needed, tmp_path / "deps")
    (site / "readme-deps.pth").write_text(str(tmp_path / "deps") + "\n")

    from cnnzoo.deploy.export import export
    from cnnzoo.training.run import train

    onnx_file = export(train(tiny_config(image_root), out=tmp_path / "runs", quiet=True) / "best.pt", "onnx").path
    env = clean_env
    assert subprocess.run([python, "-c", "import torch"], env=env, capture_output=True).returncode != 0
    image = next((image_root / "validation" / "a").iterdir())
    result = subprocess.run(
        [venv / "bin" / "cnnzoo", "predict", "--model", onnx_file, image, "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["label"] in ("a", "b", "unknown")
    needs_torch = subprocess.run(
        [venv / "bin" / "cnnzoo", "summary", "-c", PROJECT_ROOT / "configs" / "lenet5.yaml"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert needs_torch.returncode == 2 and "this command needs torch" in needs_torch.stderr
    page = subprocess.run(  # serve's page, read from the installed package's data
        [python, "-c", "from cnnzoo.deploy.serve import page_html; print(page_html()[:15])"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert page.stdout.strip() == "<!doctype html>", page.stderr


# --------------------------------------------------------------------------- the slow marker

# what trains a model for real: the library's entry points and helpers, and the CLI commands
TRAINS = {"train", "train_run", "sweep", "lr_find", "run_training", "train_one_epoch"}
TRAINING_COMMANDS = {"train", "lr-find", "sweep"}


def _refused(function: ast.FunctionDef) -> set[int]:
    """The calls a test expects to fail (inside ``with pytest.raises``, or checked by one_error_line):
    they are refused before anything trains."""
    refused = set()
    for node in ast.walk(function):
        if isinstance(node, ast.With) and any("raises" in ast.unparse(item.context_expr) for item in node.items):
            refused |= {id(c) for statement in node.body for c in ast.walk(statement)}
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "one_error_line":
            refused |= {id(c) for c in ast.walk(node.args[0])} if node.args else set()
    return refused


def _trains(function: ast.FunctionDef) -> bool:
    """Whether a test (or fixture) calls a training entry point, or runs a training command, other
    than to see it refused."""
    refused = _refused(function)
    for call in (c for c in ast.walk(function) if isinstance(c, ast.Call) and id(c) not in refused):
        func = call.func
        name = func.id if isinstance(func, ast.Name) else None
        if isinstance(func, ast.Attribute) and ast.unparse(func.value) == "cnnzoo":
            name = func.attr  # cnnzoo.train(...), not a module's .train() (training mode)
        if name in TRAINS:
            return True
        first = call.args[0] if call.args else None
        words = [first] if isinstance(first, ast.Constant) else getattr(first, "elts", [])
        if words and isinstance(words[0], ast.Constant) and words[0].value in TRAINING_COMMANDS:
            return True  # run_cnnzoo(["train", ...]), cnnzoo_command("train", ...), cli("train", ...)
    return False


def test_every_test_that_trains_is_marked_slow():
    """``pytest -m "not slow"`` is the quick loop only if every test that trains carries the marker:
    by a decorator, by its module's ``pytestmark``, or by using a fixture that trains (conftest's
    TRAINING_FIXTURES, which must then list every such fixture)."""
    import conftest

    offenders = []
    for path in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_slow = any(
            isinstance(n, ast.Assign) and "pytestmark" in ast.unparse(n.targets[0]) and "slow" in ast.unparse(n.value)
            for n in tree.body
        )
        for node in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
            decorators = " ".join(ast.unparse(d) for d in node.decorator_list)
            if "pytest.fixture" in decorators:
                if _trains(node) and node.name not in conftest.TRAINING_FIXTURES:
                    offenders.append(f"{path.name}: fixture {node.name} trains; add it to conftest.TRAINING_FIXTURES")
                continue
            uses_training = {a.arg for a in node.args.args} & conftest.TRAINING_FIXTURES
            if node.name.startswith("test_") and _trains(node) and not (module_slow or "mark.slow" in decorators):
                if not uses_training:
                    offenders.append(f"{path.name}:{node.lineno}: {node.name} trains but is not marked slow")
    assert not offenders, "\n".join(offenders)
