"""What training and the learning-rate range test both start from: the data (its cache built),
the run's facts (:class:`~cnnzoo.training.facts.RunFacts`: classes, input shape, name; the config
is never written to), the model on its device and in its precision, the loss and the optimizer,
built from one config. Every setting that can still be wrong is checked here, before a run folder
is made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import Config, TrainConfig
from ..console import console
from ..data import augment as augment_mod
from ..data import loaders as loaders_mod
from ..data import sources
from ..errors import ConfigError
from ..model.layers import build_from_infos, trace_layers
from ..runtime import distributed
from ..runtime.device import (
    Feed,
    amp_dtype,
    choose_amp,
    choose_compile,
    measure_amp,
    measure_compile,
    norm_tensors,
    prefers_channels_last,
)
from . import distill
from .distill import Distiller
from .facts import RunFacts, resolve_facts
from .inputs import load_data
from .loggers import require_loggers
from .recipe import (
    Criterion,
    OptimizerSettings,
    check_class_weights,
    class_weight_vector,
    loss_kind,
    make_optimizer,
    pos_weight_vector,
)
from .transfer import TransferSettings, trainable_stage_counts


def build_model(facts: RunFacts, *, pretrained: bool = False) -> tuple[list, nn.Sequential]:
    """Trace and build the layer list for the data's input shape and class count.

    ``pretrained`` loads the weights a ``backbone`` layer names (a new run does; a resumed
    run and a benchmark do not need them).
    """
    infos = trace_layers(facts.layers, facts.input_shape, facts.num_classes)
    return infos, build_from_infos(infos, pretrained=pretrained)


def build_for_data(cfg: Config, spec: sources.DataSpec, *, pretrained: bool = False) -> tuple[list, nn.Sequential]:
    """:func:`build_model` for ``cfg``'s layers on the data ``spec`` describes (``cfg`` is left as it is)."""
    return build_model(resolve_facts(cfg, spec), pretrained=pretrained)


def _place(model: nn.Sequential, t: TrainConfig, dev: torch.device) -> tuple[nn.Sequential, bool]:
    """The model on its device and memory format (BatchNorm synchronised when asked); channels_last?"""
    channels_last = prefers_channels_last(dev) if t.channels_last == "auto" else bool(t.channels_last)
    model.to(dev, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if t.sync_bn:
        model, what = distributed.sync_batchnorm(model, dev)
        console.log(what)
    return model, channels_last


def _dtype_name(dtype: torch.dtype | None) -> str:
    return f"{str(dtype).replace('torch.', '')} autocast" if dtype is not None else "float32"


def _measured_amp(
    model: nn.Module,
    batch_shape: tuple[int, ...],
    *,
    outputs: int,
    dev: torch.device,
    candidate: torch.dtype,
    channels_last: bool,
) -> torch.dtype | None:
    """``train.amp: auto`` on CUDA: autocast only where a probe measures it faster (rank 0 decides)."""
    rates = (
        measure_amp(
            model, batch_shape, num_outputs=outputs, device=dev, candidate=candidate, channels_last=channels_last
        )
        if distributed.is_main()
        else None
    )
    rates = distributed.broadcast_object(rates)
    chosen = choose_amp(rates, candidate)
    console.log(
        f"precision: {_dtype_name(chosen)} (train.amp auto; a forward+backward probe ran "
        f"{', '.join(f'{k} {v:,.0f}' for k, v in rates.items())} img/s)"
    )
    return chosen


def _compile_chosen(
    model: nn.Module,
    t: TrainConfig,
    *,
    facts: RunFacts,
    loaders: loaders_mod.Loaders,
    dev: torch.device,
    channels_last: bool,
) -> bool:
    """``train.compile``; ``auto`` compiles where the probe says the whole run, compiling included,
    gets faster (rank 0 measures, every process follows)."""
    if t.compile != "auto":
        return t.compile is True
    rates = (
        measure_compile(
            model,
            (t.batch_size, *facts.input_shape),
            num_outputs=facts.num_classes,
            device=dev,
            channels_last=channels_last,
        )
        if distributed.is_main()
        else None
    )
    rates = distributed.broadcast_object(rates)
    chosen = choose_compile(rates, t.epochs * len(loaders.train_set))
    console.log(
        f"compile: {'on' if chosen else 'off'} (train.compile auto; a forward+backward probe ran "
        f"{rates['eager']:,.0f} img/s eager, {rates['compiled']:,.0f} img/s compiled after "
        f"{rates['compile_seconds']:.1f}s compiling)"
    )
    return chosen


def check_task_settings(t: TrainConfig, multi_label: bool) -> None:
    """Settings of one task refused on the other in one line (``train.monitor: auto`` is left as
    written: :func:`~cnnzoo.training.loop.monitored_metric` reads it)."""
    if multi_label:
        return
    if t.monitor == "val_map":
        raise ConfigError(
            "train.monitor: val_map is a multi-label figure; this data has one class per image (use val_acc)"
        )
    if t.thresholds != 0.5:
        raise ConfigError(
            "train.thresholds: thresholds are for multi-label data (several labels per image); this data has "
            "one class per image, which takes the most probable class (remove train.thresholds)"
        )


@dataclass(kw_only=True)
class TrainingSetup:
    """What training and the learning-rate range test both start from: the data, the model on
    its device, and the recipe (loss, optimizer), built from one config."""

    spec: sources.DataSpec
    facts: RunFacts
    infos: list
    model: nn.Sequential
    loss_kind: str
    loaders: loaders_mod.Loaders
    feed: Feed
    criterion: Criterion
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 autocast only
    counts: list[int]
    trainable_counts: tuple[int, int] | None  # backbone stages trained in stage 1 and 2
    distiller: Distiller | None = None  # train.distill's teacher


def _precision(
    model: nn.Module,
    t: TrainConfig,
    dev: torch.device,
    candidate: torch.dtype | None,
    *,
    facts: RunFacts,
    outputs: int,
    channels_last: bool,
) -> torch.dtype | None:
    """``train.amp`` resolved to autocast's dtype (None: float32); ``auto`` on CUDA measures it."""
    if t.amp == "auto" and candidate is not None:
        return _measured_amp(
            model,
            (t.batch_size, *facts.input_shape),
            outputs=outputs,
            dev=dev,
            candidate=candidate,
            channels_last=channels_last,
        )
    if dev.type == "cuda":
        console.log(f"precision: {_dtype_name(candidate)} (train.amp: {t.amp})")
    return candidate


def _criterion(t: TrainConfig, kind: str, spec: sources.DataSpec, counts: list[int], *, images: int) -> Criterion:
    """The loss, with ``train.class_weights`` (multi-label: each class's positive weight)."""
    if spec.multi_label:
        weights = pos_weight_vector(t.class_weights, spec.classes, counts, images)
    else:
        weights = class_weight_vector(t.class_weights, spec.classes, counts)
    return Criterion(kind, weights, t.label_smoothing)


def build_setup(cfg: Config, dev: torch.device, state: dict[str, Any] | None = None) -> TrainingSetup:
    """Data (the cache built), model (pretrained weights, or ``state``'s), loss and optimizer.

    Every setting that can still be wrong is checked here, before a caller makes a run folder.
    """
    t = cfg.train
    autocast_dtype = amp_dtype(t.amp, dev)  # a setting this device cannot take is refused before decoding
    with distributed.main_first():  # a built-in data set is generated once
        spec = load_data(cfg)
    facts = resolve_facts(cfg, spec)
    infos, model = build_model(facts, pretrained=state is None)
    if state is not None:
        model.load_state_dict(state["model_state"])
    check_task_settings(t, spec.multi_label)
    kind = loss_kind(t.loss, infos[-1].output_shape[0], len(spec.classes), multi_label=spec.multi_label)
    augment = augment_mod.build_augment(cfg.data.augment, spec.image_size)
    check_class_weights(t.class_weights, spec.classes)
    trainable_counts = trainable_stage_counts(model, TransferSettings.of(cfg))
    require_loggers(t.loggers)
    # the teacher is read and checked against the classes before any image is decoded
    distiller = None
    if t.distill:
        distiller = distill.open_teacher(t.distill, classes=spec.classes, multi_label=spec.multi_label)

    loaders = sources.build_loaders(cfg, spec, augment=augment, cuda=dev.type == "cuda")
    counts = loaders.train_set.class_counts(len(spec.classes))
    model, channels_last = _place(model, t, dev)
    autocast_dtype = _precision(
        model, t, dev, autocast_dtype, facts=facts, outputs=infos[-1].output_shape[0], channels_last=channels_last
    )
    if _compile_chosen(model, t, facts=facts, loaders=loaders, dev=dev, channels_last=channels_last):
        model.compile()  # in place: the state_dict keeps the plain module's names
        console.log(f"compile: torch.compile on (train.compile: {t.compile})")
    feed = Feed(
        device=dev,
        norm=norm_tensors(spec.mean, spec.std, dev),
        channels_last=channels_last,
        autocast_dtype=autocast_dtype,
    )
    if distiller is not None:
        folds = spec.fold_pool is not None
        distill.start(distiller, loaders, norm=feed.norm, cache_dir=cfg.data.cache_dir, folds=folds)
    criterion = _criterion(t, kind, spec, counts, images=len(loaders.train_set)).to(dev)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 else None
    return TrainingSetup(
        spec=spec,
        facts=facts,
        infos=infos,
        model=model,
        loss_kind=kind,
        loaders=loaders,
        feed=feed,
        criterion=criterion,
        optimizer=make_optimizer(model, OptimizerSettings.of(t)),
        scaler=scaler,
        counts=counts,
        trainable_counts=trainable_counts,
        distiller=distiller,
    )
