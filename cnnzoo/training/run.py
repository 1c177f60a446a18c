"""A training run: :func:`train` -> :func:`prepare` (config, parts, run folder, resume) -> :func:`fit`
(the epochs of :mod:`cnnzoo.training.epoch`, each handed to the callbacks of
:mod:`cnnzoo.training.callbacks`) -> the fits after training (the unknown score, the test-time crop,
:mod:`cnnzoo.training.calibrate`).

Reproducibility: every epoch reseeds torch/NumPy/Python from ``(seed, epoch)``, and the data
order and augmentation depend only on ``(seed, epoch, batch)``, so on CPU the same config gives
the same metrics, and a resumed run continues exactly where the uninterrupted one would have been.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from .. import checkpoint as ckpt_io
from .. import runs
from ..config import Config, dump_config, load_config
from ..console import console
from ..data import batch_order, sources
from ..errors import UserError
from ..files import is_disk_full, write_text
from ..model.layers import layer_records
from ..runtime import distributed
from ..runtime.device import Feed, pick_device
from . import calibrate, crossval, midepoch, test_crop
from .callbacks import Checkpoints, make_callbacks
from .distill import Distiller
from .ema import WeightAverage
from .epoch import TrainingNet, train_epoch
from .events import Callback, StopTraining
from .loop import BestEpoch, EpochTally, Stepper, optimizer_steps, warn_small_validation
from .mixing import Mixer, MixSettings
from .recipe import Criterion, LRSchedule, ScheduleSettings, seed_everything
from .resume import apply_saved_state, check_saved_state
from .setup import TrainingSetup, build_setup
from .transfer import TransferSettings, TransferStages
from .unknown_fit import fit_unknown


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM during training; ``last.pt`` has been saved. ``exit_code``: 128 + the signal."""

    def __init__(self, message: str, run_dir: Path, exit_code: int = 130):
        super().__init__(message)
        self.run_dir, self.exit_code = run_dir, exit_code


def _overrides_from(overrides: Any, extra: dict[str, Any]) -> list[str]:
    items: list[str] = []
    if isinstance(overrides, dict):
        extra = {**overrides, **extra}
    elif overrides:
        items.extend(overrides)
    for key, value in extra.items():
        dumped = yaml.safe_dump(value, default_flow_style=True).strip()
        if dumped.endswith("\n...") or dumped.endswith("..."):
            dumped = dumped.rsplit("\n", 1)[0]
        items.append(f"{key.replace('__', '.')}={dumped}")
    return items


@dataclass(kw_only=True)
class Job:
    """Everything a training run holds while it fits: built by :func:`prepare`, run by :func:`fit`."""

    cfg: Config  # as the user wrote it (never written to)
    saved_config: Config  # as the run folder saves it: cfg with the run's facts filled in (RunFacts)
    run_dir: Path
    model: nn.Sequential
    criterion: Criterion
    stepper: Stepper
    feed: Feed
    stages: TransferStages
    best: BestEpoch
    base_state: dict[str, Any]
    start_epoch: int = 1
    callbacks: list[Callback] = field(default_factory=list)  # rank 0's; none on the others
    mixer: Mixer | None = None  # train.mixup / train.cutmix
    distiller: Distiller | None = None  # train.distill
    in_epoch: dict[str, Any] | None = None  # a last.pt saved inside start_epoch (cnnzoo.training.midepoch)

    @property
    def average(self) -> WeightAverage | None:
        """train.ema's average of the weights (updated by the stepper)."""
        return self.stepper.average

    @property
    def multi_label(self) -> bool:
        return self.base_state["meta"].get("task") == "multi"

    @property
    def num_classes(self) -> int:
        return len(self.base_state["meta"]["classes"])

    def snapshot(self, epoch: int, row: dict | None, full: bool) -> dict[str, Any]:
        """A checkpoint: weights and what predict needs; ``full`` adds what resuming needs. With
        ``train.ema`` the weights are the average, except in a full one (``last.pt``), which keeps
        the raw weights and the average beside them."""
        averaged = self.average is not None and not full
        snap = {
            **self.base_state,
            "model_state": self.average.state_dict()
            if averaged
            else {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "config": self.saved_config.to_dict(),
            "epoch": epoch,
            "metrics": row or {},
        }
        if full:
            st = self.stepper
            snap.update(
                optimizer=st.optimizer.state_dict(),
                scheduler=st.schedule.state_dict(),
                scaler=st.scaler.state_dict() if st.scaler is not None else {},
                trainer=self.best.state_dict(),
            )
            if self.average is not None:
                snap["ema"] = self.average.full_state()
        return snap


def _load_run_config(config: Any, overrides: list[str], resume: str | Path | None):
    """The config of a new run, or of the run a ``last.pt`` belongs to (with its saved state)."""
    if resume is None:
        if config is None:
            raise UserError("no config given; use --config FILE (e.g. configs/quickstart.yaml)")
        return load_config(config, overrides), None, None
    state = ckpt_io.load_checkpoint(resume)
    if "optimizer" not in state:
        raise UserError(f"{resume}: has no optimizer state (best.pt?); resume from last.pt")
    check_saved_state(state, state["path"])
    cfg = load_config(state["config"], overrides)
    cfg.source_path = str(Path(resume).parent / "config.yaml")
    return cfg, state, Path(resume).resolve().parent


def _open_run_dir(runs_root: Path, cfg: Config, run_dir: Path | None) -> Path:
    """Make the run folder (or reopen a resumed one) and write config.yaml (``cfg`` is the saved
    config: :meth:`~cnnzoo.training.facts.RunFacts.saved_config`). ``latest`` moves
    to a new run once it has a ``best.pt`` (:class:`cnnzoo.training.callbacks.Checkpoints`); a resumed run
    that has one already takes it now."""
    if run_dir is None:
        run_dir = runs.next_run_dir(runs_root, cfg.run_name)
    distributed.record_run_dir(run_dir)
    try:
        runs.clean_stale_temporaries(run_dir)  # only this process writes here
        if (run_dir / "best.pt").is_file():
            runs.point_latest(runs.runs_root_of(run_dir), run_dir)
        write_text(run_dir / "config.yaml", dump_config(cfg))
    except OSError as exc:
        if is_disk_full(exc):
            raise runs.disk_full_error(run_dir, None) from None
        raise UserError(
            f"{run_dir}: cannot write the run folder ({exc.strerror or exc}); choose a folder you can write with --runs"
        ) from None
    console.log(f"run folder: {run_dir}")
    return run_dir


def prepare(
    config: Any, overrides: list[str], *, out: str | Path, resume: str | Path | None, run_dir: Path | None = None
) -> Job:
    """Resolve the config, build the parts and the schedule, open the run folder, apply a resume.
    ``run_dir``: the folder a new run writes (a k-fold run's fold), else the next ``<out>/<name>/<N>``.

    In a DDP run every process prepares the same job; only rank 0 opens the run folder.
    """
    cfg, state, resumed_dir = _load_run_config(config, overrides, resume)
    run_dir = resumed_dir or run_dir
    t = cfg.train
    ctx, dev = distributed.setup(pick_device(t.device), t.ddp_timeout)
    seed_everything(cfg.seed)
    console.log(
        f"cnnzoo: training {cfg.run_name} on {dev}"
        f"{f' ({ctx.world} processes, batch {t.batch_size} each)' if ctx.enabled else ''}"
    )
    setup = build_setup(cfg, dev, state)
    # the schedule counts optimizer steps (train.accumulate batches make one)
    schedule = LRSchedule(
        setup.optimizer, ScheduleSettings.of(t), optimizer_steps(len(setup.loaders.train), t.accumulate)
    )
    stepper = Stepper(
        setup.model,
        setup.optimizer,
        schedule,
        scaler=setup.scaler,
        grad_clip=t.grad_clip,
        accumulate=t.accumulate,
        average=WeightAverage(setup.model, t.ema) if t.ema else None,
    )

    # last: nothing above may leave a half-made folder
    saved = setup.facts.saved_config(cfg)
    run_dir = distributed.broadcast_object(_open_run_dir(Path(out), saved, run_dir) if ctx.rank == 0 else None)
    job = _job(cfg, run_dir, setup, stepper, saved_config=saved)
    mixing = MixSettings.of(t)
    if mixing.wanted:
        job.mixer = Mixer(mixing, num_classes=len(setup.spec.classes), seed=cfg.seed, rank=ctx.rank)
    if state is not None:
        apply_saved_state(job, state, state["path"])
    if ctx.rank == 0:
        job.callbacks = make_callbacks(
            t,
            run_dir,
            setup.spec.classes,
            checkpoints=Checkpoints(run_dir, job.snapshot, job.start_epoch - 1),
            resumed_at=job.start_epoch - 1 if state is not None else None,
            monitor=job.best.monitor,
            multi_label=setup.spec.multi_label,
        )
    _log_plan(job, setup)
    if job.start_epoch == 1 and job.in_epoch is None and ctx.rank == 0:  # Ctrl-C in epoch 1 can resume from here
        try:
            ckpt_io.save_atomic(job.snapshot(0, None, True), run_dir / "last.pt")
        except OSError as exc:
            if is_disk_full(exc):
                raise runs.disk_full_error(run_dir, None) from None
            raise
    return job


def _job(cfg: Config, run_dir: Path, setup: TrainingSetup, stepper: Stepper, *, saved_config: Config) -> Job:
    """The job of a new run (:func:`_resume` then continues an old one)."""
    infos = setup.infos
    meta = {**setup.spec.meta(), "loss": setup.loss_kind, "outputs": infos[-1].output_shape[0]}
    if setup.spec.multi_label:  # the thresholds are the validation's of the epoch a checkpoint holds
        fixed = 0.5 if cfg.train.thresholds == "tuned" else float(cfg.train.thresholds)
        meta.update(task="multi", thresholds=[fixed] * len(setup.spec.classes))
    if setup.distiller is not None:
        meta["distill"] = setup.distiller.facts()
    return Job(
        cfg=cfg,
        saved_config=saved_config,
        run_dir=run_dir,
        model=setup.model,
        criterion=setup.criterion,
        stepper=stepper,
        feed=setup.feed,
        stages=TransferStages(
            setup.model,
            TransferSettings.of(cfg),
            trainable_counts=setup.trainable_counts,
            loaders=setup.loaders,
            feed=setup.feed,
        ),
        best=BestEpoch.of(cfg.train, multi_label=setup.spec.multi_label),
        distiller=setup.distiller,
        base_state={"format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "layers": layer_records(infos), "meta": meta},
    )


def _log_plan(job: Job, setup: TrainingSetup) -> None:
    """What the run will do, said once it is certain to start (never a line before an error)."""
    t, spec = job.cfg.train, setup.spec
    warn_small_validation(len(spec.val), job.best.monitor)
    console.log("training images per class:\n" + sources.class_counts_text(spec.classes, setup.counts))
    console.log(
        f"model: {len(setup.infos)} layers, {sum(p.numel() for p in job.model.parameters()):,} parameters; "
        f"loss {setup.loss_kind}; optimizer {t.optimizer} lr {t.lr:g}"
        f"{f' (backbone {t.backbone_learning_rate():g})' if job.stages.backbone else ''}; "
        f"scheduler {t.scheduler}"
    )
    if job.in_epoch is not None:
        console.log(f"resuming inside epoch {job.start_epoch} of {t.epochs}, after step {job.in_epoch['step']}")
    elif job.start_epoch > 1:
        console.log(f"resuming at epoch {job.start_epoch} of {t.epochs}")


def _checkpoints(job: Job) -> Checkpoints | None:
    return next((c for c in job.callbacks if isinstance(c, Checkpoints)), None)


def _close(job: Job) -> None:
    for callback in job.callbacks:
        callback.close()


def _start_epoch(job: Job, epoch: int, steps: midepoch.StepCheckpoints) -> EpochTally | None:
    """Seed the epoch and set its loader and mixer; a run resumed inside it goes on from there."""
    job.stages.enter(epoch)
    seed_everything(batch_order.mix_seed(job.cfg.seed, epoch, 0))
    loader = job.stages.train_loader
    loader.batch_sampler.set_epoch(epoch)
    if job.mixer is not None:
        job.mixer.set_epoch(epoch)
    steps.for_epoch(epoch, loader, job.mixer)
    if job.in_epoch is None or epoch != job.in_epoch["epoch"]:
        return None
    in_epoch, job.in_epoch = job.in_epoch, None
    return midepoch.restore(in_epoch, loader=loader, mixer=job.mixer, device=job.feed.device)


def _interrupted(job: Job, steps: midepoch.StepCheckpoints, stop: midepoch.StopRequested | None) -> TrainingInterrupted:
    """The one message of a run stopped by Ctrl-C or a signal: what last.pt holds, how to go on."""
    resume = f"Resume with: cnnzoo train --resume {job.run_dir / 'last.pt'}"
    if stop is not None:
        code = 128 + getattr(signal.Signals, stop.signal_name, signal.SIGTERM).value
        return TrainingInterrupted(f"{stop}. {resume}", job.run_dir, exit_code=code)
    saved = _checkpoints(job)
    held = steps.saved or (f"epoch {saved.saved_epoch}" if saved else None)
    held = f"; {job.run_dir / 'last.pt'} holds {held}" if held and distributed.is_main() else ""
    return TrainingInterrupted(f"interrupted during epoch {steps.epoch}{held}. {resume}", job.run_dir)


def _epochs(job: Job, steps: midepoch.StepCheckpoints, after: Callable[[Job], Any] | None) -> None:
    t, training_net = job.cfg.train, TrainingNet()
    for epoch in range(job.start_epoch, t.epochs + 1):
        tally = _start_epoch(job, epoch, steps)
        net = training_net.for_epoch(job.stages, job.feed.device)
        end = train_epoch(job, epoch, net, tally=tally, after_batch=steps)
        try:
            for callback in job.callbacks:
                callback.epoch_end(end)
        except StopTraining as stop:
            console.log(f"stopped after epoch {epoch}: {stop}")
            after = None  # a stopped run is not worth fitting a temperature or an unknown score on
            break
        if steps.signals.asked is not None:  # asked during validation: last.pt holds this epoch
            raise midepoch.StopRequested(steps.signals.asked, f"epoch {epoch}")
        if job.best.should_stop:
            console.log(f"early stopping: {job.best.monitor} has not improved for {t.patience} epochs")
            break
    if after is not None:
        after(job)


def fit(job: Job, after: Callable[[Job], Any] | None = None) -> Path:
    """The epoch loop: train, validate, hand the epoch to the callbacks; Ctrl-C keeps a resumable last.pt
    (SIGTERM or a first Ctrl-C: at the next step, :mod:`cnnzoo.training.midepoch`).
    ``after`` runs once the epochs end, before the callbacks close (a tracker then uploads what it wrote)."""
    t = job.cfg.train
    signals = midepoch.StopSignals()
    steps = midepoch.StepCheckpoints(
        every=t.checkpoint_every,
        snapshot=lambda: job.snapshot(steps.epoch - 1, None, True),
        path=job.run_dir / "last.pt",
        stepper=job.stepper,
        signals=signals,
    )
    # several processes agree on a stop only at the checkpoints: without them, Ctrl-C ends them as before
    catching = not distributed.context().enabled or t.checkpoint_every is not None
    try:
        with signals.installed(catching):
            _epochs(job, steps, after)
        _close(job)
    except (KeyboardInterrupt, midepoch.StopRequested) as exc:
        try:
            _close(job)
        except KeyboardInterrupt:
            pass
        stop = exc if isinstance(exc, midepoch.StopRequested) else None
        raise _interrupted(job, steps, stop) from None
    except Exception as exc:  # a write of metrics.csv, a checkpoint or a plot found the disk full
        saved = _checkpoints(job)
        if saved is None or not is_disk_full(exc):
            raise
        raise runs.disk_full_error(job.run_dir, saved.saved_epoch) from None
    console.log(f"done: best {job.best.monitor} {job.best.text(2)} at epoch {job.best.epoch}; run folder {job.run_dir}")
    console.log(f"next: cnnzoo evaluate {job.run_dir / 'best.pt'}   or   cnnzoo predict IMAGE")
    return job.run_dir


def train(
    config: Any = None,
    overrides: Any = None,
    *,
    device: str | None = None,
    out: str | Path = "runs",
    quiet: bool = False,
    resume: str | Path | None = None,
    folds: int | None = None,
    final: bool = True,
    callbacks: Sequence[Callback] = (),
    **settings: Any,
) -> Path:
    """Train from a YAML path, mapping or Config; return the run folder.

    ``overrides`` are ``"dotted.key=value"`` strings (or a mapping); keyword arguments
    are overrides too, with ``__`` for dots: ``train("c.yaml", train__epochs=3)``.
    ``resume`` continues from a ``last.pt``: its run folder, config and states.
    ``callbacks``: more :class:`~cnnzoo.training.events.Callback` objects told of each epoch (rank 0's);
    one may raise :class:`~cnnzoo.training.events.StopTraining` to end the run early.
    ``folds``: k-fold cross-validation (:mod:`cnnzoo.training.crossval`), one run per fold in
    ``RUN/fold-N``, ``cv.json`` and ``oof.csv``, then (``final``) a model trained on all the images.
    Started by torchrun, each process trains its share (see :mod:`cnnzoo.runtime.distributed`).
    """
    override_list = _overrides_from(overrides, settings)
    if device:
        override_list.append(f"train.device={device}")
    with console.scoped(quiet):
        if folds is not None:
            crossval.refuse_folds_with(resume=resume, distributed=crossval.in_distributed_run())
            return crossval.cross_validate(config, override_list, k=folds, out=out, final=final, one_run=_one_run)
        return _one_run(config, override_list, out=out, resume=resume, callbacks=callbacks)


def _fits_after_training(job: Job) -> None:
    """The fits on best.pt once the epochs end, rank 0 alone (no collective): the unknown score, the
    test-time crop, then the temperature (its validation pass reads best.pt as stored, crop
    included); before the callbacks close, so an MLflow run uploads the best.pt that carries them."""
    if not distributed.is_main():
        return
    train = job.cfg.train
    fit_unknown(job.run_dir, job.stages, settings=train.unknown, multi_label=job.multi_label)
    crops = job.cfg.data.augment.random_resized_crop is not None
    test_crop.choose_test_crop(job.run_dir, train.test_crop, trained_on_crops=crops, device=train.device)
    calibrate.calibrate_run(job.run_dir, train.calibrate, device=train.device)


def _one_run(
    config: Any,
    overrides: list[str],
    *,
    out: str | Path = "runs",
    resume: Any = None,
    run_dir: Path | None = None,
    callbacks: Sequence[Callback] = (),
) -> Path:
    try:
        job = prepare(config, overrides, out=out, resume=resume, run_dir=run_dir)
        if distributed.is_main():  # after the run's own: they have seen the epoch when these are told
            job.callbacks += list(callbacks)
        run_dir = fit(job, after=_fits_after_training)
        distributed.barrier()  # no process leaves the group while another still uses it
        return run_dir
    finally:
        distributed.teardown()
