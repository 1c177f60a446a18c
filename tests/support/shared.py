"""Data and weights beside the project (``../shared``), which a fresh clone does not have.

A test reaches them only through :func:`shared_path` (or the ``clothing_root`` fixture), which
skips when they are absent; such tests carry the ``needs_shared`` marker (conftest adds it for the
fixture), and ``.ci/run`` runs ``pytest -m needs_shared`` again from a copy of the project with no
``../shared`` beside it. tests/test_project.py keeps other tests from naming ``shared`` themselves.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED = PROJECT_ROOT.parent / "shared"  # beside the project; absent in a fresh clone
CLOTHING = SHARED / "datasets" / "clothing-small"


def shared_path(relative: str) -> Path:
    """A file or folder under ../shared, or a clean skip when this checkout has none."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{relative} is not present beside the project (../shared)")
    return path


def reads_shared(text: str) -> bool:
    """Whether a config (or any text) names a path into ../shared."""
    return re.search(r"(^|[\s'\"/])shared/", text) is not None
