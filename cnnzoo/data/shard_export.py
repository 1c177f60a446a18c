"""``cnnzoo data shards``: any source's data, split as training splits it, written as WebDataset
shards (:func:`cnnzoo.data.shard_writer.write_shards`) and put in place whole
(:mod:`cnnzoo.data.shard_output`), or written to a temporary folder and uploaded to a URL
(:mod:`cnnzoo.data.remote_output`).

Imports config, errors, files, remote_output, shard_index, shard_output, shard_writer and sources; torch-free.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import DataError
from ..files import is_url
from . import remote_output, shard_index, shard_output, shard_writer, sources


def write_source(
    cfg: Config,
    out: str | Path,
    *,
    shard_size: int = 1000,
    force: bool = False,
    task: str = "auto",
    pretrained: sources.Pretrained | None = None,
) -> dict[str, Any]:
    """``cnnzoo data shards``: ``cfg``'s data, split as training splits it, written as shards
    (:func:`cnnzoo.data.shard_writer.write_shards`). ``out`` is checked before the data is read;
    multi-label data is written with each image's label set (:mod:`cnnzoo.data.shard_labels`).
    ``task``, ``pretrained``: as for
    :func:`~cnnzoo.data.sources.load_data`."""
    index = {"index_name": shard_index.INDEX_NAME, "index_format": shard_index.INDEX_FORMAT}
    if is_url(out):
        remote_output.check(str(out), force=force)
    else:
        shard_output.check_output(out, force=force, **index)
    spec = sources.load_data(cfg, task=task, pretrained=pretrained)
    splits = {s.name: s for s in (spec.train, spec.val, spec.test) if s is not None}
    if any(s.streamed for s in splits.values()):
        raise DataError(f"{cfg.data.root}: already WebDataset shards")
    root = Path(spec.root or ".")
    roots = [root.parent if root.is_file() else root]  # a manifest's folder, or the image folder
    if cfg.data.images_dir:
        roots.append(Path(cfg.data.images_dir))
    if is_url(out):  # written to a local folder, then uploaded (the index last: the set is complete)
        with tempfile.TemporaryDirectory(prefix="cnnzoo-shards-") as staging:
            written = shard_writer.write_shards(
                splits,
                spec.classes,
                Path(staging) / "set",
                roots=roots,
                shard_size=shard_size,
                seed=cfg.seed,
                multi_label=spec.multi_label,
            )
            remote_output.upload(Path(staging) / "set", str(out), force=force)
        return written
    return shard_writer.write_shards(
        splits,
        spec.classes,
        Path(out),
        roots=roots,
        shard_size=shard_size,
        seed=cfg.seed,
        force=force,
        multi_label=spec.multi_label,
    )
