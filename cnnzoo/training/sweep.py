"""Grid or random sweeps, ``cnnzoo sweep``: the combinations, the sweep's state file, and its
outputs (a CSV and a Markdown table, best first, and one plot of the validation curves).

:func:`sweep` runs every combination of ``--grid key=v1,v2`` values (or ``--trials K`` random
ones) as a normal run under ``<runs>/<name>-sweep/<N>/``, one after another, then writes a
comparison table (CSV and Markdown) and one plot of the validation curves, best first.
The sweep's state is a JSON file beside them: run it again and it resumes the run that
was interrupted and runs the combinations it has not finished.

Floor 7 (training): imports :mod:`cnnzoo.config`, :mod:`cnnzoo.console`, :mod:`cnnzoo.errors`,
:mod:`cnnzoo.files`, :mod:`cnnzoo.plots`, :mod:`cnnzoo.runs` (``latest``) and, in training,
:mod:`~cnnzoo.training.run` (each combination is a run) and :mod:`~cnnzoo.training.loop`
(the best epoch, by training's own rule).
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import runs
from ..config import load_config, yaml_problem
from ..console import console
from ..errors import UserError, short_reason
from ..files import spreadsheet_safe, write_text
from ..plots import pyplot, save_figure
from .loop import BestEpoch
from .run import TrainingInterrupted, train


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
