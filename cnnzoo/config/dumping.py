"""A config written back as YAML the way a person would write it (a run folder's ``config.yaml``)."""

from __future__ import annotations

from typing import Any

import yaml

from .schema import Config


class _ReadableDumper(yaml.SafeDumper):
    """Block style for sections; one line for short lists and a layer's few arguments."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> Any:
    flow = all(not isinstance(v, (list, dict)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_dict(dumper: yaml.SafeDumper, data: dict) -> Any:
    flow = len(data) <= 4 and all(not isinstance(v, (list, dict)) for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


_ReadableDumper.add_representer(list, _represent_list)
_ReadableDumper.add_representer(dict, _represent_dict)


def dump_config(cfg: Config) -> str:
    """The config as a person would write it: name and seed first, then data, model, train."""
    raw = cfg.to_dict()
    ordered = {key: raw[key] for key in ("name", "seed", "data", "model", "train")}
    return yaml.dump(ordered, Dumper=_ReadableDumper, sort_keys=False, width=100)
