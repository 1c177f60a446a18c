"""What ``cnnzoo train --data X`` trains when no config is given, and ``--model NAME``'s choices.

With no ``--model`` the choice is made by one quick check (:func:`pretrained_at_hand`): when the
weights of the shipped transfer recipe's backbone (timm's tf_efficientnet_lite0, 92% on
clothing-small) are in the cache or their server answers within seconds, that recipe fine-tunes
them; otherwise the shipped from-scratch recipe trains, shortened for a user in a hurry on data
nobody has measured (:data:`HURRIED`). ``--model NAME`` names a backbone (a torchvision model or
``timm/ARCH``), fine-tuned with the transfer recipe, or a shipped config. Each choice is a config
mapping and the one line that says what was chosen and why; nothing is written into a file.

Imports config, errors and model (weights and extractors; torch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..config import backbone_entry, read_yaml, shipped_configs
from ..errors import UserError
from ..model.extractors import TIMM_PREFIX, timm_package, torchvision_family
from ..model.weights import hub_file, offline, reachable, timm_weights, torchvision_weights

TRANSFER = "clothing_transfer"  # fine-tunes timm/tf_efficientnet_lite0: 92.4% on clothing-small
SCRATCH = "clothing_recipe"  # the best from-scratch row of the recipe ablation: 87.1%, 80 epochs
# The from-scratch recipe for data nobody has measured, with a user waiting: 30 epochs instead of
# 80 (the time grows with images x epochs), and without MixUp/CutMix, which pay off only over long
# schedules; TrivialAugment (the ablation's largest gain) and the average of the weights stay.
HURRIED = {"epochs": 30, "mixup": 0.0, "cutmix": 0.0, "mix_off_epochs": 0}
WEIGHTS_KEY = "model.layers.0.backbone.weights"


@dataclass(kw_only=True)
class Choice:
    """A config to train (a mapping, as a YAML file would hold it) and the line that says why."""

    raw: dict[str, Any]
    reason: str


def pretrained_at_hand(backbone: str) -> tuple[bool, str]:
    """Whether ``backbone``'s default pretrained weights are in the cache or can be fetched now
    (their server answers within seconds), and the words that say so, or why not and where the file goes."""
    if backbone.startswith(TIMM_PREFIX):
        try:
            timm_package()
        except UserError:
            return False, "the timm package is not installed (pip install 'cnnzoo[timm]')"
        source = timm_weights(backbone[len(TIMM_PREFIX) :])
        local, url, where = source.local_file(), source.url, source.where()
    else:
        weights = torchvision_weights(backbone, "DEFAULT")
        file = hub_file(weights.url)
        local, url = (file if file.is_file() else None), weights.url
        where = f"put {file.name} (from {url}) in {file.parent} (TORCH_HOME moves it)"
    if local is not None:
        return True, f"its pretrained weights are in the cache ({local})"
    host = urlparse(url).hostname
    if offline():
        return False, f"its pretrained weights are not in the cache and downloads are off (CNNZOO_OFFLINE); {where}"
    if reachable(url):
        return True, f"its pretrained weights download from {host}"
    return False, f"its pretrained weights are not in the cache and {host} cannot be reached; {where}"


def run_name_for(data: str) -> str:
    """A run name from the data's folder (a manifest's folder): ``~/photos`` -> ``photos``."""
    path = Path(data).expanduser().resolve()
    stem = path.parent.name if path.is_file() else path.name
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", stem).lstrip(".+-")[:100]
    return name or "train"


def _shipped(name: str) -> dict[str, Any]:
    return read_yaml(shipped_configs()[name])


def _transfer(backbone: str, data: str) -> dict[str, Any]:
    """The shipped transfer recipe with ``backbone`` (its default weights) in the backbone layer."""
    raw = _shipped(TRANSFER)
    _, args = backbone_entry(raw["model"]["layers"])
    args.update(name=backbone, weights="DEFAULT")
    raw["name"] = run_name_for(data)
    return raw


def _scratch(data: str) -> dict[str, Any]:
    raw = _shipped(SCRATCH)
    raw["train"].update(HURRIED)
    raw["name"] = run_name_for(data)
    return raw


def is_backbone(name: str) -> bool:
    """Whether ``name`` is a backbone cnnzoo can fine-tune: ``timm/ARCH`` or a usable torchvision model."""
    if name.startswith(TIMM_PREFIX):
        return True
    try:
        torchvision_family(name)
    except ValueError:
        return False
    return True


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


def default_choice(data: str, epochs: int | None = None) -> Choice:
    """No config, no ``--model``: fine-tune the transfer recipe's backbone when its weights are at
    hand, else train the from-scratch recipe (:data:`HURRIED`). ``epochs`` is ``--epochs``, for the line."""
    raw = _shipped(TRANSFER)
    backbone = backbone_entry(raw["model"]["layers"])[1]["name"]
    at_hand, why = pretrained_at_hand(backbone)
    if at_hand:
        epochs = epochs or raw["train"]["epochs"]
        return Choice(
            raw=_transfer(backbone, data),
            reason=f"no --config: fine-tuning {backbone} with the {TRANSFER} recipe ({_epochs(epochs)}), as {why}",
        )
    return Choice(
        raw=_scratch(data),
        reason=f"no --config: training the {SCRATCH} recipe's small ResNet from scratch "
        f"({_epochs(epochs or HURRIED['epochs'])}); {backbone} would be fine-tuned, but {why} to fine-tune it",
    )


def model_choice(name: str, data: str) -> Choice:
    """``--model NAME``: a backbone fine-tuned with the transfer recipe (its weights must be at
    hand), or a shipped config; else one line listing both kinds."""
    if is_backbone(name):
        at_hand, why = pretrained_at_hand(name)
        if not at_hand:
            raise UserError(f"--model {name}: {why}")
        reason = f"--model {name}: fine-tuning it with the {TRANSFER} recipe, as {why}"
        return Choice(raw=_transfer(name, data), reason=reason)
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    if stem in shipped_configs():
        raw = _shipped(stem)
        return Choice(raw=raw, reason=f"--model {name}: the shipped config {stem} ({shipped_configs()[stem]})")
    raise UserError(
        f"--model {name}: not a backbone nor a shipped config; give a torchvision model (resnet18, "
        f"mobilenet_v3_small, efficientnet_b0, convnext_tiny ...), timm/ARCH (timm/tf_efficientnet_lite0), "
        f"or a shipped config: {', '.join(shipped_configs())}"
    )
