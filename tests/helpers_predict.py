"""Helpers shared by test_predict.py, test_evaluate.py and test_cli.py.

* :func:`train_run` trains ``conftest.tiny_config`` for real (about a second) into its own
  folder, with CNNZOO_HOME pointed into that folder (module-scoped fixtures run before
  conftest's function-scoped ``isolated_home``).
* :func:`run_cnnzoo` runs the installed ``cnnzoo`` script as a real subprocess.
* :func:`one_error_line` checks the CLI's contract for user errors: exactly one line on
  stderr, starting ``cnnzoo: error:``, and no traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pytest

from conftest import tiny_config

_BIN = Path(sys.executable).with_name("cnnzoo")
CNNZOO = str(_BIN) if _BIN.exists() else (shutil.which("cnnzoo") or "cnnzoo")
PROJECT = Path(__file__).resolve().parents[1]
CONFIGS = PROJECT / "configs"


@dataclass
class TrainedRun:
    base: Path  # holds runs/ (so cwd=base makes runs/latest the default checkpoint)
    root: Path  # the data the model was trained on
    run_dir: Path

    @property
    def best(self) -> Path:
        return self.run_dir / "best.pt"


def train_run(base: Path, make_data: Callable[[Path], Path], edit: Optional[Callable[[dict], None]] = None,
              **train: Any) -> TrainedRun:
    """Write data with ``make_data(base)``, train tiny_config on it into ``base/runs``."""
    from cnnzoo.engine import train as run_training

    root = make_data(base)
    cfg = tiny_config(root, **train)
    if edit is not None:
        edit(cfg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNZOO_HOME", str(base / "home"))
        run_dir = run_training(cfg, out=base / "runs", quiet=True)
    return TrainedRun(base, root, Path(run_dir))


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)  # CNNZOO_HOME is the test's isolated one (conftest's autouse fixture)
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "120", "PYTHONWARNINGS": "ignore"})
    return env


def run_cnnzoo(args: Sequence[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([CNNZOO, *map(str, args)], cwd=str(cwd), env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(result: subprocess.CompletedProcess | Any, code: int = 2) -> str:
    """The CLI's user-error contract; returns the one line."""
    stderr = result.stderr
    returned = result.returncode if hasattr(result, "returncode") else result.exit_code  # CliRunner
    assert returned == code, f"exit code {returned}, stderr was:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("cnnzoo: error:"), lines[0]
    return lines[0]
