"""Small WebDataset shard sets written for the tests with :mod:`tarfile`: PNG samples labelled by
``.cls`` members (or any members a test gives), in ``train/`` and ``validation/`` tars, with the
``dataset.json`` that ``cnnzoo data shards`` would write beside them."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .images import draw

Members = list[tuple[str, bytes]]


def png(kind: str, seed: int, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    draw(kind, seed, size).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path: Path, members: Members) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def samples(n: int, *, start: int = 0) -> Members:
    """``n`` samples ``sNNNN.png`` + ``sNNNN.cls``, alternately class 0 (a disc) and 1 (a bar)."""
    out: Members = []
    for i in range(start, start + n):
        out += [(f"s{i:04d}.png", png("ab"[i % 2], i)), (f"s{i:04d}.cls", str(i % 2).encode())]
    return out


def write_shard_set(
    root: Path, *, train: tuple[int, ...] = (8, 8), validation: tuple[int, ...] = (8,), index: bool = True
) -> Path:
    """``root/train/train-00000k.tar`` holding ``train[k]`` samples, the same for validation, and
    (``index``) ``root/dataset.json`` with classes a and b; returns ``root``."""
    data: dict[str, Any] = {"format": "cnnzoo-shards/1", "classes": ["a", "b"], "splits": {}}
    start = 0
    for split, sizes in (("train", train), ("validation", validation)):
        entry: dict[str, Any] = {"shards": [], "counts": [], "class_counts": [0, 0]}
        for k, n in enumerate(sizes):
            name = f"{split}/{split}-{k:06d}.tar"
            write_tar(root / name, samples(n, start=start))
            entry["shards"].append(name)
            entry["counts"].append(n)
            for i in range(start, start + n):
                entry["class_counts"][i % 2] += 1
            start += n
        data["splits"][split] = entry
    if index:
        (root / "dataset.json").write_text(json.dumps(data, indent=1))
    return root


def change_index(root: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    """``root/dataset.json`` rewritten with ``change`` applied to its parsed content (in place)."""
    path = root / "dataset.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def replace_members(
    path: Path, replace: Callable[[str, bytes], bytes | None], *, rename: dict[str, str] | None = None
) -> Path:
    """The tar at ``path`` written again with each member's bytes ``replace(name, data)`` (None drops
    it) under its name, or its new name in ``rename``."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isreg()]  # type: ignore[union-attr]
    kept = [((rename or {}).get(name, name), new) for name, data in members if (new := replace(name, data)) is not None]
    return write_tar(path, kept)
