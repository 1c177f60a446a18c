"""``cnnzoo tune``: a hyperparameter search on Optuna that any number of workers join.

:func:`tune` opens (or joins) an Optuna study in a storage URL, runs this worker's share of trials
(``trials``), each a normal training run under ``<runs>/<name>-tune/<N>/`` with the values Optuna's
sampler (TPE by default) suggests, reporting the monitored metric every epoch so the pruner (median
by default, or Hyperband) stops poor trials early. At the end it writes the whole study's table (CSV
and Markdown, best first), ``best.yaml`` (the config with the best values) and a plot of the trials.

Storage: the default is Optuna's journal file ``<runs>/<name>-tune/study.log``; ``journal:///rel.log``
and ``journal:////abs/study.log`` name one, ``sqlite:///``, ``postgresql://`` and ``mysql://`` an
SQLAlchemy database. A trial left running by a killed worker is marked failed and queued again: on a
database by Optuna's heartbeat, on a journal file by the next worker on the same machine (the
process that ran it is gone).

Floor 7 (training): imports optuna lazily (the ``tune`` extra), :mod:`cnnzoo.config`,
:mod:`cnnzoo.console`, :mod:`cnnzoo.errors`, :mod:`cnnzoo.runs` (``latest``) and, in training,
:mod:`~cnnzoo.training.run` (each trial is a run), :mod:`~cnnzoo.training.tune_space` (the space),
:mod:`~cnnzoo.training.tune_results` (the table, best.yaml, the plot) and
:mod:`~cnnzoo.training.loop` (the monitored metric).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import runs
from ..config import load_config
from ..console import console
from ..errors import UserError, short_reason
from .events import EpochEnd, StopTraining
from .loop import monitored_metric
from .run import TrainingInterrupted, train
from .tune_results import TuneResult, write_results
from .tune_space import Dimension, as_override, read_space

PRUNERS = ("median", "hyperband", "none")
SAMPLERS = ("tpe", "random")
HEARTBEAT_S = 60  # a database trial whose worker has been silent for 3 of these is failed and retried


@dataclass(frozen=True, kw_only=True)
class TuneSettings:
    """How a worker searches: its share of trials, the sampler and pruner, the storage and study."""

    trials: int
    storage: str | None = None
    study: str | None = None
    pruner: str = "median"
    sampler: str = "tpe"
    seed: int | None = None
    heartbeat_s: int = HEARTBEAT_S


def _optuna() -> Any:
    try:
        import optuna  # lazy: the tune extra, imported only when a search runs
    except ImportError:
        raise UserError("cnnzoo tune needs Optuna; pip install 'cnnzoo[tune]'") from None
    optuna.logging.set_verbosity(logging.WARNING)  # our own line per trial says what its INFO lines would
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def tune(
    config: str | Path,
    *,
    trials: int,
    space: str | Path | None = None,
    overrides: list[str] | None = None,
    runs_root: str | Path = "runs",
    storage: str | None = None,
    study: str | None = None,
    pruner: str = "median",
    sampler: str = "tpe",
    seed: int | None = None,
    quiet: bool = True,
    heartbeat_s: int = HEARTBEAT_S,
) -> TuneResult:
    """Run ``trials`` trials of the study (joining it if it exists); see the module docstring.

    Returns the whole study's results, best first; ``<runs>/latest`` points at the best trial's run.
    """
    settings = TuneSettings(
        trials=trials, storage=storage, study=study, pruner=pruner, sampler=sampler, seed=seed, heartbeat_s=heartbeat_s
    )
    base = list(overrides or [])
    cfg = load_config(config, base)  # config errors, then the space's, before Optuna is imported
    dims = read_space(config, space, base)
    _check_settings(settings)
    folder = Path(runs_root) / f"{cfg.run_name}-tune"
    monitor = cfg.train.monitor  # "auto": val_acc, or val_map on multi-label data; both maximized
    optuna = _optuna()
    storage_obj = open_storage(settings, folder)
    the_study = _open_study(optuna, storage_obj, settings, name=settings.study or cfg.run_name, monitor=monitor)
    _fail_orphans(optuna, the_study, storage_obj)
    objective = _Objective(
        config, base, dims, monitor=monitor, runs_root=Path(runs_root), name=folder.name, quiet=quiet
    )
    goal = (
        "val_loss, minimized"
        if monitor == "val_loss"
        else f"{'val_acc (val_map)' if monitor == 'auto' else monitor}, maximized"
    )
    console.log(
        f"tune: study {the_study.study_name!r} in {describe_storage(settings.storage, folder)}; this worker runs "
        f"{trials} trial(s) of {', '.join(d.describe() for d in dims)}; {settings.sampler} sampler, "
        f"{settings.pruner} pruner, {cfg.train.epochs} epochs each; {goal}"
    )
    try:
        the_study.optimize(objective, n_trials=trials, catch=(UserError,), gc_after_trial=True)
    except TrainingInterrupted:
        _requeue(the_study, objective.current)
        raise
    result = write_results(the_study, config=config, overrides=base, dims=dims, folder=folder, monitor=monitor)
    if result.best_run is not None:
        runs.point_latest(Path(runs_root), result.best_run)
    return result


def _check_settings(settings: TuneSettings) -> None:
    if settings.trials < 1:
        raise UserError(f"--trials {settings.trials}: give at least 1 (this worker's share of the study)")
    if settings.pruner not in PRUNERS:
        raise UserError(f"--pruner {settings.pruner}: choose one of {', '.join(PRUNERS)}")
    if settings.sampler not in SAMPLERS:
        raise UserError(f"--sampler {settings.sampler}: choose one of {', '.join(SAMPLERS)}")


def journal_path(url: str) -> Path:
    """``journal:///study.log`` -> study.log (relative); ``journal:////abs/study.log`` -> /abs/study.log."""
    rest = url[len("journal:///") :]
    if not rest or rest.endswith("/"):
        raise UserError(f"--storage {url}: name a file, e.g. journal:///study.log or journal:////abs/path/study.log")
    return Path(rest)


def describe_storage(url: str | None, folder: Path) -> str:
    """The storage for people: a journal file's path, or a database URL without its password."""
    if url is None:
        return str(folder / "study.log")
    if url.startswith("journal:///"):
        return str(journal_path(url))
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}" if "@" in rest else url


def open_storage(settings: TuneSettings, folder: Path) -> Any:
    """The Optuna storage of ``settings.storage``; a URL it cannot use is one line naming it."""
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback  # lazy: the tune extra
    from optuna.storages.journal import JournalFileBackend  # lazy: the tune extra

    url = settings.storage
    if url is None or url.startswith("journal:///"):
        path = folder / "study.log" if url is None else journal_path(url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise UserError(
                f"--storage {path}: cannot write the study's journal there ({exc.strerror or exc})"
            ) from None
    scheme = url.partition("://")[0].partition("+")[0]
    if scheme not in ("sqlite", "postgresql", "mysql"):
        raise UserError(
            f"--storage {url}: unknown storage; use journal:///study.log, journal:////abs/study.log, "
            f"sqlite:///study.db, postgresql://... or mysql://..."
        )
    try:
        return RDBStorage(
            url,
            heartbeat_interval=settings.heartbeat_s,
            grace_period=3 * settings.heartbeat_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
    except ImportError as exc:
        raise UserError(
            f"--storage {describe_storage(url, folder)}: needs a database driver ({exc.name}); pip install it"
        ) from None
    except Exception as exc:  # sqlalchemy's OperationalError, ArgumentError...: unreachable or malformed
        raise UserError(
            f"--storage {describe_storage(url, folder)}: cannot open the study's database ({short_reason(exc, 160)})"
        ) from None


def _open_study(optuna: Any, storage: Any, settings: TuneSettings, *, name: str, monitor: str) -> Any:
    direction = "minimize" if monitor == "val_loss" else "maximize"
    if settings.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=settings.seed)
    else:  # TPE after a few random trials: the default 10 would leave small budgets random
        sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=5)
    pruner = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
        "none": lambda: optuna.pruners.NopPruner(),
    }[settings.pruner]()
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, direction=direction, sampler=sampler, pruner=pruner, load_if_exists=True
        )
    except Exception as exc:
        raise UserError(f"study {name!r}: cannot open it ({short_reason(exc, 160)})") from None
    if study.direction.name.lower() != direction:
        raise UserError(
            f"study {name!r}: it {study.direction.name.lower()}s, but this config's {monitor} is "
            f"{direction}d; give another --study name"
        )
    return study


def _fail_orphans(optuna: Any, study: Any, storage: Any) -> None:
    """A journal study's trials left RUNNING by a worker of this machine that is gone (killed): marked
    failed and queued again, so none is lost. (A database does this itself, by heartbeat.)"""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") != host or not isinstance(attrs.get("pid"), int) or _alive(attrs["pid"]):
            continue
        storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
        console.warn(
            f"tune: trial {trial.number} was left running by a worker that is gone (process {attrs['pid']}); "
            f"marked failed, its values queued again"
        )
        _requeue(study, trial)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def _requeue(study: Any, trial: Any) -> None:
    if trial is not None and trial.params and not trial.user_attrs.get("retry_of"):
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)


class _PruningReport:
    """Tells the trial the monitored metric after each epoch; stops the run when the pruner says so."""

    def __init__(self, trial: Any, monitor: str):
        self.trial, self.setting, self.monitor = trial, monitor, monitor
        self.pruned_at: int | None = None
        self.best: float | None = None
        self.best_epoch = 0
        self.epochs = 0

    def epoch_end(self, end: EpochEnd) -> None:
        self.monitor = monitored_metric(self.setting, multi_label="val_map" in end.row)
        value = end.row.get(self.monitor)
        if value is None:
            return
        value = float(value)
        self.epochs = end.epoch
        better = self.best is None or (value < self.best if self.monitor == "val_loss" else value > self.best)
        if better:
            self.best, self.best_epoch = value, end.epoch
        self.trial.report(value, step=end.epoch)
        if self.trial.should_prune():
            self.pruned_at = end.epoch
            raise StopTraining(f"the pruner stopped this trial ({self.monitor} {value:.4f} trails the other trials')")

    def close(self) -> None:
        pass


class _Objective:
    """One trial: the suggested values as overrides, a training run, the best monitored value."""

    def __init__(
        self,
        config: str | Path,
        base: list[str],
        dims: list[Dimension],
        *,
        monitor: str,
        runs_root: Path,
        name: str,
        quiet: bool,
    ):
        self.config, self.base, self.dims, self.monitor = config, base, dims, monitor
        self.runs_root, self.name, self.quiet = runs_root, name, quiet
        self.current: Any = None

    def __call__(self, trial: Any) -> float:
        import optuna  # lazy: the tune extra (tune() has imported it by now)

        self.current = trial
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        values = {dim.key: dim.suggest(trial) for dim in self.dims}
        console.log(f"tune trial {trial.number}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        report = _PruningReport(trial, self.monitor)
        start = time.perf_counter()
        overrides = [*self.base, f"name={self.name}", *(as_override(k, v) for k, v in values.items())]
        run_dir = train(str(self.config), overrides, out=self.runs_root, quiet=self.quiet, callbacks=[report])
        trial.set_user_attr("run", str(Path(run_dir).resolve()))  # read by workers in other folders
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
        trial.set_user_attr("best_epoch", report.best_epoch)
        trial.set_user_attr("epochs", report.epochs)
        if report.pruned_at is not None:
            console.log(f"tune trial {trial.number}: pruned after epoch {report.pruned_at}")
            raise optuna.TrialPruned()
        if report.best is None:
            raise UserError(f"tune trial {trial.number}: no epoch reported {report.monitor}")
        console.log(f"tune trial {trial.number}: {report.monitor} {report.best:.4f} (epoch {report.best_epoch})")
        return report.best
