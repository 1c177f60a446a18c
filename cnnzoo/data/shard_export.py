"""``cnnzoo data shards``: any source's data, split as training splits it, written as WebDataset
shards (:func:`cnnzoo.data.shard_files.write_shards`) and put in place whole
(:mod:`cnnzoo.data.shard_output`).

Imports config, errors, shard_files, shard_output and sources; torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import DataError
from . import shard_files, shard_output, sources


def write_source(
    cfg: Config,
    out: Path,
    *,
    shard_size: int = 1000,
    force: bool = False,
    task: str = "auto",
    pretrained: sources.Pretrained | None = None,
) -> dict[str, Any]:
    """``cnnzoo data shards``: ``cfg``'s data, split as training splits it, written as shards
    (:func:`cnnzoo.data.shard_files.write_shards`). ``out`` is checked before the data is read;
    multi-label data is written with each image's label set (:mod:`cnnzoo.data.shard_labels`).
    ``task``, ``pretrained``: as for
    :func:`~cnnzoo.data.sources.load_data`."""
    index = {"index_name": shard_files.INDEX_NAME, "index_format": shard_files.INDEX_FORMAT}
    shard_output.check_output(out, force=force, **index)
    spec = sources.load_data(cfg, task=task, pretrained=pretrained)
    splits = {s.name: s for s in (spec.train, spec.val, spec.test) if s is not None}
    if any(s.streamed for s in splits.values()):
        raise DataError(f"{cfg.data.root}: already WebDataset shards")
    root = Path(spec.root or ".")
    roots = [root.parent if root.is_file() else root]  # a manifest's folder, or the image folder
    if cfg.data.images_dir:
        roots.append(Path(cfg.data.images_dir))
    return shard_files.write_shards(
        splits,
        spec.classes,
        out,
        roots=roots,
        shard_size=shard_size,
        seed=cfg.seed,
        force=force,
        multi_label=spec.multi_label,
    )
