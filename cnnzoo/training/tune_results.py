"""What ``cnnzoo tune`` leaves in ``<runs>/<name>-tune/``: the study's trials as a table (``trials.csv``,
``trials.md``, best first), ``best.yaml`` (the config with the best trial's values; a saved
config has no ``tune:`` section) and ``trials.png`` (each trial's value, pruned and failed ones marked, and the best
so far).

Floor 7 (training): imports :mod:`cnnzoo.config`, :mod:`cnnzoo.files`, :mod:`cnnzoo.plots`, and in
training :mod:`~cnnzoo.training.sweep` (its Markdown table) and :mod:`~cnnzoo.training.tune_space`;
the study object is handed in (optuna is never imported here).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import dump_config, load_config
from ..files import spreadsheet_safe, write_text
from ..plots import pyplot, save_figure
from .sweep import markdown_table
from .tune_space import Dimension, as_override

STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}


@dataclass(kw_only=True)
class TuneResult:
    """The study as this worker last read it: rows best first (finished trials before the others)."""

    folder: Path
    study: str
    rows: list[dict[str, Any]]
    table_csv: Path
    table_md: Path
    best_yaml: Path | None
    plot: Path
    best_run: Path | None

    @property
    def finished(self) -> int:
        return sum(r["state"] in ("COMPLETE", "PRUNED") for r in self.rows)


def write_results(
    study: Any, *, config: str | Path, overrides: list[str], dims: list[Dimension], folder: Path, monitor: str
) -> TuneResult:
    """Write the table, best.yaml and the plot of every trial of ``study`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    minimize = monitor == "val_loss"
    rows = [_row(t, dims) for t in trials]
    rows.sort(key=lambda r: (STATE_ORDER.get(r["state"], 5), _sort_value(r["value"], minimize), r["trial"]))
    columns = ["trial", "state", "value", *(d.key for d in dims), "best_epoch", "epochs", "seconds", "run"]
    table_csv, table_md, plot = folder / "trials.csv", folder / "trials.md", folder / "trials.png"
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow([spreadsheet_safe(c) for c in columns])
    writer.writerows([[spreadsheet_safe(r.get(c, "")) for c in columns] for r in rows])
    write_text(table_csv, text.getvalue())
    write_text(table_md, markdown_table(rows, columns))
    best = rows[0] if rows and rows[0]["state"] == "COMPLETE" else None
    best_yaml = None
    if best is not None:
        best_yaml = folder / "best.yaml"
        cfg = load_config(config, [*overrides, *(as_override(d.key, best[d.key]) for d in dims)])
        write_text(best_yaml, dump_config(cfg))
    _plot(trials, plot, minimize=minimize, label=monitor)
    return TuneResult(
        folder=folder,
        study=study.study_name,
        rows=rows,
        table_csv=table_csv,
        table_md=table_md,
        best_yaml=best_yaml,
        plot=plot,
        best_run=Path(best["run"]) if best and best.get("run") else None,
    )


def _row(trial: Any, dims: list[Dimension]) -> dict[str, Any]:
    attrs = trial.user_attrs
    value = trial.value if trial.value is not None else _last(trial.intermediate_values)
    return {
        "trial": trial.number,
        "state": trial.state.name,
        "value": "" if value is None else round(float(value), 6),
        **{d.key: trial.params.get(d.key, "") for d in dims},
        "best_epoch": attrs.get("best_epoch", ""),
        "epochs": attrs.get("epochs", len(trial.intermediate_values) or ""),
        "seconds": attrs.get("seconds", ""),
        "run": attrs.get("run", ""),
    }


def _last(values: dict[int, float]) -> float | None:
    return values[max(values)] if values else None


def _sort_value(value: Any, minimize: bool) -> float:
    if value == "":
        return float("inf")
    return value if minimize else -value


def _plot(trials: list[Any], path: Path, *, minimize: bool, label: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    marks = {"COMPLETE": ("o", "finished"), "PRUNED": ("x", "pruned (its last epoch)"), "FAIL": ("s", "failed")}
    for state, (marker, name) in marks.items():
        points = [(t.number, _value(t)) for t in trials if t.state.name == state and _value(t) is not None]
        if points:
            ax.scatter(*zip(*points), marker=marker, label=name)
    best, steps = None, []
    for t in sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.number):
        if best is None or (t.value < best if minimize else t.value > best):
            best = t.value
        steps.append((t.number, best))
    if steps:
        ax.step(*zip(*steps), where="post", label="best so far")
    ax.set(xlabel="trial", ylabel=label, title="cnnzoo tune: the study's trials")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def _value(trial: Any) -> float | None:
    return trial.value if trial.value is not None else _last(trial.intermediate_values)
