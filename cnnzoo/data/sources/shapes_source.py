"""``data.source: shapes``: the built-in generated set of coloured shapes (written once under the
cache home, or into an empty ``data.root``), read as a folder.

Imports console, files, shapes and the sibling folder module; torch-free.
"""

from __future__ import annotations

from pathlib import Path

from ...config import Config
from ...console import console
from ...files import cache_home
from .. import shapes
from .folder import FolderSource

_NOT_SHAPES = "it is not empty and not a cnnzoo shapes data set, so no shapes are generated there"


class ShapesSource(FolderSource):
    """The shapes set, generated on first use."""

    name = "shapes"
    native = (3, 64)

    def folder(self) -> Path:
        root = Path(self.cfg.data.root) if self.cfg.data.root else cache_home() / f"shapes-v{shapes.VERSION}"
        shapes.ensure_shapes(root)
        return root

    def class_names(self) -> list[str]:
        return list(shapes.CLASSES)


def read_shapes_root_as_folder(cfg: Config) -> bool:
    """A shapes config given ``data.root`` (``--data DIR``) that holds data of the user's own:
    cnnzoo never generates over it, and reads it as ``data.source: folder`` instead (class
    folders, a manifest, shards), saying so once. True when it switched the source."""
    d = cfg.data
    if d.source != "shapes" or not d.root or not shapes.holds_other_data(Path(d.root)):
        return False
    d.source = "folder"
    console.log(f"data: {d.root}: {_NOT_SHAPES}; reading it as your own images (data.source: folder)")
    return True
