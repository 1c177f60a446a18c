"""What a run finds out beyond what its config says: :class:`RunFacts`, made once by
:func:`cnnzoo.training.setup.build_setup` from the config and the data, and handed to whatever
needs a fact (the model's build, the probes, the run folder).

The config itself is never written to: it keeps what the user wrote. The run folder's
``config.yaml`` and every checkpoint's ``config`` are :meth:`RunFacts.saved_config`, a copy with the
facts filled in (the class count, the input shape, the run's name, an absolute data folder,
backbone weights file and distillation teacher), as they always were: ``evaluate``, ``export`` and
``train --resume`` read them from there, from any folder, and run folders written before this
module still load.

Floor 7 (training): imports :mod:`cnnzoo.config`, :mod:`cnnzoo.data.sources` (the data's spec) and
:mod:`cnnzoo.model.backbones` (a weights file made absolute).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..data.sources import DataSpec
from ..errors import ConfigError
from ..model.backbones import absolute_weight_paths


@dataclass(frozen=True, kw_only=True)
class RunFacts:
    """A run's resolved facts: the data's classes and image shape, the run's name, where the data
    is, and the layer list as it is built."""

    name: str  # the run's name (``name``, else the config file's stem)
    classes: list[str]  # in the model's output order
    channels: int
    image_size: tuple[int, int]  # (H, W)
    data_root: str | None  # data.root as the saved config records it (a folder made absolute; DataSpec.saved_root)
    data_source: str | None  # data.source as read (DataSpec.saved_source); None: as written
    layers: list[Any]  # model.layers with a backbone's weights file made absolute

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> list[int]:
        """[channels, height, width] of one image as the model takes it."""
        return [self.channels, *self.image_size]

    def saved_config(self, cfg: Config) -> Config:
        """The config as the run folder saves it: a copy of ``cfg`` with these facts filled in."""
        saved = copy.deepcopy(cfg)
        saved.name = self.name
        if self.data_root is not None:
            saved.data.root = self.data_root
        if self.data_source is not None:
            saved.data.source = self.data_source
        saved.data.channels, saved.data.image_size = self.channels, list(self.image_size)
        saved.model.num_classes, saved.model.input = self.num_classes, self.input_shape
        saved.model.layers = copy.deepcopy(self.layers)
        if saved.train.distill.teacher:  # --resume from another folder still finds the teacher
            saved.train.distill.teacher = os.path.abspath(saved.train.distill.teacher)
        return saved


def resolve_facts(cfg: Config, spec: DataSpec) -> RunFacts:
    """The facts of a run of ``cfg`` on the data ``spec`` describes; a ``model.num_classes`` that
    the data contradicts is refused in one line."""
    num_classes = len(spec.classes)
    if cfg.model.num_classes is not None and cfg.model.num_classes != num_classes:
        raise ConfigError(
            f"model.num_classes: {cfg.model.num_classes}, but the data has {num_classes} "
            f"classes ({', '.join(spec.classes)}); remove model.num_classes to use the data's"
        )
    layers = copy.deepcopy(cfg.model.layers)
    absolute_weight_paths(layers)  # the saved config works from any folder
    return RunFacts(
        name=cfg.run_name,
        classes=list(spec.classes),
        channels=spec.channels,
        image_size=(spec.image_size[0], spec.image_size[1]),
        data_root=spec.saved_root,
        data_source=spec.saved_source,
        layers=layers,
    )
