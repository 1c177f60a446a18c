"""Whether the installed torch and torchvision were built for each other, read without importing them.

torchvision ships compiled operators for one torch release and one build (CPU-only or CUDA x).
With another torch, ``import torchvision`` dies with ``operator torchvision::nms does not
exist``, which names neither package. A CPU-only torch from PyTorch's CPU wheel index next to
PyPI's torchvision (a CUDA build on Linux) is the usual way to get there. :func:`check` reads
both packages' ``version.py`` files and says which pair is installed and how to get a matching one.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

from ..errors import UserError

WHEEL_INDEX = "https://download.pytorch.org/whl"
TORCHVISION_MINOR_OFFSET = 15  # torch 2.m pairs with torchvision 0.(m + 15): 2.0 / 0.15 ... 2.14 / 0.29


def _version_file(package: str) -> str | None:
    spec = importlib.util.find_spec(package)  # finds the package without running it
    if spec is None or not spec.origin:
        return None
    try:
        return (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    except OSError:
        return None


def _assigned(text: str, name: str) -> str | None:
    """The string literal assigned to ``name`` in a version.py (None for ``None`` or no assignment)."""
    found = re.search(rf"^{name}\b[^=\n]*=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    return found.group(1) if found else None


def installed() -> tuple[str, str | None, str] | None:
    """(torch version, the CUDA version torch was built for or None, torchvision version with its
    build tag, e.g. ``0.28.0+cu130``); None when either package is missing or unreadable."""
    torch_text, vision_text = _version_file("torch"), _version_file("torchvision")
    if torch_text is None or vision_text is None:
        return None
    torch_version, vision_version = _assigned(torch_text, "__version__"), _assigned(vision_text, "__version__")
    if torch_version is None or vision_version is None:
        return None
    return torch_version, _assigned(torch_text, "cuda"), vision_version


def matching_install(torch_version: str, torch_cuda: str | None) -> str:
    """The pip command that replaces torchvision with the build for this torch (CPU wheels for a
    CPU-only torch). ``--force-reinstall``: pip counts 0.28.0 (CUDA) as satisfying 0.28.* already."""
    minor = int(re.match(r"\d+\.(\d+)", torch_version).group(1))
    build = f"cu{torch_cuda.replace('.', '')}" if torch_cuda else "cpu"
    return (
        f"pip install --force-reinstall --no-deps 'torchvision==0.{minor + TORCHVISION_MINOR_OFFSET}.*' "
        f"--index-url {WHEEL_INDEX}/{build}"
    )


def pair_problem(torch_version: str, torch_cuda: str | None, vision_version: str) -> str | None:
    """Why this torchvision cannot load with this torch, or None when the pair matches (or is unknown)."""
    torch_match = re.match(r"2\.(\d+)", torch_version)
    vision_match = re.match(r"0\.(\d+)", vision_version)
    if not torch_match or not vision_match:
        return None  # another numbering than torch 2.x's: no rule to check against
    for_minor = int(vision_match.group(1)) - TORCHVISION_MINOR_OFFSET
    tag = vision_version.partition("+")[2]
    if for_minor != int(torch_match.group(1)):
        reason = f"that torchvision is for torch 2.{for_minor}"
    elif tag.startswith("cu") and torch_cuda is None:
        reason = f"that torchvision is a CUDA build ({tag}), that torch a CPU-only build"
    elif tag.startswith("cu") and tag[2:-1] != torch_cuda.split(".")[0]:
        reason = f"that torchvision is built for CUDA {tag[2:-1]}, that torch for CUDA {torch_cuda}"
    else:
        return None
    return (
        f"torch {torch_version} and torchvision {vision_version} do not work together ({reason}); "
        f"install the torchvision built for this torch: {matching_install(torch_version, torch_cuda)}"
    )


@functools.cache
def _problem() -> str | None:
    pair = installed()
    return pair_problem(*pair) if pair else None


def check() -> None:
    """Refuse in one line a torch/torchvision pair that cannot work (before torchvision is imported)."""
    problem = _problem()
    if problem:
        raise UserError(problem)


def describe_failure(exc: BaseException) -> str | None:
    """The one line for torchvision failing to load its operators (a build mismatch :func:`check`
    could not see), or None for any other error."""
    if "torchvision::" not in str(exc):
        return None
    pair = installed()
    if pair is None:
        return None
    torch_version, torch_cuda, vision_version = pair
    return (
        f"torchvision {vision_version} cannot load its operators with torch {torch_version} (they were built "
        f"for different releases or builds); install the torchvision built for this torch: "
        f"{matching_install(torch_version, torch_cuda)}"
    )
