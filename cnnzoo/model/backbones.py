"""Pretrained feature extractors as one layer: ``- backbone: {name: resnet18, weights: DEFAULT}``.

What this module owns:

* **The layer.** :class:`Backbone` maps ``[B, in_channels, H, W]`` to a feature map ``[B, C, h, w]`` that
  the YAML head (``gap``, ``dropout``, ``dense`` ...) continues from. Its body is a torchvision
  classification model (``resnet18``, ``mobilenet_v2``, ``efficientnet_b0``, ``convnext_tiny``,
  ``vgg16`` ...) or, with the optional ``timm`` package, any timm model
  (``timm/tf_efficientnet_lite0``), cut before its pooling and classifier
  (:mod:`cnnzoo.model.extractors`).
* **Stages.** The extractor is an ordered list of stages (stem, the resolution stages,
  the last conv), each a few named sub-modules. ``freeze: true | false | N`` leaves the
  last N stages trainable; frozen stages keep ``requires_grad=False`` and stay in eval
  mode (BatchNorm statistics and dropout untouched) even while the model trains.
  :meth:`Backbone.run` applies a range of stages, which is how the frozen-feature cache
  (:mod:`cnnzoo.training.feature_cache`) splits the network.
* **Weights**, loaded only on request (:meth:`Backbone.load_pretrained`), never when a
  checkpoint is rebuilt: where they come from and how they are read is
  :mod:`cnnzoo.model.weights` (a torchvision weights name, timm's default pretrained weights, or
  a local state-dict file read as data only; ``CNNZOO_OFFLINE=1`` forbids downloads).
* **Preprocessing** that the weights expect (mean, std, input size), used by ``data``
  when the config leaves ``normalize: auto`` and ``image_size`` unset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import backbone_entry
from ..console import console
from ..errors import ConfigError, UserError
from .extractors import (
    TIMM_PREFIX,
    input_conv_name,
    timm_body,
    timm_package,
    torchvision_body,
    torchvision_family,
    unknown_timm,
    vision_models,
)
from .weights import (
    is_path,
    load_matching,
    read_state_file,
    timm_pretrained,
    torchvision_pretrained,
    torchvision_weights,
)

FreezeSetting = bool | int


@dataclass(kw_only=True)
class Preprocessing:
    """What a backbone's weights expect: RGB, this mean and std, this input size (H, W)."""

    mean: list[float]
    std: list[float]
    image_size: tuple[int, int]
    source: str  # e.g. "ResNet18_Weights.IMAGENET1K_V1" or "timm tf_efficientnet_lite0.in1k"


# ----------------------------------------------------------------------------- the layer


class Backbone(nn.Module):
    """A pretrained network's feature extractor: ``[B, in_channels, H, W] -> [B, C, h, w]``.

    ``in_channels`` (filled in from the input, as a conv's is) other than 3 gets a first
    convolution of that many channels, whose pretrained RGB weights are adapted on loading
    (:func:`cnnzoo.model.weights.adapt_input_conv`).

    ``weights`` is only recorded here; :meth:`load_pretrained` reads it. That keeps a
    model rebuilt from a checkpoint (which carries the trained weights) free of downloads.
    """

    def __init__(self, name: str, weights: Any = "DEFAULT", freeze: FreezeSetting = True, in_channels: int = 3):
        super().__init__()
        if not isinstance(name, str) or not name:
            raise ValueError("name: give a model name, e.g. resnet18 or timm/tf_efficientnet_lite0")
        self.name, self.weights, self.in_channels = name, weights, in_channels
        self.is_timm = name.startswith(TIMM_PREFIX)
        make_body = timm_body if self.is_timm else torchvision_body
        self.body, self.stages = make_body(name, in_channels)
        self.freeze = freeze
        self.set_trainable(trainable_stages(freeze, len(self.stages), "freeze"))

    # -- stages and freezing

    def set_trainable(self, count: int) -> None:
        """Leave the last ``count`` stages trainable and freeze the others."""
        self.trainable = count
        frozen = len(self.stages) - count
        covered = set()
        for index, stage in enumerate(self.stages):
            for unit in stage:
                for p in self.body.get_submodule(unit).parameters():
                    p.requires_grad_(index >= frozen)
                    covered.add(id(p))
        for p in self.body.parameters():  # outside every stage (a position embedding ...): with the first
            if id(p) not in covered:
                p.requires_grad_(frozen == 0)
        self.train(self.training)

    @property
    def frozen_stages(self) -> int:
        return len(self.stages) - self.trainable

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if mode:  # frozen stages never update BatchNorm statistics or drop activations
            for stage in self.stages[: self.frozen_stages]:
                for unit in stage:
                    self.body.get_submodule(unit).eval()
        return self

    def run(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Apply stages ``start`` to ``stop - 1`` (the whole extractor is ``run(x, 0, len(stages))``)."""
        for stage in self.stages[start:stop]:
            for unit in stage:
                x = self.body.get_submodule(unit)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward_features(x) if self.is_timm else self.body(x)

    def extra_repr(self) -> str:
        channels = f", in_channels={self.in_channels}" if self.in_channels != 3 else ""
        stages = f"stages={len(self.stages)}, trainable={self.trainable}"
        return f"name={self.name!r}, weights={self.weights!r}{channels}, {stages}"

    # -- weights

    def load_pretrained(self, key: str = "weights") -> None:
        """Load ``weights`` (a torchvision weights name, DEFAULT for timm, or a file) into the body.

        ``key`` is where the config sets them (``model.layers.0.backbone.weights``), for messages.
        """
        spec = self.weights
        if spec is None or spec is False:
            console.log(f"backbone {self.name}: random initialisation (weights: null)")
            return
        if is_path(spec):
            state, origin = read_state_file(Path(spec).expanduser(), self.name, key), spec
        elif self.is_timm:
            state, origin = timm_pretrained(self.name, spec, key)
        else:
            state, origin = torchvision_pretrained(self.name, spec, key)
        ignored = load_matching(self.body, state, self.name, origin, input_conv_name(self.body))
        note = (
            f"; ignored {len(ignored)} keys of the original classifier ({', '.join(ignored[:2])}...)" if ignored else ""
        )
        console.log(f"backbone {self.name}: loaded {origin}{note}")


def backbone_of(model: nn.Module) -> Backbone | None:
    """The first backbone layer inside ``model``, if any."""
    return next((m for m in model.modules() if isinstance(m, Backbone)), None)


def trainable_stages(setting: Any, total: int, key: str) -> int:
    """``freeze``/``unfreeze_stages`` value -> how many last stages train (of ``total``)."""
    if setting is True:
        return 0
    if setting is False or setting == "all":
        return total
    if isinstance(setting, int) and not isinstance(setting, bool) and 0 <= setting <= total:
        return setting
    raise ValueError(
        f"{key}: got {setting!r}; use true (all frozen), false (all trainable) or the number "
        f"of last stages to train, 0 to {total}"
    )


# ----------------------------------------------------------------------------- preprocessing


def absolute_weight_paths(layers: Any) -> None:
    """Make a backbone's ``weights`` file path absolute (in place), as data.root is in a run's config."""
    entry = backbone_entry(layers)
    if entry is not None and is_path(entry[1].get("weights")):
        entry[1]["weights"] = str(Path(entry[1]["weights"]).expanduser().resolve())


def preprocessing(where: str, args: dict[str, Any]) -> Preprocessing:
    """The mean, std and input size the backbone's weights were trained with (no download)."""
    name = args.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name: missing; name the network, e.g. backbone: {{name: resnet18}}")
    if name.startswith(TIMM_PREFIX):
        cfg = timm_package().models.get_pretrained_cfg(name[len(TIMM_PREFIX) :])
        if cfg is None:
            raise ConfigError(f"{where}.name: {unknown_timm(name[len(TIMM_PREFIX) :])}")
        return Preprocessing(
            mean=[float(v) for v in cfg.mean],
            std=[float(v) for v in cfg.std],
            image_size=(int(cfg.input_size[1]), int(cfg.input_size[2])),
            source=f"timm {cfg.architecture}",
        )
    try:
        torchvision_family(name)
    except ValueError as exc:
        raise ConfigError(f"{where}.name: {exc}") from None
    weights = args.get("weights", "DEFAULT")
    try:  # a file of weights of unknown origin: the architecture's usual preprocessing
        chosen = (
            vision_models().get_model_weights(name).DEFAULT
            if is_path(weights) or weights is None
            else torchvision_weights(name, weights)
        )
    except UserError as exc:
        raise ConfigError(str(exc)) from None
    transform = chosen.transforms()
    crop = transform.crop_size
    size = (int(crop[0]), int(crop[-1])) if isinstance(crop, (list, tuple)) else (int(crop), int(crop))
    return Preprocessing(
        mean=[float(v) for v in transform.mean],
        std=[float(v) for v in transform.std],
        image_size=size,
        source=f"{type(chosen).__name__}.{chosen.name}",
    )
