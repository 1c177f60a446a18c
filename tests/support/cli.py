"""The ``cnnzoo`` command as users run it (a real subprocess), and the contract of its user errors:
exactly one line on stderr, ``cnnzoo: error: ...``, exit code 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[2]
CONFIGS = PROJECT / "configs"
_SCRIPT = Path(sys.executable).with_name("cnnzoo")


def cnnzoo_command(*args: Any) -> list[str]:
    """The installed ``cnnzoo`` script with ``args``, or ``python -m cnnzoo`` where none is installed."""
    head = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "cnnzoo"]
    return [*head, *map(str, args)]


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment (the test's CNNZOO_HOME included) for a command whose output is read."""
    return {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "120", "PYTHONWARNINGS": "ignore", **extra}


def run_cnnzoo(args: Sequence[Any], cwd: Path, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    """Run ``cnnzoo args`` in ``cwd`` (``env`` adds variables) and wait for it."""
    return subprocess.run(
        cnnzoo_command(*args),
        cwd=str(cwd),
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error_line(result: Any, code: int = 2) -> str:
    """The CLI's user-error contract, for a subprocess's result or a CliRunner's; returns the one line."""
    stderr = result.stderr
    returned = result.returncode if hasattr(result, "returncode") else result.exit_code
    assert returned == code, f"exit code {returned}, stderr was:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("cnnzoo: error:"), lines[0]
    return lines[0]


def run_script(args: Sequence[Any], cwd: Path, timeout: float = 600) -> str:
    """Run ``python *args`` (one of scripts/ and its arguments) in ``cwd``; its standard output (it must succeed)."""
    proc = subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, env={**os.environ}, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


# `cnnzoo predict --model MODEL --json IMAGES...` in-process in a fresh interpreter that then lists,
# as its last stderr line, the torch/torchvision modules the command imported
_PREDICT_LISTING_TORCH = (
    "import sys, json\nsys.argv = ['cnnzoo', 'predict', '--model', sys.argv[1], '--json', *sys.argv[2:]]\n"
    "from cnnzoo.cli import main\ntry:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
    "print('MODULES', json.dumps([m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')]),"
    " file=sys.stderr)\n"
)


def predict_listing_torch(model: Path, images: Sequence[Any], timeout: float = 120) -> subprocess.CompletedProcess:
    """``predict --json`` of ``images`` with ``model`` in a fresh process; stderr's last line is
    ``MODULES [...]``, the torch modules it imported (:func:`torch_modules_imported` reads it)."""
    return subprocess.run(
        [sys.executable, "-c", _PREDICT_LISTING_TORCH, str(model), *map(str, images)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=timeout,
    )


_WITHOUT_TORCH = (
    "import sys\nsys.modules['torch'] = None  # importing torch now fails\n"
    "sys.argv = ['cnnzoo', *sys.argv[1:]]\nfrom cnnzoo.cli import main\nmain()\n"
)


def run_cnnzoo_without_torch(args: Sequence[Any], timeout: float = 300) -> subprocess.CompletedProcess:
    """``cnnzoo args`` in a fresh process where ``import torch`` fails (a torch-free install)."""
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, *map(str, args)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=timeout,
    )


_WITHOUT = (
    "import sys\nfor name in sys.argv[1].split(','):\n    sys.modules[name] = None  # importing it now fails\n"
    "sys.argv = ['cnnzoo', *sys.argv[2:]]\nfrom cnnzoo.cli import main\nmain()\n"
)


def run_cnnzoo_without(
    packages: Sequence[str], args: Sequence[Any], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``cnnzoo args`` in ``cwd``, in a fresh process where importing any of ``packages`` fails (an
    install without that extra): the real command, with the package absent as pip would leave it."""
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT, ",".join(packages), *map(str, args)],
        cwd=str(cwd),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=timeout,
    )


def torch_modules_imported(done: subprocess.CompletedProcess) -> list[str]:
    """The torch modules a :func:`predict_listing_torch` run imported."""
    return json.loads(done.stderr.strip().splitlines()[-1].split(" ", 1)[1])


def invoke_cnnzoo(args: Sequence[Any], cwd: Path, **env: str) -> Any:
    """``cnnzoo args`` in this process through Typer's CliRunner, in ``cwd``, with the variables
    :func:`run_cnnzoo` gives its subprocess plus ``env``; the result (``exit_code``, ``stdout``,
    ``stderr``). For a command whose output or error line is what a test checks, not the process
    (signals, a real exit, torchrun, what is printed at import, an isolated environment)."""
    import pytest
    from typer.testing import CliRunner

    from cnnzoo.cli import app

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        for key, value in {"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "120", **env}.items():
            mp.setenv(key, value)
        return CliRunner().invoke(app, [str(arg) for arg in args])
