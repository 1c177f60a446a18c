"""Pretrained feature extractors as one layer: ``- backbone: {name: resnet18, weights: DEFAULT}``.

What this module owns:

* **Architectures.** A torchvision classification model (``resnet18``, ``mobilenet_v2``,
  ``efficientnet_b0``, ``convnext_tiny``, ``vgg16`` ...) or, with the optional ``timm``
  package, any timm model (``timm/tf_efficientnet_lite0``), cut before its pooling and
  classifier, so it maps ``[B, 3, H, W]`` to a feature map ``[B, C, h, w]`` that the YAML
  head (``gap``, ``dropout``, ``dense`` ...) continues from.
* **Stages.** The extractor is an ordered list of stages (stem, the resolution stages,
  the last conv), each a few named sub-modules. ``freeze: true | false | N`` leaves the
  last N stages trainable; frozen stages keep ``requires_grad=False`` and stay in eval
  mode (BatchNorm statistics and dropout untouched) even while the model trains.
  :meth:`Backbone.run` applies a range of stages, which is how the frozen-feature cache
  (:mod:`cnnzoo.training.transfer`) splits the network.
* **Weights**, loaded only on request (:meth:`Backbone.load_pretrained`), never when a
  checkpoint is rebuilt: a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1``) read
  from the torch hub cache or downloaded into it, timm's default pretrained weights
  (Hugging Face cache), or a local state-dict file read with ``weights_only=True``.
  ``CNNZOO_OFFLINE=1`` forbids downloads; a missing file is then one line saying where
  to put it.
* **Preprocessing** that the weights expect (mean, std, input size), used by ``data``
  when the config leaves ``normalize: auto`` and ``image_size`` unset.
"""

from __future__ import annotations

import difflib
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..checkpoint import refused_global
from ..config import backbone_entry, looks_like_path
from ..console import console
from ..errors import ConfigError, UserError, short_reason
from ..files import cache_home
from ..runtime.versions import check as check_torch_pair

check_torch_pair()  # this module imports torchvision (timm too) when it runs: a mismatched pair gets one line first

TIMM_PREFIX = "timm/"
# torchvision families cut at a known place; the value says how
_RESNET_LIKE = ("resnet", "resnext", "wide_resnet")
_FEATURES_LIKE = ("vgg", "alexnet", "mobilenet_v2", "mobilenet_v3", "efficientnet", "convnext", "squeezenet")
_REGNET = ("regnet",)
FreezeSetting = bool | int


def offline() -> bool:
    """``CNNZOO_OFFLINE=1`` (tests set it): never download weights, say where the file goes."""
    return os.environ.get("CNNZOO_OFFLINE", "").strip().lower() in ("1", "true", "yes")


@dataclass(kw_only=True)
class Preprocessing:
    """What a backbone's weights expect: RGB, this mean and std, this input size (H, W)."""

    mean: list[float]
    std: list[float]
    image_size: tuple[int, int]
    source: str  # e.g. "ResNet18_Weights.IMAGENET1K_V1" or "timm tf_efficientnet_lite0.in1k"


# ----------------------------------------------------------------------------- building the body


def _timm():
    try:
        import timm  # lazy: an optional extra (pip install 'cnnzoo[timm]'), needed by timm/ backbones only
    except ImportError:
        raise UserError(
            "backbone timm/...: the timm package is not installed; pip install 'cnnzoo[timm]' (or pip install timm)"
        ) from None
    return timm


def _vision_models():
    """``torchvision.models``, imported when a torchvision backbone is first asked for."""
    import torchvision.models  # lazy: seconds to import; a plain CNN (and predict with one) never needs it

    return torchvision.models


def _torchvision_names() -> list[str]:
    models = _vision_models()
    return sorted(models.list_models(module=models))


def _family(name: str) -> str | None:
    for family, prefixes in (("resnet", _RESNET_LIKE), ("features", _FEATURES_LIKE), ("regnet", _REGNET)):
        if name.startswith(prefixes):
            return family
    return None


def _torchvision_family(name: str) -> str:
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


def _torchvision_body(name: str) -> tuple[nn.Module, list[list[str]]]:
    family = _torchvision_family(name)
    full = _vision_models().get_model(name, weights=None)
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


def _unknown_timm(arch: str) -> str:
    close = difflib.get_close_matches(arch, _timm().list_models(), n=1, cutoff=0.6)
    return f"timm has no model {arch!r}" + (f"; did you mean timm/{close[0]}?" if close else "")


def _timm_body(name: str) -> tuple[nn.Module, list[list[str]]]:
    timm = _timm()
    arch = name[len(TIMM_PREFIX) :]
    try:
        body = timm.create_model(arch, pretrained=False, num_classes=0)
    except RuntimeError:  # timm: "Unknown model (...)"
        raise ValueError(_unknown_timm(arch)) from None
    groups = timm.models.group_modules(body, body.group_matcher(coarse=True))
    owner = {n: g for g, names in groups.items() for n in names}
    stages = [_covering_units(names, owner, g) for g, names in sorted(groups.items())]
    return body, [s for s in stages if s]


# ----------------------------------------------------------------------------- the layer


class Backbone(nn.Module):
    """A pretrained network's feature extractor: ``[B, 3, H, W] -> [B, C, h, w]``.

    ``weights`` is only recorded here; :meth:`load_pretrained` reads it. That keeps a
    model rebuilt from a checkpoint (which carries the trained weights) free of downloads.
    """

    def __init__(self, name: str, weights: Any = "DEFAULT", freeze: FreezeSetting = True):
        super().__init__()
        if not isinstance(name, str) or not name:
            raise ValueError("name: give a model name, e.g. resnet18 or timm/tf_efficientnet_lite0")
        self.name, self.weights = name, weights
        self.is_timm = name.startswith(TIMM_PREFIX)
        self.body, self.stages = _timm_body(name) if self.is_timm else _torchvision_body(name)
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
        return f"name={self.name!r}, weights={self.weights!r}, stages={len(self.stages)}, trainable={self.trainable}"

    # -- weights

    def load_pretrained(self, key: str = "weights") -> None:
        """Load ``weights`` (a torchvision weights name, DEFAULT for timm, or a file) into the body.

        ``key`` is where the config sets them (``model.layers.0.backbone.weights``), for messages.
        """
        spec = self.weights
        if spec is None or spec is False:
            console.log(f"backbone {self.name}: random initialisation (weights: null)")
            return
        if _is_path(spec):
            state, origin = _read_state_file(Path(spec).expanduser(), self.name, key), spec
        elif self.is_timm:
            state, origin = _timm_pretrained(self.name, spec, key)
        else:
            state, origin = _torchvision_pretrained(self.name, spec, key)
        ignored = _load_matching(self.body, state, self.name, origin)
        note = (
            f"; ignored {len(ignored)} keys of the original classifier ({', '.join(ignored[:2])}...)" if ignored else ""
        )
        console.log(f"backbone {self.name}: loaded {origin}{note}")


def _is_path(spec: Any) -> bool:
    return looks_like_path(spec) or (isinstance(spec, str) and Path(spec).expanduser().is_file())


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


def _load_matching(body: nn.Module, state: dict[str, torch.Tensor], name: str, origin: str) -> list[str]:
    """Load the keys the body has; every body key must be there with its shape."""
    own = body.state_dict()
    if not any(k in own for k in state):  # "module." (DataParallel) or "model." prefixes
        for prefix in ("module.", "model.", "backbone.", "body."):
            stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if any(k in own for k in stripped):
                state = stripped
                break
    missing = [k for k in own if k not in state]
    if missing:
        raise UserError(
            f"backbone {name}: {origin} lacks {len(missing)} of the backbone's {len(own)} tensors "
            f"(first: {missing[0]}); is it a state dict of {name}?"
        )
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise UserError(
                f"backbone {name}: {origin}: {key} has shape {list(state[key].shape)}, the model "
                f"needs {list(value.shape)}; is it a state dict of {name}?"
            )
    body.load_state_dict({k: state[k] for k in own})
    return [k for k in state if k not in own]


def _read_state_file(path: Path, name: str, key: str = "weights") -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file, or a torch file read as plain data only."""

    if not path.is_file():
        raise UserError(
            f"backbone {name}: weights file not found: {path}; give the file with "
            f"--set {key}=PATH (a relative path in a config file is read from the file's folder)"
        )
    try:
        from safetensors import SafetensorError  # lazy: optional (timm brings it); without it no .safetensors is read
    except ImportError:
        SafetensorError = ()  # catches nothing: without the package no .safetensors file is read
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # lazy: optional, as above

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except SafetensorError as exc:  # a damaged or hostile header: too large, an unknown dtype ...
        raise UserError(
            f"backbone {name}: {path}: not a readable safetensors file ({short_reason(exc, 100)})"
        ) from None
    except pickle.UnpicklingError as exc:
        asked = refused_global(exc)
        raise UserError(
            f"backbone {name}: {path}: refused: loading it would call {asked or 'Python code'}, "
            f"which is neither a tensor nor plain data; cnnzoo reads weights as data only "
            f"(weights_only=True): save them with torch.save(model.state_dict(), PATH)"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, ImportError, TypeError, KeyError) as exc:
        raise UserError(f"backbone {name}: {path}: not a readable state dict ({short_reason(exc)})") from None
    for wrapper in ("state_dict", "model_state", "model"):  # common wrappers
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"backbone {name}: {path}: expected a state dict (names -> tensors)")
    return state


def _torchvision_weights(name: str, spec: Any):
    enum = _vision_models().get_model_weights(name)
    label = str(spec).split(".")[-1]
    if label not in enum.__members__:
        choices = ", ".join(["DEFAULT", *[m for m in enum.__members__ if m != "DEFAULT"]])
        raise UserError(
            f"backbone {name}: weights {spec!r} unknown; use one of {choices}, a path to a state dict file, or null"
        )
    return enum[label]


def _torchvision_pretrained(name: str, spec: Any, key: str) -> tuple[dict[str, torch.Tensor], str]:
    weights = _torchvision_weights(name, spec)
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    origin = f"{type(weights).__name__}.{weights.name}"
    where = (
        f"put {file.name} (from {weights.url}) in {file.parent} (TORCH_HOME moves it), "
        f"or give a state dict file with --set {key}=PATH"
    )
    if not file.is_file() and offline():
        raise UserError(
            f"backbone {name}: {origin} is not in the torch hub cache and downloads are off (CNNZOO_OFFLINE); {where}"
        )
    try:
        state = weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except Exception as exc:  # URLError, timeouts, a bad hash: all mean "get the file another way"
        raise UserError(f"backbone {name}: could not download {origin} ({short_reason(exc, 120)}); {where}") from None
    return state, f"{origin} from {file}"


@dataclass(kw_only=True)
class TimmWeights:
    """Where timm's default pretrained weights for one model come from and where cnnzoo looks."""

    repo: str  # the Hugging Face repository, e.g. timm/tf_efficientnet_lite0.in1k
    file: str  # e.g. model.safetensors
    url: str
    folder: Path  # cnnzoo's own place for the file: $CNNZOO_HOME/weights/<repo>

    def local_file(self) -> Path | None:
        """The file in cnnzoo's folder or in the Hugging Face cache, without touching the network."""
        if (self.folder / self.file).is_file():
            return self.folder / self.file
        try:
            from huggingface_hub import try_to_load_from_cache  # lazy: comes with timm, an optional extra
        except ImportError:
            return None
        for candidate in dict.fromkeys([self.file, "model.safetensors", "pytorch_model.bin"]):
            found = try_to_load_from_cache(self.repo, candidate)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
        return None


def timm_weights(arch: str) -> TimmWeights:
    """timm's default pretrained weights for ``arch``: repository, file, URL, cnnzoo's folder for them."""
    cfg = _timm().models.get_pretrained_cfg(arch)
    if cfg is not None and cfg.hf_hub_id:
        repo, file = cfg.hf_hub_id.split("@")[0], cfg.hf_hub_filename or "model.safetensors"
        url = f"https://huggingface.co/{repo}/resolve/main/{file}"
    elif cfg is not None and cfg.url:
        repo, url = f"timm/{arch}", cfg.url
        file = Path(urlparse(url).path).name
    else:
        raise UserError(
            f"backbone timm/{arch}: timm has no pretrained weights for it; "
            f"use weights: null (random initialisation) or a state dict file"
        )
    return TimmWeights(repo=repo, file=file, url=url, folder=cache_home() / "weights" / repo)


def _timm_pretrained(name: str, spec: Any, key: str) -> tuple[dict[str, torch.Tensor], str]:
    """timm's pretrained weights, from cnnzoo's folder or the Hugging Face cache, else downloaded.

    Offline (CNNZOO_OFFLINE or HF_HUB_OFFLINE) nothing reaches for the network: a missing file is
    one line at once, not huggingface_hub's retries.
    """
    timm = _timm()
    arch = name[len(TIMM_PREFIX) :]
    if spec not in ("DEFAULT", True):
        raise UserError(
            f"backbone {name}: weights {spec!r}: timm backbones take DEFAULT (timm's "
            f"pretrained weights), a path to a state dict file, or null"
        )
    source = timm_weights(arch)
    where = (
        f"put {source.file} (from {source.url}) in {source.folder} (CNNZOO_HOME moves it), "
        f"or give a state dict file with --set {key}=PATH"
    )
    local = source.local_file()
    hub_offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes")
    if local is None and (offline() or hub_offline):
        raise UserError(
            f"backbone {name}: timm's pretrained weights ({source.repo}) are not on this machine "
            f"and downloads are off ({'CNNZOO_OFFLINE' if offline() else 'HF_HUB_OFFLINE'}); {where}"
        )
    # timm adapts its own file (key renames, the classifier dropped) whether read here or downloaded
    overlay = {"state_dict": _read_state_file(local, name, key), "source": None} if local else None
    try:
        state = timm.create_model(arch, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay).state_dict()
    except Exception as exc:  # hub errors come in many types; all mean "get the file another way"
        raise UserError(
            f"backbone {name}: timm's pretrained weights could not be "
            f"{'loaded from ' + str(local) if local else 'downloaded'} ({short_reason(exc, 120)}); "
            f"{where}"
        ) from None
    return state, f"timm {arch} ({local or source.repo})"


# ----------------------------------------------------------------------------- preprocessing


def absolute_weight_paths(layers: Any) -> None:
    """Make a backbone's ``weights`` file path absolute (in place), as data.root is in a run's config."""
    entry = backbone_entry(layers)
    if entry is not None and _is_path(entry[1].get("weights")):
        entry[1]["weights"] = str(Path(entry[1]["weights"]).expanduser().resolve())


def preprocessing(where: str, args: dict[str, Any]) -> Preprocessing:
    """The mean, std and input size the backbone's weights were trained with (no download)."""
    name = args.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name: missing; name the network, e.g. backbone: {{name: resnet18}}")
    if name.startswith(TIMM_PREFIX):
        cfg = _timm().models.get_pretrained_cfg(name[len(TIMM_PREFIX) :])
        if cfg is None:
            raise ConfigError(f"{where}.name: {_unknown_timm(name[len(TIMM_PREFIX) :])}")
        return Preprocessing(
            mean=[float(v) for v in cfg.mean],
            std=[float(v) for v in cfg.std],
            image_size=(int(cfg.input_size[1]), int(cfg.input_size[2])),
            source=f"timm {cfg.architecture}",
        )
    try:
        _torchvision_family(name)
    except ValueError as exc:
        raise ConfigError(f"{where}.name: {exc}") from None
    weights = args.get("weights", "DEFAULT")
    try:  # a file of weights of unknown origin: the architecture's usual preprocessing
        chosen = (
            _vision_models().get_model_weights(name).DEFAULT
            if _is_path(weights) or weights is None
            else _torchvision_weights(name, weights)
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
