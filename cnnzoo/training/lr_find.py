"""The learning-rate range test, ``cnnzoo lr-find``: the test itself, its suggestion, its plot and
the config copy ``--apply`` writes (``<config>.lr.yaml``).

:func:`lr_find` trains the config's model for a few hundred steps on its real training data
while the learning rate grows exponentially from ``start`` to ``end``, records the
smoothed loss, and suggests the rate where the loss falls fastest (the steepest descent
of the smoothed curve against log(lr)), or a tenth of the rate at the lowest loss when
the curve has no clear descent. The model is thrown away; nothing trains for real.

Floor 7 (training): imports :mod:`cnnzoo.config`, :mod:`cnnzoo.console`, :mod:`cnnzoo.errors`,
:mod:`cnnzoo.files`, :mod:`cnnzoo.plots`, :mod:`cnnzoo.runtime.device` and, in training,
:mod:`~cnnzoo.training.setup` (what it starts from), :mod:`~cnnzoo.training.loop` (one step)
and :mod:`~cnnzoo.training.recipe` (the seed).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..config import Config, apply_override, load_config, parse_override, read_yaml, rebase_paths
from ..console import console
from ..errors import UserError
from ..files import write_text
from ..plots import pyplot, save_figure
from ..runtime.device import pick_device
from .loop import Stepper, training_inputs
from .recipe import seed_everything
from .setup import TrainingSetup, build_setup


@dataclass(kw_only=True)
class LRFind:
    lrs: list[float]
    losses: list[float]  # smoothed (debiased exponential average, as fastai's)
    suggestion: float
    how: str  # "steepest descent" or the fallback used
    plot: Path | None


def suggest_lr(lrs: list[float], losses: list[float], current: float) -> tuple[float, str]:
    """Where the loss falls fastest: the steepest slope of the (further smoothed) loss against
    log10(lr), looked for only inside the valley, the longest falling stretch of the curve
    (fastai's ``valley`` rule); early noise and the climb after the minimum are outside it.
    Falls back to a tenth of the rate at the lowest loss when there is no such stretch, and
    to ``current`` (the config's rate) when the loss never fell at all."""
    lrs_a, losses_a = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    n = len(losses_a)
    width = max(3, n // 20)
    padded = np.pad(losses_a, (width // 2, width - 1 - width // 2), mode="edge")
    smooth = np.convolve(padded, np.ones(width) / width, mode="valid")
    longest = [1] * n  # longest decreasing run (not necessarily contiguous) ending at i
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if smooth[i] < smooth[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[end] < longest[i]:
            end, start = i, i - longest[i]
    start = max(start, 0)
    falls = smooth[end] < 0.995 * smooth[start]  # by 0.5% at least: more than a ripple of noise
    if end - start >= max(5, n // 10) and falls:
        slopes = np.gradient(smooth, np.log10(lrs_a))[start : end + 1]
        if slopes.min() < 0:
            return float(lrs_a[start + int(np.argmin(slopes))]), "steepest descent of the loss"
    low = int(np.argmin(smooth))
    if smooth[low] > 0.995 * smooth[0]:
        return current, "the config's own rate: the loss never fell over the range; try more --steps"
    return float(lrs_a[low] / 10), "a tenth of the rate at the lowest loss (no long falling stretch)"


PLOT_FORMATS = (".png", ".svg", ".pdf")


def plot_path(out: str | Path | None, name: str, runs_root: str | Path = "runs") -> Path:
    """Where lr-find's plot goes: ``out`` when it names a .png/.svg/.pdf file, ``out/<name>.png``
    when it names a folder (an existing one, or a path without a suffix), by default
    ``<runs>/lr-find/<name>.png``."""
    if out is None:
        return Path(runs_root) / "lr-find" / f"{name}.png"
    path = Path(out)
    if path.is_dir() or not path.suffix or str(out).endswith(("/", "\\")):
        return path / f"{name}.png"
    if path.suffix.lower() not in PLOT_FORMATS:
        raise UserError(f"--out {out}: a plot is written as {', '.join(PLOT_FORMATS)} (or give a folder)")
    return path


def lr_find(
    config: Any,
    overrides: list[str] | None = None,
    *,
    steps: int = 200,
    start: float = 1e-7,
    end: float = 1.0,
    out: str | Path | None = None,
    runs_root: str | Path = "runs",
) -> LRFind:
    """The learning-rate range test on ``config``'s data and model; see the module docstring.

    The plot goes to :func:`plot_path`; :attr:`LRFind.plot` says where it went.
    """
    if not (0 < start < end) or steps < 10:
        raise UserError(f"lr-find: needs 0 < --start ({start:g}) < --end ({end:g}) and --steps >= 10 ({steps})")
    cfg = load_config(config, list(overrides or []))
    path = plot_path(out, cfg.run_name, runs_root)  # a bad --out is refused before training
    seed_everything(cfg.seed)
    setup = build_setup(cfg, pick_device(cfg.train.device))
    console.log(
        f"lr-find: {cfg.run_name}, {steps} steps from {start:g} to {end:g} on {len(setup.loaders.train_set)} "
        f"training images, batch {cfg.train.batch_size}"
    )
    lrs, smoothed = _range_test(setup, cfg, steps=steps, start=start, end=end)
    if len(lrs) < 10:
        raise UserError(f"lr-find: the loss diverged within {len(lrs)} steps from {start:g}; lower --start")
    suggestion, how = suggest_lr(lrs, smoothed, cfg.train.lr)
    _plot_lr(lrs, smoothed, suggestion, path, cfg.run_name)
    return LRFind(lrs=lrs, losses=smoothed, suggestion=suggestion, how=how, plot=path)


def _range_test(
    setup: TrainingSetup, cfg: Config, *, steps: int, start: float, end: float
) -> tuple[list[float], list[float]]:
    """Train ``setup``'s model while the rate grows exponentially from ``start`` to ``end``: the rates
    and the smoothed losses (debiased exponential average, as fastai's), up to where the loss diverges."""
    model, feed, optimizer = setup.model, setup.feed, setup.optimizer
    # the rate is set here, not by a schedule; a backbone keeps its share of it
    stepper = Stepper(model, optimizer, None, scaler=setup.scaler, grad_clip=cfg.train.grad_clip)
    ratios = [group["lr"] / cfg.train.lr for group in optimizer.param_groups]
    lrs, smoothed, average, best = [], [], 0.0, math.inf
    bar = console.bar(steps, "lr-find")
    model.train()
    batches = _epoch_after_epoch(setup.loaders.train)
    for step in range(steps):
        lr = start * (end / start) ** (step / (steps - 1))
        for group, ratio in zip(optimizer.param_groups, ratios):
            group["lr"] = lr * ratio
        x, y = training_inputs(next(batches), feed, setup.loaders.batch_augment)
        with feed.autocast():
            loss = setup.criterion(model(x), y)
        stepper.step(loss)
        average = 0.98 * average + 0.02 * float(loss.detach())
        debiased = average / (1 - 0.98 ** (step + 1))
        bar.update(1)
        if not math.isfinite(debiased) or (step > steps // 10 and debiased > 4 * best):
            break  # diverged: the rest of the range says nothing new
        best = min(best, debiased)
        lrs.append(lr)
        smoothed.append(debiased)
    bar.close()
    return lrs, smoothed


def _epoch_after_epoch(loader: Any) -> Iterator[Any]:
    """A loader's batches without end, each epoch in its own order (from the seed and the epoch)."""
    epoch = 0
    while True:
        epoch += 1
        loader.batch_sampler.set_epoch(epoch)
        yield from loader


def _plot_lr(lrs: list[float], losses: list[float], suggestion: float, path: Path, name: str) -> None:
    plt = pyplot()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(lrs, losses)
        ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested {suggestion:.2g}")
        ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title=f"lr-find: {name}")
        ax.legend()
        fig.tight_layout()
        save_figure(fig, path)
    except OSError as exc:
        raise UserError(f"{path}: cannot write the plot ({exc.strerror or exc})") from None


def apply_lr(
    config_path: str | Path,
    lr: float,
    *,
    overrides: list[str] | None = None,
    folder: str | Path = Path("runs") / "lr-find",
) -> Path:
    """The config file with ``overrides`` (``--set`` and the shortcuts, as lr-find ran it) and
    ``train.lr`` set, written as ``<folder>/<stem>.lr.yaml``; the original is untouched, and
    nothing is written next to it (a shipped ``configs/`` folder stays as shipped)."""

    source = Path(config_path)
    raw = read_yaml(source)
    rebase_paths(raw, source.parent)  # the copy lives in another folder: its paths must not move
    for text in overrides or []:
        apply_override(raw, *parse_override(text))
    rebase_paths(raw, Path.cwd())  # paths given on the command line were read from here
    if not isinstance(raw.get("train"), dict):  # `train:` with nothing under it reads as null
        raw["train"] = {}
    raw["train"]["lr"] = float(f"{lr:.3g}")
    load_config(raw)  # what is written must load
    target = Path(folder) / f"{source.stem}.lr{source.suffix or '.yaml'}"
    changes = "".join(
        f"\n#   --set {text}" if not text.endswith("!") else f"\n#   --unset {text[:-1]}" for text in overrides or []
    )
    header = f"# {source} with train.lr from cnnzoo lr-find ({lr:.3g}){changes}\n"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text(target, header + yaml.safe_dump(raw, sort_keys=False))
    except OSError as exc:
        raise UserError(f"{target}: cannot write ({exc.strerror or exc})") from None
    return target
