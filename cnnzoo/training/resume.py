"""What a ``last.pt`` gives a resumed run, checked like a config before the run uses any of it, then
applied: the epoch, the optimizer, the schedule, the AMP scaler, the best-epoch record, the EMA
weights and a position inside an epoch (:mod:`cnnzoo.training.midepoch`).

A ``last.pt`` is a user's file like any other input (copied between machines, edited, cut short):
each field is checked for its type and range first (:func:`check_saved_state`), and what only the
built model can judge (the optimizer's and the EMA's tensors against the parameters) is checked
as it is loaded (:func:`apply_saved_state`). Either way a damaged field is one
:class:`~cnnzoo.errors.UserError` naming the file and the field.

Floor 7 (training): imports torch, :mod:`cnnzoo.errors`, the config's number checks and, in
training, the mid-epoch record and the loop's best-epoch record.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config.checks import is_number, is_whole
from ..errors import UserError
from . import midepoch
from .loop import BestEpoch

if TYPE_CHECKING:
    from .run import Job

_LOAD_ERRORS = (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError)
_TRAINER_NUMBERS = ("best_value", "best_other", "progress_value")
_TRAINER_COUNTS = ("best_epoch", "bad_epochs")


def damaged(path: str | Path) -> Any:
    """The error of one field of ``path``: ``damaged(path)("optimizer", "should be a mapping")``."""

    def bad(field: str, expected: str) -> UserError:
        return UserError(
            f"{path}: damaged last.pt: {field} {expected}; resume from a last.pt cnnzoo wrote, or start a new run"
        )

    return bad


def check_saved_state(state: dict[str, Any], path: str | Path) -> None:
    """The resume fields of a ``last.pt`` (one with an optimizer state), types and ranges."""
    bad = damaged(path)
    epoch = state.get("epoch")
    if not is_whole(epoch, 0):
        raise bad("epoch", f"should be the whole number of epochs trained, got {epoch!r}")
    _check_optimizer(state.get("optimizer"), bad)
    scheduler = state.get("scheduler")
    if not (isinstance(scheduler, dict) and is_whole(scheduler.get("step_count"), 0)):
        raise bad("scheduler", "should be a mapping with the optimizer steps taken (step_count)")
    if not isinstance(state.get("scaler", {}), dict):
        raise bad("scaler", "should be a mapping")
    _check_trainer(state.get("trainer"), bad)
    if "ema" in state:
        ema = state["ema"]
        if not (
            isinstance(ema, dict)
            and isinstance(ema.get("weights"), dict)
            and all(isinstance(k, str) and torch.is_tensor(v) for k, v in ema["weights"].items())
            and is_whole(ema.get("updates"), 0)
        ):
            raise bad("ema", "should hold the averaged weights (names to tensors) and the updates made")
    if state.get("in_epoch") is not None:
        midepoch.check_record(state["in_epoch"], bad, finished=epoch)


def _check_optimizer(optimizer: Any, bad: Any) -> None:
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    if not (
        isinstance(groups, list)
        and groups
        and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
        and isinstance(optimizer.get("state"), dict)
    ):
        raise bad("optimizer", "should be an optimizer's state: param_groups (a list) and state (a mapping)")
    for index, values in optimizer["state"].items():
        if not isinstance(values, dict) or not all(
            torch.is_tensor(v) or v is None or (key == "step" and is_number(v)) for key, v in values.items()
        ):
            raise bad(f"optimizer.state[{index!r}]", "should map names to tensors")


def _check_trainer(trainer: Any, bad: Any) -> None:
    if not isinstance(trainer, dict):
        raise bad("trainer", "should be the best-epoch record (a mapping)")
    for key in _TRAINER_NUMBERS:
        if trainer.get(key) is not None and not is_number(trainer[key]):
            raise bad(f"trainer.{key}", f"should be a number or absent, got {trainer[key]!r}")
    for key in _TRAINER_COUNTS:
        if key in trainer and not is_whole(trainer[key], 0):
            raise bad(f"trainer.{key}", f"should be a whole number, 0 or more, got {trainer[key]!r}")


def apply_saved_state(job: Job, state: dict[str, Any], path: str | Path) -> None:
    """Continue ``job`` from a checked ``last.pt``: optimizer, schedule, scaler, best epoch, EMA (the
    weights are in already), and the epoch (and position inside it) to go on from."""
    bad, st = damaged(path), job.stepper
    try:
        st.optimizer.load_state_dict(state["optimizer"])
    except _LOAD_ERRORS as exc:
        raise bad("optimizer", f"does not fit this model's parameters ({_first_line(exc)})") from None
    _check_state_shapes(st.optimizer, bad)
    try:
        st.schedule.load_state_dict(state["scheduler"])
        if st.scaler is not None and state.get("scaler"):
            st.scaler.load_state_dict(state["scaler"])
    except _LOAD_ERRORS as exc:
        raise bad("scheduler", f"cannot be restored ({_first_line(exc)})") from None
    job.best = BestEpoch.of(job.cfg.train, multi_label=job.multi_label, saved=state["trainer"])
    if st.average is not None and "ema" in state:
        try:
            st.average.load_full_state(state["ema"])
        except _LOAD_ERRORS as exc:
            raise bad("ema", f"does not fit this model ({_first_line(exc)})") from None
    job.start_epoch = state["epoch"] + 1
    job.in_epoch = state.get("in_epoch")  # saved inside an epoch (train.checkpoint_every, SIGTERM)
    if job.in_epoch is not None:
        midepoch.check_position(job.in_epoch, job.stages.train_loader, path)
        job.start_epoch = job.in_epoch["epoch"]


def _check_state_shapes(optimizer: torch.optim.Optimizer, bad: Any) -> None:
    """Moments saved for parameters of another shape would fail at the first step, far from the cause."""
    for param, values in optimizer.state.items():
        for key, value in values.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                raise bad(
                    f"optimizer state {key!r}",
                    f"has shape {list(value.shape)} for a parameter of shape {list(param.shape)}: "
                    "the model is not the one this last.pt trained",
                )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
