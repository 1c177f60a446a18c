"""Config files: the schema, YAML loading, ``--set``/``--unset`` overrides, value checks and dumping.

A config is plain YAML with the sections ``model``, ``data`` and ``train`` plus the
optional top-level ``name`` and ``seed``. The schema is the dataclasses of
:mod:`~cnnzoo.config.schema`: every field's type hint is checked, every unknown key is refused
with the closest known key, and errors name the file and the dotted key.

* :mod:`~cnnzoo.config.schema`: the dataclasses (``Config`` and its sections) and their ranges;
* :mod:`~cnnzoo.config.checks`: :class:`Bounds` (a field's range) and the rules between fields;
* :mod:`~cnnzoo.config.loading`: YAML in, overrides applied, types coerced, did-you-mean;
* :mod:`~cnnzoo.config.dumping`: a config written back as a person would write it;
* :mod:`~cnnzoo.config.shipped`: the configs cnnzoo ships, found by name and described in a line.

The package is torch-free and imports only :mod:`cnnzoo.errors` (floor 1): the CLI reads and
checks a config before torch is imported.
"""

from .checks import CHANNEL_WORDS, MAX_IMAGE_SIDE, READABLE_CHANNELS, Bounds, bounded
from .dumping import dump_config
from .loading import (
    apply_override,
    backbone_entry,
    from_dict,
    load_config,
    looks_like_path,
    parse_override,
    read_yaml,
    rebase_paths,
    yaml_problem,
)
from .schema import (
    AugmentConfig,
    ColorJitterConfig,
    Config,
    DataConfig,
    DistillConfig,
    EmaConfig,
    ModelConfig,
    RandAugmentConfig,
    TrainConfig,
)
from .shipped import about, find_config, shipped_configs

__all__ = [
    "CHANNEL_WORDS",
    "MAX_IMAGE_SIDE",
    "READABLE_CHANNELS",
    "AugmentConfig",
    "Bounds",
    "ColorJitterConfig",
    "Config",
    "DataConfig",
    "DistillConfig",
    "EmaConfig",
    "ModelConfig",
    "RandAugmentConfig",
    "TrainConfig",
    "about",
    "apply_override",
    "backbone_entry",
    "bounded",
    "dump_config",
    "find_config",
    "from_dict",
    "load_config",
    "looks_like_path",
    "parse_override",
    "read_yaml",
    "rebase_paths",
    "shipped_configs",
    "yaml_problem",
]
