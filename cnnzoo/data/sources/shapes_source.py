"""``data.source: shapes``: the built-in generated set of coloured shapes (written once under the
cache home, or into an empty ``data.root``), read as a folder.

Imports console, files, shapes and the sibling folder module; torch-free.
"""

from __future__ import annotations

from pathlib import Path

from ...config import DataConfig
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


def reads_user_data(d: DataConfig) -> bool:
    """Whether a shapes config's ``data.root`` (``--data DIR``) holds data of the user's own:
    cnnzoo never generates over it, and reads it as ``data.source: folder`` instead (class
    folders, a manifest, shards). The config itself is left as written."""
    return d.source == "shapes" and bool(d.root) and shapes.holds_other_data(Path(d.root))


def source_name(d: DataConfig) -> str:
    """``data.source`` as read: ``folder`` for a shapes config pointed at the user's own data."""
    return "folder" if reads_user_data(d) else d.source
