"""The loggers a run can add with ``train.loggers``: one ``{name: class}`` table, :data:`LOGGERS`.

Each entry is a :class:`~cnnzoo.training.events.Logger` in a module of its own; adding one is
that module, one line here and its name among ``train.loggers``' allowed values in
:mod:`cnnzoo.config.schema` (so that a typo is refused before torch loads, and the key reference
lists it). ``csv`` is no entry: metrics.csv is kept by every run (resuming and the plots read it).

Floor 7 (training): imports the logger modules and :mod:`cnnzoo.training.events`.
"""

from __future__ import annotations

from ..config import TrainConfig
from .events import Logger, RunStart
from .tensorboard import TensorBoard
from .tracking import MLflowLogger

# in this order whatever the order of train.loggers: mlflow last, as it uploads history.png
# once the history plot has drawn it for the last time
LOGGERS: dict[str, type[Logger]] = {
    "tensorboard": TensorBoard,
    "mlflow": MLflowLogger,
}
ALWAYS_KEPT = "csv"  # metrics.csv, written by every run


def chosen(names: list[str]) -> list[type[Logger]]:
    """The loggers ``train.loggers`` names, in the table's order."""
    return [logger for name, logger in LOGGERS.items() if name in names]


def require_loggers(names: list[str]) -> None:
    """Refuse, in one line before the images are decoded, a chosen logger whose package is missing."""
    for logger in chosen(names):
        logger.require()


def open_loggers(run: RunStart, t: TrainConfig) -> list[Logger]:
    """The loggers of ``run`` that ``t.loggers`` names, each given the settings it reads."""
    return [logger.open(run, t) for logger in chosen(t.loggers)]
