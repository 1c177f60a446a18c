"""A real full disk for the tests: a small tmpfs in a private mount namespace (``unshare -rm``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def private_tmpfs_works(folder: Path) -> bool:
    """Whether a small tmpfs can be mounted at ``folder`` inside a private namespace (``unshare -rm``):
    a real full disk for tests, without root on the machine and without touching its mounts."""
    if shutil.which("unshare") is None:
        return False
    folder.mkdir(exist_ok=True)
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs '{folder}'"], capture_output=True, timeout=30
    )
    return done.returncode == 0
