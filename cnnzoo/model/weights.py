"""A backbone's pretrained weights: where they come from, read as data only, and loaded.

Owns the three sources of weights and how each is found: a torchvision weights name
(``DEFAULT``, ``IMAGENET1K_V1``) read from the torch hub cache or downloaded into it, timm's
default pretrained weights (cnnzoo's folder, the Hugging Face cache, or downloaded), and a local
state-dict file (``.safetensors``, or a torch file read with ``weights_only=True``). A state dict
is loaded key by key into the body (:func:`load_matching`). ``CNNZOO_OFFLINE=1`` (:func:`offline`)
forbids downloads; a missing file is then one line saying where to put it. Without the setting, a
download is tried only after the weights' server answers within seconds (:func:`reachable`): with
no network the same one line comes at once, not a hub library's retries. Imports torch,
checkpoint (the refused global's name) and :mod:`cnnzoo.model.extractors`.
"""

from __future__ import annotations

import http.client
import os
import pickle
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..checkpoint import refused_global
from ..config import looks_like_path
from ..config.loading import WEIGHT_FILE_SUFFIXES
from ..errors import UserError, short_reason
from ..files import cache_home
from .extractors import TIMM_PREFIX, timm_package, vision_models


def offline() -> bool:
    """``CNNZOO_OFFLINE=1`` (tests set it): never download weights, say where the file goes."""
    return os.environ.get("CNNZOO_OFFLINE", "").strip().lower() in ("1", "true", "yes")


REACH_SECONDS = 3.0  # how long a host may take to accept a connection before downloads count as impossible


def reachable(url: str, seconds: float = REACH_SECONDS) -> bool:
    """Whether ``url``'s server answers an HTTP HEAD request (any status) within ``seconds``, name
    lookup included (which no socket timeout bounds, hence the thread): the quick "can this be
    downloaded" check. An answer is asked for, not only a connection, since a proxy or sandbox may
    accept every connection and pass nothing on."""
    parts = urlparse(url)
    answered: list[bool] = []

    def ask() -> None:
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = kind(parts.hostname or "", parts.port, timeout=seconds)
        try:
            connection.request("HEAD", parts.path or "/")
            connection.getresponse()
            answered.append(True)
        except (OSError, http.client.HTTPException, ValueError):
            pass
        finally:
            connection.close()

    probe = threading.Thread(target=ask, daemon=True, name="cnnzoo-reach")
    probe.start()
    probe.join(seconds)
    return bool(answered)


def is_path(spec: Any) -> bool:
    """Whether a ``weights`` value names a file rather than a weights name."""
    return looks_like_path(spec) or (isinstance(spec, str) and Path(spec).expanduser().is_file())


def adapt_input_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """An RGB first convolution's weights [out, 3, kh, kw] for images of ``channels``: one channel
    takes the sum over RGB (a grey image then gives what the RGB weights give for that grey in all
    three channels); other counts repeat R, G, B, R ... and scale by 3 / channels, which keeps the
    response's size (exactly so for a multiple of 3 channels that are all equal), timm's
    ``in_chans`` rule."""
    if channels == weight.shape[1]:
        return weight
    source = weight.float()
    if channels == 1:
        adapted = source.sum(dim=1, keepdim=True)
    else:
        repeats = -(-channels // source.shape[1])
        adapted = source.repeat(1, repeats, 1, 1)[:, :channels] * (source.shape[1] / channels)
    return adapted.to(weight.dtype)


def load_matching(
    body: nn.Module, state: dict[str, torch.Tensor], name: str, origin: str, input_conv: str | None = None
) -> list[str]:
    """Load the keys the body has; every body key must be there with its shape. ``input_conv``:
    the image-reading convolution, whose RGB weights are adapted to the body's channel count
    (:func:`adapt_input_conv`)."""
    own = body.state_dict()
    if not any(k in own for k in state):  # "module." (DataParallel) or "model." prefixes
        for prefix in ("module.", "model.", "backbone.", "body."):
            stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if any(k in own for k in stripped):
                state = stripped
                break
    key = f"{input_conv}.weight"
    if input_conv and key in own and key in state and state[key].dim() == 4 and state[key].shape[1] == 3:
        state = {**state, key: adapt_input_conv(state[key], own[key].shape[1])}
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


def read_state_file(path: Path, name: str, key: str = "weights") -> dict[str, torch.Tensor]:
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


def torchvision_weights(name: str, spec: Any):
    """A weights name (``DEFAULT``, ``IMAGENET1K_V1``, ``ResNet18_Weights.DEFAULT``) -> the enum member."""
    enum = vision_models().get_model_weights(name)
    label = str(spec).split(".")[-1]
    if label not in enum.__members__:
        choices = ", ".join(["DEFAULT", *[m for m in enum.__members__ if m != "DEFAULT"]])
        raise UserError(
            f"backbone {name}: weights {spec!r} unknown; use one of {choices}, a path to a state dict file, or null"
        )
    return enum[label]


def hub_file(url: str) -> Path:
    """Where torch's hub cache keeps the file downloaded from ``url`` (TORCH_HOME moves it)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def torchvision_pretrained(name: str, spec: Any, key: str) -> tuple[dict[str, torch.Tensor], str]:
    """A torchvision weights name's state dict, from the torch hub cache or downloaded, and where from."""
    weights = torchvision_weights(name, spec)
    file = hub_file(weights.url)
    origin = f"{type(weights).__name__}.{weights.name}"
    where = (
        f"put {file.name} (from {weights.url}) in {file.parent} (TORCH_HOME moves it), "
        f"or give a state dict file with --set {key}=PATH"
    )
    if not file.is_file() and offline():
        raise UserError(
            f"backbone {name}: {origin} is not in the torch hub cache and downloads are off (CNNZOO_OFFLINE); {where}"
        )
    if not file.is_file() and not reachable(weights.url):
        raise UserError(
            f"backbone {name}: {origin} is not in the torch hub cache and {urlparse(weights.url).hostname} "
            f"cannot be reached (no network?); {where}"
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
        """The file in cnnzoo's folder (its own name, else the one state dict file there, by any
        name: ``.safetensors``, ``.pth``, ``.pt``, ``.bin``), or in the Hugging Face cache; without
        touching the network."""
        if (self.folder / self.file).is_file():
            return self.folder / self.file
        if self.folder.is_dir():
            found = sorted(p for p in self.folder.iterdir() if p.suffix in WEIGHT_FILE_SUFFIXES and p.is_file())
            if len(found) == 1:
                return found[0]
        try:
            from huggingface_hub import try_to_load_from_cache  # lazy: comes with timm, an optional extra
        except ImportError:
            return None
        for candidate in dict.fromkeys([self.file, "model.safetensors", "pytorch_model.bin"]):
            found = try_to_load_from_cache(self.repo, candidate)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
        return None

    def where(self, key: str | None = None) -> str:
        """Where a user puts the file by hand (and, given the config ``key``, the other way): the
        words every refusal ends with."""
        put = f"put {self.file} (from {self.url}) in {self.folder} (CNNZOO_HOME moves it)"
        return f"{put}, or give a state dict file with --set {key}=PATH" if key else put


def timm_weights(arch: str) -> TimmWeights:
    """timm's default pretrained weights for ``arch``: repository, file, URL, cnnzoo's folder for them."""
    cfg = timm_package().models.get_pretrained_cfg(arch)
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


def timm_pretrained(name: str, spec: Any, key: str) -> tuple[dict[str, torch.Tensor], str]:
    """timm's pretrained weights, from cnnzoo's folder or the Hugging Face cache, else downloaded.

    Offline (CNNZOO_OFFLINE or HF_HUB_OFFLINE) nothing reaches for the network: a missing file is
    one line at once, not huggingface_hub's retries.
    """
    timm = timm_package()
    arch = name[len(TIMM_PREFIX) :]
    if spec not in ("DEFAULT", True):
        raise UserError(
            f"backbone {name}: weights {spec!r}: timm backbones take DEFAULT (timm's "
            f"pretrained weights), a path to a state dict file, or null"
        )
    source = timm_weights(arch)
    where = source.where(key)
    local = source.local_file()
    hub_offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes")
    if local is None and (offline() or hub_offline):
        raise UserError(
            f"backbone {name}: timm's pretrained weights ({source.repo}) are not on this machine "
            f"and downloads are off ({'CNNZOO_OFFLINE' if offline() else 'HF_HUB_OFFLINE'}); {where}"
        )
    if local is None and not reachable(source.url):
        raise UserError(
            f"backbone {name}: timm's pretrained weights ({source.repo}) are not on this machine "
            f"and {urlparse(source.url).hostname} cannot be reached (no network?); {where}"
        )
    # timm adapts its own file (key renames, the classifier dropped) whether read here or downloaded
    overlay = {"state_dict": read_state_file(local, name, key), "source": None} if local else None
    try:
        state = timm.create_model(arch, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay).state_dict()
    except Exception as exc:  # hub errors come in many types; all mean "get the file another way"
        raise UserError(
            f"backbone {name}: timm's pretrained weights could not be "
            f"{'loaded from ' + str(local) if local else 'downloaded'} ({short_reason(exc, 120)}); "
            f"{where}"
        ) from None
    return state, f"timm {arch} ({local or source.repo})"
