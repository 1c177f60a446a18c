"""Fixtures only (the helpers the tests share are plain functions in tests/support/):

* ``isolated_home`` (every test): CNNZOO_HOME and TORCH_HOME in a temporary folder, so no test
  touches the user's caches, and CNNZOO_OFFLINE / HF_HUB_OFFLINE forbid downloading weights;
* ``image_root``: a small ImageFolder tree of learnable pictures (:func:`support.images.make_image_tree`);
* ``clothing_root``: the clothing images beside the project (``../shared``), or a clean skip;
* ``quickstart_run`` (session): the README's ``cnnzoo train --config configs/quickstart.yaml``, run
  once for every test that needs a model trained on the shapes (the quickstart's own test, explain).

The collection hook marks ``needs_shared`` on every test that uses ``clothing_root``, and ``slow``
on every test that uses a fixture that trains a model (:data:`TRAINING_FIXTURES`, module-scoped
fixtures of the test files). ``pytest -m "not slow"`` is the quick loop; CI runs everything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.images import make_image_tree
from support.runs import QuickstartRun, train_quickstart
from support.shared import shared_path

SHARED_FIXTURES = {"clothing_root"}  # fixtures that read ../shared: their tests get needs_shared
# fixtures that train a model for real (in their test files): their tests get slow
TRAINING_FIXTURES = {
    "trained",
    "binary",
    "base",
    "folder_run",
    "fraction_run",
    "shapes_run",
    "report_run",
    "kaggle_run",
    "shaped",
    "quickstart_run",
    "kfold",
    "calibrated",
    "uncalibrated",
    "teachers",
    "stopped_run",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if SHARED_FIXTURES & fixtures:
            item.add_marker(pytest.mark.needs_shared)
        if TRAINING_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("cnnzoo-home")
    monkeypatch.setenv("CNNZOO_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("CNNZOO_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture
def image_root(tmp_path) -> Path:
    """ImageFolder tree: train/ (12 per class) and validation/ (4 per class), classes a and b."""
    return make_image_tree(tmp_path / "images")


@pytest.fixture
def clothing_root() -> Path:
    return shared_path("datasets/clothing-small/train").parent


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> QuickstartRun:
    """Trained once per session (the longest training of the suite): its tests read it, never change it."""
    return train_quickstart(tmp_path_factory.mktemp("quickstart"))
