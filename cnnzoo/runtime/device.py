"""Devices and precision: which device runs, in which memory format and dtype, and how a batch gets there.

Training, evaluation and prediction all use these, so a model is run the same way
everywhere, and inference code does not import the training engine.
"""

from __future__ import annotations

import copy
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch

from ..console import warn
from ..errors import ConfigError


def pick_device(setting: str, key: str = "train.device") -> torch.device:
    """``auto`` | cpu | cuda | cuda:N | mps -> a device that exists here; ``key`` names the setting in errors."""
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise ConfigError(f"{key}: unknown device {setting!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{key}: {setting} asked for, but this machine/torch build has no usable CUDA GPU; use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}: {setting} asked for, but there are only {torch.cuda.device_count()} GPUs")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{key}: mps asked for, but it is not available here; use --device cpu")
    return device


def prefers_channels_last(device: torch.device) -> bool:
    """channels_last measured faster for conv nets on CPU (oneDNN) and CUDA (tensor cores) alike."""
    return device.type in ("cpu", "cuda")


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``train.amp`` asks for; for ``auto``, the one :func:`measure_amp` would try."""
    if device.type != "cuda":
        if setting in ("bf16", "fp16"):
            warn(f"train.amp: {setting} applies on CUDA only; training in float32 on {device}")
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[setting]


AMP_MARGIN = 1.10  # autocast must be this much faster to be chosen: float32 is the safer arithmetic


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_amp(
    model: torch.nn.Module,
    batch_shape: tuple[int, ...],
    *,
    num_outputs: int,
    device: torch.device,
    candidate: torch.dtype | None,
    channels_last: bool,
    steps: int = 8,
) -> dict[str, float]:
    """Images/s of forward + backward in float32 and under ``candidate`` autocast, on a copy of
    ``model`` with a random batch: small networks can run faster in float32 even on tensor
    cores (measured on an H100: the clothing CNN at 64 px, batch 32, 7,034 vs 6,457 img/s)."""

    probe = copy.deepcopy(model).train()
    x, y = _probe_batch(batch_shape, num_outputs=num_outputs, device=device, channels_last=channels_last)
    rates = {}
    for dtype in (None, candidate):
        context = nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
        name = str(dtype).replace("torch.", "") if dtype else "float32"
        rates[name] = _images_per_second(probe, x, y, context, steps=steps)
    return rates


def _probe_batch(
    batch_shape: tuple[int, ...], *, num_outputs: int, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch and labels for a speed probe, in the memory format training uses."""
    x = torch.randn(batch_shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, max(2, num_outputs), (batch_shape[0],), device=device)


COMPILE_MARGIN = 1.10  # compiling must save this much of the run's time: eager is simpler to debug


def measure_compile(
    model: torch.nn.Module,
    batch_shape: tuple[int, ...],
    *,
    num_outputs: int,
    device: torch.device,
    channels_last: bool,
    steps: int = 8,
) -> dict[str, float]:
    """``train.compile: auto``'s probe, built like :func:`measure_amp`'s: images/s of forward +
    backward eager and under ``torch.compile`` on copies of ``model``, and the seconds the
    compiled copy's first step took (the compilation)."""
    x, y = _probe_batch(batch_shape, num_outputs=num_outputs, device=device, channels_last=channels_last)
    eager = _images_per_second(copy.deepcopy(model).train(), x, y, nullcontext(), steps=steps)
    compiled = copy.deepcopy(model).train()
    compiled.compile()
    start = time.perf_counter()
    out = compiled(x)
    torch.nn.functional.cross_entropy(out.float(), y % out.shape[1]).backward()
    _sync(device)
    compile_seconds = time.perf_counter() - start
    rate = _images_per_second(compiled, x, y, nullcontext(), steps=steps)
    return {"eager": eager, "compiled": rate, "compile_seconds": compile_seconds}


def choose_compile(rates: dict[str, float], images: int) -> bool:
    """Compile when the run's ``images`` take :data:`COMPILE_MARGIN` less time compiled, the
    compilation counted, than eager."""
    eager_seconds = images / rates["eager"]
    compiled_seconds = rates["compile_seconds"] + images / rates["compiled"]
    return compiled_seconds * COMPILE_MARGIN <= eager_seconds


def _images_per_second(probe: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, context, *, steps: int) -> float:
    """Forward + backward steps of ``probe`` on one batch under ``context``, timed after three warm-up steps."""

    def step() -> None:
        with context:
            out = probe(x)
            loss = torch.nn.functional.cross_entropy(out.float(), y % out.shape[1])
        loss.backward()
        probe.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: kernels chosen, memory allocated
        step()
    _sync(x.device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(x.device)
    return steps * len(x) / (time.perf_counter() - start)


def choose_amp(rates: dict[str, float], candidate: torch.dtype | None) -> torch.dtype | None:
    """The candidate autocast dtype when it beats float32 by :data:`AMP_MARGIN`, else None (float32)."""
    if candidate is None:
        return None
    name = str(candidate).replace("torch.", "")
    return candidate if rates[name] >= AMP_MARGIN * rates["float32"] else None


def norm_tensors(mean: list[float], std: list[float], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1))


def to_model_input(
    images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, *, device: torch.device, channels_last: bool = False
) -> torch.Tensor:
    """uint8 [B, C, H, W] -> normalised float32 on ``device`` (the copy overlaps when pinned)."""
    x = images.to(device, non_blocking=True).float().div_(255.0).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@dataclass(kw_only=True)
class Feed:
    """How a loader's batch reaches the network: device, normalisation, memory format, autocast.

    uint8 image batches are normalised on the device; float batches (cached features)
    are only moved. One object, so training, validation, evaluation and the feature
    cache agree.
    """

    device: torch.device
    norm: tuple[torch.Tensor, torch.Tensor]
    channels_last: bool = False
    autocast_dtype: torch.dtype | None = None

    def inputs(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dtype == torch.uint8:
            return to_model_input(batch, *self.norm, device=self.device, channels_last=self.channels_last)
        x = batch.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def without_autocast(self) -> Feed:
        """The same feed in float32: what validation uses, so that ``cnnzoo evaluate`` (float32)
        reproduces the figures training recorded, on CUDA too."""
        return replace(self, autocast_dtype=None)

    def describe(self) -> str:
        mean, std = (t.flatten().tolist() for t in self.norm)
        return f"mean={[round(m, 6) for m in mean]} std={[round(s, 6) for s in std]} {self.autocast_dtype}"


def cpu_count() -> int:
    """The cores this process may run on (its CPU affinity), which can be fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
