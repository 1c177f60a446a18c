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
import io
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .. import runs
from ..config import Config, apply_override, load_config, parse_override, read_yaml, rebase_paths, yaml_problem
from ..console import console
from ..errors import UserError, short_reason
from ..files import spreadsheet_safe, write_text
from ..plots import pyplot, save_figure
from ..runtime.device import pick_device
from .loop import BestEpoch, Stepper, training_inputs
from .recipe import seed_everything
from .run import TrainingInterrupted, train
from .setup import TrainingSetup, build_setup

# ----------------------------------------------------------------------------- lr-find


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


# ----------------------------------------------------------------------------- sweep


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["train.lr=0.01,0.003", ...]`` -> {key: [values]}; each value read as YAML."""

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
        try:
            values = [_number(yaml.safe_load(p)) for p in parts if p.strip()]
        except yaml.YAMLError as exc:
            raise UserError(
                f"--grid {key}: a value is not valid YAML ({yaml_problem(exc)}); write values like "
                f"0.01,0.003 or [16, 16],[24, 24]"
            ) from None
        except RecursionError:
            raise UserError(f"--grid {key}: a value is nested too deeply") from None
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


@dataclass(kw_only=True)
class SweepResult:
    folder: Path
    rows: list[dict[str, Any]]  # best first
    table_csv: Path
    table_md: Path
    plot: Path


MAX_COMBINATIONS = 1000  # runs one sweep makes; a bigger grid is sampled with --trials


def _combinations(grid: dict[str, list[Any]], trials: int | None, seed: int) -> list[dict[str, Any]]:
    """The combinations to run: all of them, or ``trials`` drawn at random. They are counted
    before any is made, so a huge grid is refused at once instead of being listed."""
    sizes = [len(values) for values in grid.values()]
    total = math.prod(sizes)
    if trials is None and total > MAX_COMBINATIONS:
        raise UserError(
            f"--grid: {' x '.join(map(str, sizes))} = {total:,} combinations, more than the "
            f"{MAX_COMBINATIONS:,} a sweep runs; sample some with --trials K"
        )
    if trials is not None and trials > MAX_COMBINATIONS:
        raise UserError(f"--trials {trials}: a sweep runs at most {MAX_COMBINATIONS:,} combinations")
    # random.sample picks the same positions from range(total) as from the listed combinations
    picked = range(total) if trials is None or trials >= total else random.Random(seed).sample(range(total), trials)
    return [_combination(grid, index) for index in picked]


def _combination(grid: dict[str, list[Any]], index: int) -> dict[str, Any]:
    """The ``index``-th combination in itertools.product's order (the last key changes fastest)."""
    picks = {}
    for key in reversed(list(grid)):
        index, pick = divmod(index, len(grid[key]))
        picks[key] = grid[key][pick]
    return {key: picks[key] for key in grid}


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


def sweep(
    config: str | Path,
    grid_items: list[str],
    *,
    trials: int | None = None,
    overrides: list[str] | None = None,
    runs_root: str | Path = "runs",
    quiet: bool = True,
    restart: bool = False,
) -> SweepResult:
    """Run every combination (see the module docstring); returns the comparison, best first.

    ``restart`` forgets the saved state of an earlier, unfinished or damaged, identical sweep.
    At the end ``<runs>/latest`` points at the best run.
    """

    grid = parse_grid(grid_items)
    base = list(overrides or [])
    cfg = load_config(config, base)  # every combination is checked before the first one runs
    combos = _combinations(grid, trials, cfg.seed)
    for combo in combos:
        load_config(config, base + [_override(k, v) for k, v in combo.items()])
    name = f"{cfg.run_name}-sweep"
    folder = Path(runs_root) / name
    key = hashlib.sha1(
        json.dumps([str(Path(config).resolve()), base, grid, trials], sort_keys=True, default=str).encode()
    ).hexdigest()[:8]
    state_path = folder / f"sweep-{key}.json"
    state = None if restart else read_state(state_path, combos, folder)
    if state is None:
        runs_state = [{"values": c, "run": None, "done": False, "seconds": 0.0} for c in combos]
        state = {"config": str(config), "grid": grid, "trials": trials, "overrides": base, "runs": runs_state}
    folder.mkdir(parents=True, exist_ok=True)
    done = sum(r["done"] for r in state["runs"])
    if done:
        console.log(f"sweep {state_path.name}: {done} of {len(state['runs'])} runs already done; continuing")
    for number, entry in enumerate(state["runs"], 1):
        if not entry["done"]:
            values = ", ".join(f"{k}={v}" for k, v in entry["values"].items())
            console.log(f"sweep run {number}/{len(state['runs'])}: {values}")
            _run_entry(
                entry,
                config=config,
                overrides=[*base, f"name={name}"],
                runs_root=runs_root,
                quiet=quiet,
                save=lambda: _write_json(state_path, state),
            )
    result = _compare(state["runs"], list(grid), folder, key)
    runs.point_latest(Path(runs_root), Path(result.rows[0]["run"]))
    return result


def _run_entry(
    entry: dict[str, Any],
    *,
    config: str | Path,
    overrides: list[str],
    runs_root: str | Path,
    quiet: bool,
    save: Callable[[], None],
) -> None:
    """Train one combination, or resume its interrupted run; its run folder and time go into
    ``entry``, saved with ``save`` (an interrupted run too, so the next sweep resumes it)."""
    start = time.perf_counter()
    last = Path(entry["run"]) / "last.pt" if entry["run"] else None
    try:
        if last is not None and last.exists():
            run_dir = train(resume=last, out=runs_root, quiet=quiet)
        else:
            combination = [_override(k, v) for k, v in entry["values"].items()]
            run_dir = train(str(config), overrides + combination, out=runs_root, quiet=quiet)
    except TrainingInterrupted as exc:
        entry.update(run=str(exc.run_dir), seconds=entry["seconds"] + time.perf_counter() - start)
        save()
        raise
    entry.update(run=str(run_dir), done=True, seconds=entry["seconds"] + time.perf_counter() - start)
    save()


MAX_STATE_BYTES = 16 * 2**20  # a state of MAX_COMBINATIONS runs takes well under 1 MB


def read_state(path: Path, combos: list[dict[str, Any]], folder: Path) -> dict | None:
    """The saved state of this sweep, or None when there is none yet. A state that is not what
    this sweep wrote (not JSON, another shape, other combinations, a run outside ``folder``) is
    refused in one line that offers ``--restart``; a finished run whose folder has gone is run again.
    """

    def damaged(why: str) -> UserError:
        return UserError(
            f"{path}: damaged sweep state ({why}); start the sweep over with --restart "
            f"(run folders already made stay where they are)"
        )

    if not os.path.lexists(path):
        return None
    if not path.is_file():  # a FIFO would block the read, a folder cannot be read
        raise damaged("not a regular file")
    if path.stat().st_size > MAX_STATE_BYTES:
        raise damaged(f"larger than {MAX_STATE_BYTES // 2**20} MB")
    try:
        state = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise damaged(f"not JSON: {short_reason(exc, 80)}") from None
    except OSError as exc:
        raise damaged(f"unreadable: {exc.strerror or exc}") from None
    runs = state.get("runs") if isinstance(state, dict) else None
    if not isinstance(runs, list) or len(runs) != len(combos):
        raise damaged(f"expected a list of {len(combos)} runs under 'runs'")
    for number, (entry, combo) in enumerate(zip(runs, combos), 1):
        why = _entry_problem(entry, combo, folder)
        if why:
            raise damaged(f"run {number}: {why}")
        if entry["done"] and not (Path(entry["run"]) / "metrics.csv").is_file():
            console.warn(f"sweep run {number}: {entry['run']} has no metrics.csv any more; running it again")
            entry.update(run=None, done=False, seconds=0.0)
    return state


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _entry_problem(entry: Any, combo: dict[str, Any], folder: Path) -> str:
    """Why one run's record cannot be this sweep's, or "" when it can."""
    if not isinstance(entry, dict) or set(entry) != {"values", "run", "done", "seconds"}:
        return "expected the keys values, run, done and seconds"
    if json.dumps(entry["values"], sort_keys=True) != json.dumps(combo, sort_keys=True):
        return f"its values are not this sweep's ({json.dumps(combo)[:80]})"
    if not isinstance(entry["done"], bool):
        return "done should be true or false"
    seconds = entry["seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < 1e9:
        return "seconds should be a number of seconds"
    run = entry["run"]
    if run is None:
        return "done without a run folder" if entry["done"] else ""
    if not isinstance(run, str) or not run or "\0" in run:
        return "run should be a run folder's path or null"
    inside = os.path.realpath(run).startswith(os.path.realpath(folder) + os.sep)
    return "" if inside else f"its run folder {run[:80]} is not inside {folder}"


def _write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=1, default=str))


def _compare(runs: list[dict[str, Any]], keys: list[str], folder: Path, key: str) -> SweepResult:
    rows = []
    curves = []
    for entry in runs:
        run = Path(entry["run"])
        epochs, accs, best_epoch = _validation_curve(run)
        rows.append(
            {
                **entry["values"],
                "best_val_acc": accs[epochs.index(best_epoch)],
                "best_epoch": best_epoch,
                "seconds": round(entry["seconds"], 1),
                "run": str(run),
            }
        )
        curves.append((epochs, accs))
    order = sorted(range(len(rows)), key=lambda i: -rows[i]["best_val_acc"])
    rows = [rows[i] for i in order]
    curves = [curves[i] for i in order]
    columns = list(rows[0])
    table_csv, table_md, plot = folder / f"sweep-{key}.csv", folder / f"sweep-{key}.md", folder / f"sweep-{key}.png"
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow([spreadsheet_safe(c) for c in columns])
    writer.writerows([[spreadsheet_safe(row[c]) for c in columns] for row in rows])
    write_text(table_csv, table.getvalue())
    write_text(table_md, markdown_table(rows, columns))
    _plot_sweep(rows, curves, keys, plot)
    return SweepResult(folder=folder, rows=rows, table_csv=table_csv, table_md=table_md, plot=plot)


def _validation_curve(run: Path) -> tuple[list[int], list[float], int]:
    """(epochs, validation accuracies, the epoch best.pt holds) of a run: its metrics.csv read back
    through training's own rule (:class:`~cnnzoo.training.loop.BestEpoch`, with the run's config)."""
    path = run / "metrics.csv"
    try:
        with open(path, newline="") as f:
            rows = [
                {
                    "epoch": int(r["epoch"]),
                    "val_acc": float(r["val_acc"]),
                    "val_loss": float(r["val_loss"]),
                    **({"val_map": float(r["val_map"])} if r.get("val_map") else {}),
                }
                for r in csv.DictReader(f)
            ]
    except (OSError, KeyError, TypeError, ValueError, csv.Error) as exc:
        raise UserError(
            f"{path}: cannot read the run's validation figures ({exc}); start the sweep over with --restart"
        ) from None
    if not rows or not all(math.isfinite(r["val_acc"]) for r in rows):
        raise UserError(f"{path}: no finished epoch to compare; start the sweep over with --restart")
    best = BestEpoch.of(load_config(run / "config.yaml").train, multi_label="val_map" in rows[0])
    for row in rows:
        best.update(row, row["epoch"])
    return [r["epoch"] for r in rows], [r["val_acc"] for r in rows], best.epoch


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(key: str, value: Any) -> str:
        text = f"{100 * value:.2f}%" if key == "best_val_acc" else str(value)
        return " ".join(text.split()).replace("|", "\\|")  # one line, no column break

    lines = ["| " + " | ".join(cell("", c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c, r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _plot_sweep(rows: list[dict], curves: list[tuple[list[int], list[float]]], keys: list[str], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for rank, (row, (epochs, accs)) in enumerate(zip(rows, curves)):
        label = ", ".join(f"{k.split('.')[-1]}={row[k]}" for k in keys) + f" ({100 * row['best_val_acc']:.1f}%)"
        ax.plot(epochs, [100 * a for a in accs], marker="o", linewidth=2.5 if rank == 0 else 1.2, label=label)
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="sweep, best first")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
