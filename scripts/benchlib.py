"""Shared by the prediction benchmarks: which checkpoint to measure, and on which images."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def checkpoint_and_images(checkpoint: str | None, images: str | None) -> tuple[Path, Path, list[str]]:
    """(checkpoint, image folder, image paths): ``checkpoint`` or runs/latest's; ``images`` or the
    checkpoint's own validation (else test, else whole) folder."""
    from cnnzoo.checkpoint import load_checkpoint
    from cnnzoo.data.sources import SPLIT_FOLDERS
    from cnnzoo.inference.inputs import expand_inputs
    from cnnzoo.runs import resolve_checkpoint

    path = resolve_checkpoint(checkpoint, "runs")
    if images:
        folder = Path(images)
    else:
        root = Path(load_checkpoint(path)["meta"]["data_root"])
        names = [*SPLIT_FOLDERS["validation"], *SPLIT_FOLDERS["test"]]
        folder = next((root / n for n in names if (root / n).is_dir()), root)
    found, _ = expand_inputs([str(folder)])
    if not found:
        sys.exit(f"no images under {folder}")
    return path, folder, found
