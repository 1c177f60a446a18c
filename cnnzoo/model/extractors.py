"""Pretrained networks cut into feature extractors: the architectures a ``backbone`` layer builds.

Owns the two sources of architectures and where each is cut: a torchvision classification
model (``resnet*``, ``vgg*``, ``mobilenet_*``, ``efficientnet*``, ``convnext*``, ``regnet*`` ...)
cut before its pooling and classifier by family (:func:`torchvision_body`), or any timm model
(``timm/<model>``, the optional ``timm`` package) made without its head (:func:`timm_body`); each
body comes with its stages, the module paths that :class:`cnnzoo.model.backbones.Backbone`
freezes and runs a range of, and reads images of any channel count (its first convolution,
:func:`input_conv_name`, made for them). Weights are not read here (:mod:`cnnzoo.model.weights`).
Imports torch; torchvision and timm when an architecture is first asked for, after the
torch/torchvision pair is checked (at import).
"""

from __future__ import annotations

import difflib
from collections import OrderedDict

from torch import nn

from ..errors import UserError
from ..runtime.versions import check as check_torch_pair

check_torch_pair()  # this module imports torchvision (timm too) when it runs: a mismatched pair gets one line first

TIMM_PREFIX = "timm/"
# torchvision families cut at a known place; the value says how
_RESNET_LIKE = ("resnet", "resnext", "wide_resnet")
_FEATURES_LIKE = ("vgg", "alexnet", "mobilenet_v2", "mobilenet_v3", "efficientnet", "convnext", "squeezenet")
_REGNET = ("regnet",)


def timm_package():
    """The ``timm`` package, or one line saying how to install it."""
    try:
        import timm  # lazy: an optional extra (pip install 'cnnzoo[timm]'), needed by timm/ backbones only
    except ImportError:
        raise UserError(
            "backbone timm/...: the timm package is not installed; pip install 'cnnzoo[timm]' (or pip install timm)"
        ) from None
    return timm


def vision_models():
    """``torchvision.models``, imported when a torchvision backbone is first asked for."""
    import torchvision.models  # lazy: seconds to import; a plain CNN (and predict with one) never needs it

    return torchvision.models


def _torchvision_names() -> list[str]:
    models = vision_models()
    return sorted(models.list_models(module=models))


def _family(name: str) -> str | None:
    for family, prefixes in (("resnet", _RESNET_LIKE), ("features", _FEATURES_LIKE), ("regnet", _REGNET)):
        if name.startswith(prefixes):
            return family
    return None


def torchvision_family(name: str) -> str:
    """The family of a usable torchvision model; ValueError in words for any other name."""
    known = _torchvision_names()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else "; e.g. resnet18, mobilenet_v3_small, efficientnet_b0"
        raise ValueError(f"unknown torchvision model {name!r}{hint} (timm models: name: timm/<model>)")
    family = _family(name)
    if family is None:
        supported = ", ".join(p + "*" for p in _RESNET_LIKE + _FEATURES_LIKE + _REGNET)
        raise ValueError(f"torchvision model {name!r} cannot be used as a backbone yet; supported: {supported}")
    return family


def input_conv_name(body: nn.Module) -> str:
    """The module path of the convolution that reads the image: the one timm's model card names
    (``pretrained_cfg.first_conv``), else the body's first ``Conv2d``."""
    named = getattr(body, "pretrained_cfg", {}).get("first_conv")
    if isinstance(named, str) and isinstance(body.get_submodule(named), nn.Conv2d):
        return named
    return next(path for path, module in body.named_modules() if isinstance(module, nn.Conv2d))


def _take_channels(body: nn.Module, in_channels: int) -> None:
    """Make the body's image-reading convolution take ``in_channels`` (its other settings kept)."""
    path = input_conv_name(body)
    conv = body.get_submodule(path)
    if conv.in_channels == in_channels:
        return
    body.set_submodule(
        path,
        nn.Conv2d(
            in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
        ),
    )


def torchvision_body(name: str, in_channels: int = 3) -> tuple[nn.Module, list[list[str]]]:
    """A torchvision model without its pooling and classifier for images of ``in_channels``, and
    its stages (module paths)."""
    body, stages = _torchvision_cut(name)
    _take_channels(body, in_channels)
    return body, stages


def _torchvision_cut(name: str) -> tuple[nn.Module, list[list[str]]]:
    family = torchvision_family(name)
    full = vision_models().get_model(name, weights=None)
    if family == "resnet":
        stem = ["conv1", "bn1", "relu", "maxpool"]
        units = OrderedDict((n, getattr(full, n)) for n in stem + ["layer1", "layer2", "layer3", "layer4"])
        return nn.Sequential(units), [stem, ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    if family == "regnet":
        blocks = [f"trunk_output.{n}" for n, _ in full.trunk_output.named_children()]
        body = nn.Sequential(OrderedDict(stem=full.stem, trunk_output=full.trunk_output))
        return body, [["stem"]] + [[b] for b in blocks]
    # the state-dict keys keep torchvision's names ("features.0.0.weight"), so a whole-model
    # state dict loads into the body as it is
    body = nn.Sequential(OrderedDict(features=full.features))
    stages: list[list[str]] = []
    current: list[str] = []
    by_pool = name.startswith(("vgg", "alexnet"))  # one stage per resolution, ending at a pool
    for child, module in full.features.named_children():
        current.append(f"features.{child}")
        if not by_pool or isinstance(module, nn.MaxPool2d):
            stages.append(current)
            current = []
    if current:
        stages.append(current)
    return body, stages


def _covering_units(names: list[str], owner: dict[str, int], group: int) -> list[str]:
    """The shortest module paths that hold ``names`` and nothing of another group."""
    units: list[str] = []
    for name in names:
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            inside = [g for n, g in owner.items() if n == prefix or n.startswith(prefix + ".")]
            if all(g == group for g in inside):
                if prefix not in units:
                    units.append(prefix)
                break
    return units


def unknown_timm(arch: str) -> str:
    """The refusal of an unknown timm name, with the closest name timm knows."""
    close = difflib.get_close_matches(arch, timm_package().list_models(), n=1, cutoff=0.6)
    return f"timm has no model {arch!r}" + (f"; did you mean timm/{close[0]}?" if close else "")


def timm_body(name: str, in_channels: int = 3) -> tuple[nn.Module, list[list[str]]]:
    """A timm model made without its head for ``in_channels`` (timm's ``in_chans``), and its
    stages from its own coarse module groups."""
    timm = timm_package()
    arch = name[len(TIMM_PREFIX) :]
    try:
        body = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_channels)
    except RuntimeError:  # timm: "Unknown model (...)"
        raise ValueError(unknown_timm(arch)) from None
    groups = timm.models.group_modules(body, body.group_matcher(coarse=True))
    owner = {n: g for g, names in groups.items() for n in names}
    stages = [_covering_units(names, owner, g) for g, names in sorted(groups.items())]
    return body, [s for s in stages if s]
