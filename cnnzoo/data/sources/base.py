"""The Source protocol: what every kind of ``data.source`` answers.

A source class owns its classes, its train/validation/test splits, the split ``evaluate --data``
scores, and how its loaders are built; :mod:`cnnzoo.data.sources` keeps the registry that names
them. Learned from timm's readers and torchvision's ``DatasetFolder``; no code copied.

Imports config, errors and the sibling samples module; torch-free (loaders are imported lazily).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ...config import Config
from ...errors import ConfigError, DataError
from .samples import DataSpec, Samples


class Pretrained(Protocol):
    """What a pretrained network expects, as its caller hands it to the data layer (a backbone's
    :class:`~cnnzoo.model.backbones.Preprocessing`): the data never reads the model's layers."""

    image_size: tuple[int, int]
    mean: list[float]
    std: list[float]
    source: str


@dataclass(kw_only=True)
class Splits:
    """What a source resolves ``data`` to, before the input size and normalisation are added."""

    classes: list[str]
    train: Samples
    val: Samples
    test: Samples | None = None
    where: str = ""  # the data's folder (or source), as messages and the saved config name it
    skipped: int = 0  # files under the root that are not images
    kind: dict[str, Any] = field(default_factory=dict)  # a manifest's multi_label, one_hot and missing


class Source:
    """One kind of data, built from a config. ``name`` is its ``data.source``; ``native`` the
    (channels, size) the source fixes, if any; :meth:`detects` says whether a ``data.root`` (or an
    ``evaluate --data`` path) holds this kind, for the kinds found by looking."""

    name: ClassVar[str] = ""
    native: ClassVar[tuple[int, int] | None] = None
    root_hint: ClassVar[str] = "point it at your data"  # what data.root should name, when unset

    def __init__(self, cfg: Config, *, task: str = "auto") -> None:
        self.cfg = cfg
        self.task = task  # single, multi or auto (what the data says): the trainer's setting, given by the caller

    @classmethod
    def detects(cls, path: str) -> bool:
        return False

    def root(self) -> str:
        """``data.root``, which this source needs."""
        if not self.cfg.data.root:
            raise ConfigError(f"data.root: not set; {self.root_hint}")
        return self.cfg.data.root

    def splits(self, missing: list[str] | None = None) -> Splits:
        """Classes and splits; ``missing`` collects absent images instead of stopping (manifests)."""
        raise NotImplementedError

    def class_names(self) -> list[str]:
        """The classes, cheaply where the source can (no image decoded)."""
        return self.splits().classes

    def split_to_score(
        self, data: str, split: str | None, classes: list[str], *, multi_label: bool
    ) -> tuple[Samples, str]:
        """``evaluate --data DATA``: its ``split`` (default: test, else validation) labelled with
        the model's ``classes``, and where it is, as the report names it."""
        if multi_label:
            raise DataError(
                f"--data {data}: a multi-label model is scored on a manifest (a CSV with space-separated tags, "
                f"or 0/1 columns), not a folder of class folders"
            )
        return self.single_label_split(data, split, classes), str(Path(data))

    def single_label_split(self, data: str, split: str | None, classes: list[str]) -> Samples:
        raise DataError(f"--data {data}: cannot be scored as data.source {self.name}")

    def build_loaders(self, spec: DataSpec, *, augment: Any, cuda: bool) -> Any:
        """The training and validation loaders: decoded once into the cache (or streamed from files)."""
        from .. import loaders  # lazy: torch's; listing a folder (evaluate of an export) needs none

        return loaders.build_loaders(self.cfg, spec, augment=augment, cuda=cuda)


def resolve_task(task: str, where: str, data_multi: bool) -> bool:
    """Multi-label or not: ``task`` (the caller's ``train.task``), or (auto) what the data says;
    ``single`` over rows with several labels is refused in one line."""
    if task == "single" and data_multi:
        raise DataError(
            f"{where}: some rows have several labels, but train.task is single; set train.task: multi "
            f"(or auto), or give each row one label"
        )
    return task == "multi" or (task == "auto" and data_multi)
