"""Tuning a recipe: the learning-rate range test (``cnnzoo lr-find``) and grid or random sweeps (``cnnzoo sweep``).

**lr-find** trains the config's model for a few hundred steps on its real training data
while the learning rate grows exponentially from ``start`` to ``end``, records the
smoothed loss, and suggests the rate where the loss falls fastest (the steepest descent
of the smoothed curve against log(lr)), or a tenth of the rate at the lowest loss when
the curve has no clear descent. The model is thrown away; nothing trains for real.

**sweep** runs every combination of ``--grid key=v1,v2`` values (or ``--trials K`` random
ones) as a normal run under ``<runs>/<name>-sweep/<N>/``, one after another, then writes a
comparison table (CSV and Markdown) and one plot of the validation curves, best first.
The sweep's state is a JSON file beside them: run it again and it resumes the run that
was interrupted and runs the combinations it has not finished.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .config import load_config
from .console import console
from .errors import UserError


# ----------------------------------------------------------------------------- lr-find

@dataclass
class LRFind:
    lrs: list[float]
    losses: list[float]  # smoothed (debiased exponential average, as fastai's)
    suggestion: float
    how: str  # "steepest descent" or the fallback used
    plot: Optional[Path]


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
        slopes = np.gradient(smooth, np.log10(lrs_a))[start:end + 1]
        if slopes.min() < 0:
            return float(lrs_a[start + int(np.argmin(slopes))]), "steepest descent of the loss"
    low = int(np.argmin(smooth))
    if smooth[low] > 0.995 * smooth[0]:
        return current, "the config's own rate: the loss never fell over the range; try more --steps"
    return float(lrs_a[low] / 10), "a tenth of the rate at the lowest loss (no long falling stretch)"


def lr_find(config: Any, overrides: Optional[list[str]] = None, steps: int = 200, start: float = 1e-7,
            end: float = 1.0, out: Optional[str | Path] = None) -> LRFind:
    """The learning-rate range test on ``config``'s data and model; see the module docstring."""
    from .device import pick_device
    from .engine import Stepper, build_parts, seed_everything

    if not (0 < start < end) or steps < 10:
        raise UserError(f"lr-find: needs 0 < --start ({start:g}) < --end ({end:g}) and --steps >= 10 ({steps})")
    cfg = load_config(config, list(overrides or []))
    dev = pick_device(cfg.train.device)
    seed_everything(cfg.seed)
    parts = build_parts(cfg, dev)
    model, feed, optimizer, loader = parts.model, parts.feed, parts.optimizer, parts.loaders.train
    stepper = Stepper(model, optimizer, None, parts.scaler, cfg.train.grad_clip)  # the rate is set here
    ratios = [group["lr"] / cfg.train.lr for group in optimizer.param_groups]  # a backbone keeps its share
    console.log(f"lr-find: {cfg.run_name}, {steps} steps from {start:g} to {end:g} on {len(parts.loaders.train_set)} "
                f"training images, batch {cfg.train.batch_size}")
    lrs, smoothed, average, best = [], [], 0.0, math.inf
    bar = console.bar(steps, "lr-find")
    model.train()
    epoch, batches = 0, iter(())
    for step in range(steps):
        lr = start * (end / start) ** (step / (steps - 1))
        for group, ratio in zip(optimizer.param_groups, ratios):
            group["lr"] = lr * ratio
        try:
            images, labels = next(batches)
        except StopIteration:
            epoch += 1
            loader.batch_sampler.set_epoch(epoch)
            batches = iter(loader)
            images, labels = next(batches)
        with feed.autocast():
            loss = parts.criterion(model(feed.inputs(images)), labels.to(dev))
        stepper.step(loss)
        value = float(loss.detach())
        average = 0.98 * average + 0.02 * value
        debiased = average / (1 - 0.98 ** (step + 1))
        bar.update(1)
        if not math.isfinite(debiased) or (step > steps // 10 and debiased > 4 * best):
            break  # diverged: the rest of the range says nothing new
        best = min(best, debiased)
        lrs.append(lr)
        smoothed.append(debiased)
    bar.close()
    if len(lrs) < 10:
        raise UserError(f"lr-find: the loss diverged within {len(lrs)} steps from {start:g}; lower --start")
    suggestion, how = suggest_lr(lrs, smoothed, cfg.train.lr)
    path = Path(out) if out else Path("runs") / "lr-find" / f"{cfg.run_name}.png"
    _plot_lr(lrs, smoothed, suggestion, path, cfg.run_name)
    return LRFind(lrs, smoothed, suggestion, how, path)


def _plot_lr(lrs: list[float], losses: list[float], suggestion: float, path: Path, name: str) -> None:
    from .plots import _pyplot

    plt = _pyplot()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(lrs, losses)
        ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested {suggestion:.2g}")
        ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title=f"lr-find: {name}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
    except OSError as exc:
        raise UserError(f"{path}: cannot write the plot ({exc.strerror or exc})") from None


def apply_lr(config_path: str | Path, lr: float) -> Path:
    """A copy of the config file with ``train.lr`` set: ``<stem>.lr.yaml`` beside it (the original is untouched)."""
    import yaml

    source = Path(config_path)
    raw = yaml.safe_load(source.read_text()) or {}
    raw.setdefault("train", {})["lr"] = float(f"{lr:.3g}")
    target = source.with_name(f"{source.stem}.lr{source.suffix or '.yaml'}")
    header = f"# {source.name} with train.lr from cnnzoo lr-find ({lr:.3g})\n"
    try:
        target.write_text(header + yaml.safe_dump(raw, sort_keys=False))
    except OSError as exc:
        raise UserError(f"{target}: cannot write ({exc.strerror or exc})") from None
    return target


# ----------------------------------------------------------------------------- sweep

def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["train.lr=0.01,0.003", ...]`` -> {key: [values]}; each value read as YAML."""
    import yaml

    grid: dict[str, list[Any]] = {}
    for item in items:
        key, _, raw = item.partition("=")
        key = key.strip()
        if not key or not _:
            raise UserError(f"--grid {item}: expected key=v1,v2,... e.g. --grid train.lr=0.01,0.003")
        parts, depth, current = [], 0, ""
        for ch in raw:  # split on commas outside brackets: [1, 2] stays one value
            depth += ch in "[{"
            depth -= ch in "]}"
            if ch == "," and depth == 0:
                parts.append(current)
                current = ""
            else:
                current += ch
        parts.append(current)
        values = [_number(yaml.safe_load(p)) for p in parts if p.strip()]
        if not values:
            raise UserError(f"--grid {item}: no values after '='")
        if key in grid:
            raise UserError(f"--grid {key}: given twice; list all its values in one --grid")
        grid[key] = values
    return grid


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``3e-3`` as a string; a sweep table wants the number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


@dataclass
class SweepResult:
    folder: Path
    rows: list[dict[str, Any]]  # best first
    table_csv: Path
    table_md: Path
    plot: Path


def _combinations(grid: dict[str, list[Any]], trials: Optional[int], seed: int) -> list[dict[str, Any]]:
    every = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    if trials is not None and trials < len(every):
        every = random.Random(seed).sample(every, trials)
    return every


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


def sweep(config: str | Path, grid_items: list[str], trials: Optional[int] = None,
          overrides: Optional[list[str]] = None, runs_root: str | Path = "runs", quiet: bool = True) -> SweepResult:
    """Run every combination (see the module docstring); returns the comparison, best first."""
    from .engine import TrainingInterrupted, train

    grid = parse_grid(grid_items)
    base = list(overrides or [])
    cfg = load_config(config, base)  # every combination is checked before the first one runs
    combos = _combinations(grid, trials, cfg.seed)
    for combo in combos:
        load_config(config, base + [_override(k, v) for k, v in combo.items()])
    name = f"{cfg.run_name}-sweep"
    folder = Path(runs_root) / name
    key = hashlib.sha1(json.dumps([str(Path(config).resolve()), base, grid, trials], sort_keys=True,
                                  default=str).encode()).hexdigest()[:8]
    state_path = folder / f"sweep-{key}.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {
        "config": str(config), "grid": grid, "trials": trials, "overrides": base,
        "runs": [{"values": c, "run": None, "done": False, "seconds": 0.0} for c in combos]}
    folder.mkdir(parents=True, exist_ok=True)
    todo = [r for r in state["runs"] if not r["done"]]
    if len(todo) < len(state["runs"]):
        console.log(f"sweep {state_path.name}: {len(state['runs']) - len(todo)} of {len(state['runs'])} "
                    f"runs already done; continuing")
    for number, entry in enumerate(state["runs"], 1):
        if entry["done"]:
            continue
        values = ", ".join(f"{k}={v}" for k, v in entry["values"].items())
        console.log(f"sweep run {number}/{len(state['runs'])}: {values}")
        start = time.perf_counter()
        last = Path(entry["run"]) / "last.pt" if entry["run"] else None
        try:
            if last is not None and last.exists():
                run_dir = train(resume=last, out=runs_root, quiet=quiet)
            else:
                run_dir = train(str(config), base + [f"name={name}"] +
                                [_override(k, v) for k, v in entry["values"].items()], out=runs_root, quiet=quiet)
        except TrainingInterrupted as exc:
            entry["run"], entry["seconds"] = str(exc.run_dir), entry["seconds"] + time.perf_counter() - start
            _write_json(state_path, state)
            raise
        entry.update(run=str(run_dir), done=True, seconds=entry["seconds"] + time.perf_counter() - start)
        _write_json(state_path, state)
    return _compare(state, folder, key)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def _compare(state: dict, folder: Path, key: str) -> SweepResult:
    rows = []
    curves = []
    for entry in state["runs"]:
        run = Path(entry["run"])
        with open(run / "metrics.csv", newline="") as f:
            metrics = list(csv.DictReader(f))
        accs = [float(m["val_acc"]) for m in metrics]
        best = int(np.argmax(accs))
        rows.append({**entry["values"], "best_val_acc": accs[best], "best_epoch": int(metrics[best]["epoch"]),
                     "seconds": round(entry["seconds"], 1), "run": str(run)})
        curves.append(([int(m["epoch"]) for m in metrics], accs))
    order = sorted(range(len(rows)), key=lambda i: -rows[i]["best_val_acc"])
    rows = [rows[i] for i in order]
    curves = [curves[i] for i in order]
    columns = list(rows[0])
    table_csv, table_md, plot = folder / f"sweep-{key}.csv", folder / f"sweep-{key}.md", folder / f"sweep-{key}.png"
    with open(table_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    table_md.write_text(markdown_table(rows, columns))
    _plot_sweep(rows, curves, list(state["grid"]), plot)
    return SweepResult(folder, rows, table_csv, table_md, plot)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(key: str, value: Any) -> str:
        return f"{100 * value:.2f}%" if key == "best_val_acc" else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c, r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _plot_sweep(rows: list[dict], curves: list[tuple[list[int], list[float]]], keys: list[str], path: Path) -> None:
    from .plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for rank, (row, (epochs, accs)) in enumerate(zip(rows, curves)):
        label = ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in keys) + f" ({100 * row['best_val_acc']:.1f}%)"
        ax.plot(epochs, [100 * a for a in accs], marker="o", linewidth=2.5 if rank == 0 else 1.2, label=label)
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="sweep, best first")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
