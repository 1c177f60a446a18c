"""MLflow tracking of a training run: ``train.loggers: [csv, mlflow]`` (``pip install 'cnnzoo[mlflow]'``).

One MLflow run per cnnzoo run, named ``<name>/<N>`` like the run folder, in the experiment
``train.mlflow_experiment`` (default: the run's name, so the runs of one config, and every run of
a sweep, share one). It holds the config flattened to dotted parameters (``train.lr``), every
metrics.csv column per epoch (step = epoch), and when training ends config.yaml, history.png, the
confusion matrix of best.pt's epoch and best.pt itself, registered as a model version when
``train.mlflow_register`` names a model.

Where: MLflow's own ``MLFLOW_TRACKING_URI`` when it is set (a server, ``sqlite:///...``, a
``file:`` folder with ``MLFLOW_ALLOW_FILE_STORE=true``); otherwise an SQLite store beside the run
folders, ``<runs>/mlflow.db``, with the files in ``<runs>/mlartifacts``
(``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``). MLflow 3's own default is an SQLite
file in whatever folder training started from, and its ``./mlruns`` file store now refuses to open
unless asked to; keeping the store under the runs folder keeps a project's records together. The
files of a new experiment in a database store go beside the SQLite file (``mlartifacts/``), never
into ``./mlruns`` of the working folder, MLflow's default (:func:`artifact_location`).

A resumed run continues its MLflow run and first logs the metrics.csv rows that run lacks.

The tracking store is a copy, never the record: metrics.csv and the checkpoints are written first,
and when MLflow fails (a server that went away, a full store) training goes on after one warning,
with nothing more sent to MLflow. Only rank 0 of a multi-process run has callbacks, so only it logs.

Floor 7 (training): imports :mod:`cnnzoo.training.events`; mlflow is imported lazily, as an optional extra.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import runs
from ..config import TrainConfig
from ..console import console
from ..errors import ConfigError
from ..files import write_text
from ..pages import figure_png
from ..plots import confusion_figure
from .events import EpochEnd, RunStart

RUN_RECORD = "mlflow.json"  # in the run folder: which MLflow run a resumed run continues
MAX_PARAM_LENGTH = 6000  # MLflow refuses longer parameter values (the layer list can be long)
# a tracking server that stops answering must not hold training up for MLflow's default retries
# (7, with a doubling back-off: minutes per call); the user's own settings win
_PATIENT_ENOUGH = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


@dataclass(frozen=True, kw_only=True)
class MLflowSettings:
    """What the MLflow logger reads of the config: ``train.mlflow_experiment`` and ``train.mlflow_register``."""

    experiment: str | None = None  # None: the run's name
    register: str | None = None  # a model name best.pt is registered under; None: not registered

    @classmethod
    def of(cls, t: TrainConfig) -> MLflowSettings:
        return cls(experiment=t.mlflow_experiment, register=t.mlflow_register)


def tracking_uri(runs_root: Path) -> str:
    """``MLFLOW_TRACKING_URI``, or an SQLite store in ``<runs>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(runs_root / 'mlflow.db').resolve()}"


DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # MLflow's SQLAlchemy stores


def artifact_location(runs_root: Path) -> str | None:
    """Where a new experiment keeps its files. MLflow's SQLAlchemy stores put them in ``./mlruns``
    of whatever folder training started from unless told, so cnnzoo tells them: ``mlartifacts``
    beside an SQLite file (``<runs>/mlartifacts`` for cnnzoo's own ``<runs>/mlflow.db``), and
    ``<runs>/mlartifacts`` for an in-memory or remote database. A server (``http://``) and a
    ``file:`` store keep their own choice: the server's artifact root, the store's own folder."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    beside_runs = (runs_root / "mlartifacts").resolve().as_uri()
    if not uri:
        return beside_runs
    if uri.partition(":")[0].partition("+")[0].lower() not in DATABASE_SCHEMES:
        return None
    database = _sqlite_file(uri)
    return (database.resolve().parent / "mlartifacts").as_uri() if database else beside_runs


def _sqlite_file(uri: str) -> Path | None:
    """The database file an ``sqlite:///path`` URI names; None for another database or ``:memory:``."""
    from sqlalchemy.engine import make_url  # lazy: installed with mlflow
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(uri)
    except (ArgumentError, ValueError):
        return None
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"train.lr": "0.001", ...}``; lists stay whole, as JSON."""
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    text = json.dumps(data) if isinstance(data, (list, tuple)) else str(data)
    return {prefix[:-1]: text[:MAX_PARAM_LENGTH]}


@contextmanager
def _short_http_retries() -> Iterator[None]:
    added = [name for name in _PATIENT_ENOUGH if name not in os.environ]
    for name in added:
        os.environ[name] = _PATIENT_ENOUGH[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


class MLflowLogger:
    """The run's parameters, metrics per epoch and files in MLflow (see the module's docstring)."""

    def __init__(self, run: RunStart, settings: MLflowSettings):
        self.run_dir, self.classes, self.register_as = run.run_dir, run.classes, settings.register
        self.runs_root = runs.runs_root_of(run.run_dir)
        self.uri = tracking_uri(self.runs_root)
        self.failed = False
        self.best_confusion: list[list[int]] | None = None
        self.client: Any = None
        experiment = settings.experiment or run.run_dir.parent.name
        self.run_id = self._call("starting the run", self._start, experiment, run.resumed_at is not None)

    @classmethod
    def require(cls) -> None:
        try:
            import mlflow  # noqa: F401  # lazy: an optional extra
        except ImportError:
            raise ConfigError(
                "train.loggers: mlflow needs the mlflow package; pip install 'cnnzoo[mlflow]' "
                "(or remove it from the list)"
            ) from None

    @classmethod
    def open(cls, run: RunStart, t: TrainConfig) -> MLflowLogger:
        return cls(run, MLflowSettings.of(t))

    def _call(self, what: str, action: Callable[..., Any], *args: Any) -> Any:
        """``action(*args)``, or None once MLflow has failed: one warning, and training goes on."""
        if self.failed:
            return None
        try:
            with _short_http_retries():
                return action(*args)
        except Exception as exc:  # whatever the store raises, the run itself is safe on disk
            self.failed = True
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            console.warn(
                f"mlflow: {what} failed at {self.uri} ({reason}); training goes on without MLflow "
                f"(metrics.csv in {self.run_dir} keeps every epoch)"
            )
            return None

    def _start(self, experiment: str, resumed: bool) -> str:
        # lazy: mlflow is an optional extra, checked by require() before training starts
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)  # a URI it cannot use fails here, warned
        record = self.run_dir / RUN_RECORD
        if resumed and record.is_file():
            known = json.loads(record.read_text())
            if known.get("tracking_uri") == self.uri:
                self.client.update_run(known["run_id"], status="RUNNING")
                self._log_missed_epochs(known["run_id"])
                return known["run_id"]
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(experiment, artifact_location=artifact_location(self.runs_root))
        )
        run = self.client.create_run(
            experiment_id,
            run_name=f"{self.run_dir.parent.name}/{self.run_dir.name}",
            tags={"cnnzoo.run_dir": str(self.run_dir.resolve())},
        )
        config = yaml.safe_load((self.run_dir / "config.yaml").read_text())
        self._log_params(run.info.run_id, flatten(config))
        write_text(record, json.dumps({"tracking_uri": self.uri, "run_id": run.info.run_id}) + "\n")
        console.log(f"mlflow: logging to {self.uri}, experiment {experiment}, run {run.info.run_name}")
        return run.info.run_id

    def _log_missed_epochs(self, run_id: str) -> None:
        """A resumed run's metrics.csv rows (already cut back to last.pt's epoch) that the MLflow
        run lacks, logged at their steps: a kill between a checkpoint and its MLflow call, or a
        store that was down for a while, leaves such gaps, and metrics.csv is the record."""
        from mlflow.entities import Metric  # lazy: see _start

        rows = _metric_rows(self.run_dir / "metrics.csv")
        now = int(time.time() * 1000)
        missed: list[Metric] = []
        for key in rows[0] if rows else {}:
            logged = {m.step for m in self.client.get_metric_history(run_id, key)}
            missed += [Metric(key, value, now, epoch) for epoch, value in _column(rows, key) if epoch not in logged]
        for start in range(0, len(missed), 1000):  # MLflow takes at most 1,000 metrics a call
            self.client.log_batch(run_id, metrics=missed[start : start + 1000])
        if missed:
            epochs = ", ".join(str(e) for e in sorted({m.step for m in missed}))
            console.log(f"mlflow: logged epoch(s) {epochs} of metrics.csv that the MLflow run had missed")

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param  # lazy: see _start

        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(run_id, params=items[start : start + 100])

    def epoch_end(self, end: EpochEnd) -> None:
        if end.improved:
            self.best_confusion = end.confusion.tolist()
        if self.run_id is not None:
            self._call(f"logging epoch {end.epoch}", self._log_epoch, end)

    def _log_epoch(self, end: EpochEnd) -> None:
        from mlflow.entities import Metric  # lazy: see _start

        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, end.epoch) for key, value in end.row.items() if value not in (None, "")
        ]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        if self.run_id is not None:
            self._call("uploading the run's files", self._finish)

    def _finish(self) -> None:
        for name in ("config.yaml", "history.png", "best.pt"):
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        if self.best_confusion is not None:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "confusion_matrix.png"
                figure = confusion_figure(self.best_confusion, self.classes, "validation, best.pt's epoch")
                path.write_bytes(figure_png(figure))
                self.client.log_artifact(self.run_id, str(path))
        if self.register_as and (self.run_dir / "best.pt").is_file():
            self._register()
        self.client.set_terminated(self.run_id, "FINISHED")

    def _register(self) -> None:
        from mlflow.exceptions import MlflowException  # lazy: see _start

        try:
            self.client.create_registered_model(self.register_as)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        artifacts = self.client.get_run(self.run_id).info.artifact_uri
        version = self.client.create_model_version(self.register_as, f"{artifacts}/best.pt", run_id=self.run_id)
        console.log(f"mlflow: best.pt registered as {self.register_as} version {version.version}")


def _metric_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _column(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    """(epoch, value) of one metrics.csv column, its empty cells left out."""
    out = []
    for row in rows:
        try:
            out.append((int(row["epoch"]), float(row[key])))
        except (KeyError, TypeError, ValueError):  # an empty cell (backbone_lr without a backbone)
            continue
    return out
