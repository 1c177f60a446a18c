"""The configs cnnzoo ships (package data in ``cnnzoo/configs/``): found by name, described in
one line, listed.

``--config quickstart`` (or ``quickstart.yaml``) names a shipped config when no file of that name
is in the working directory: a file the user has always wins. Each shipped file's first line is
``# About: ...``, what ``cnnzoo configs`` prints for it. Torch-free; imports only
:mod:`cnnzoo.errors`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError

# the package's configs/ folder, found beside this package without importing it
SHIPPED_FOLDER = Path(__file__).resolve().parents[1] / "configs"
ABOUT_PREFIX = "# About:"


def shipped_configs() -> dict[str, Path]:
    """Every shipped config, by name (the file's stem), sorted."""
    return {p.stem: p for p in sorted(SHIPPED_FOLDER.glob("*.yaml"))}


def about(path: Path) -> str:
    """The one line a config file says about itself (``# About: ...`` before its first key), or ''."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(ABOUT_PREFIX):
            return line[len(ABOUT_PREFIX) :].strip()
        if line.strip() and not line.startswith("#"):
            break
    return ""


def shipped_name(value: str | Path) -> str | None:
    """The shipped config that ``value`` names (``quickstart`` or ``quickstart.yaml``), if it names one."""
    text = str(value)
    if os.sep in text or "/" in text:
        return None
    stem = text[: -len(".yaml")] if text.endswith(".yaml") else text
    return stem if stem in shipped_configs() else None


def find_config(value: str | Path) -> Path:
    """The config file ``value`` names: a file (relative to the working directory) or a path,
    else a shipped config by name; a bare name that is neither is one line listing what is shipped."""
    path = Path(value).expanduser()
    if path.is_file() or os.sep in str(value) or "/" in str(value):
        return path  # a path: read_yaml says if it is missing
    name = shipped_name(value)
    if name is not None:
        return shipped_configs()[name]
    names = ", ".join(shipped_configs())
    raise ConfigError(f"{value}: config file not found, and no shipped config has that name (shipped: {names})")
