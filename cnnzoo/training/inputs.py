"""What the model tells the data: a ``backbone`` layer's preprocessing (input size, mean, std) is
looked up here, from ``model.layers``, and handed to the data layer as plain numbers, so that
:mod:`cnnzoo.data` never reads the model's layers; and a config's input shape and class count,
which ``summary`` takes from the data when the model leaves them out.

Imports config, errors, data.sources and model (model.backbones and model.summary lazily: both import torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import Config, load_config
from ..data import sources
from ..errors import UserError

if TYPE_CHECKING:
    from ..model import backbones


def backbone_preprocessing(cfg: Config) -> backbones.Preprocessing | None:
    """What a ``backbone`` layer's weights expect, when the network has one."""
    from ..model import backbones  # lazy: a backbone's registry imports torch; folders need not

    entry = backbones.backbone_entry(cfg.model.layers)
    return backbones.preprocessing(*entry) if entry is not None else None


def preprocessing_for(cfg: Config) -> backbones.Preprocessing | None:
    """The backbone's preprocessing, looked up only where it matters: its weights size the input
    (when nothing else does) and normalise it (``data.normalize: auto``)."""
    size_unset = cfg.data.image_size is None and not cfg.model.input
    return backbone_preprocessing(cfg) if cfg.data.normalize == "auto" or size_unset else None


def load_data(cfg: Config, *, missing_ok: bool = False) -> sources.DataSpec:
    """:func:`cnnzoo.data.sources.load_data` with the backbone's preprocessing (:func:`preprocessing_for`)."""
    return sources.load_data(cfg, task=cfg.train.task, missing_ok=missing_ok, pretrained=preprocessing_for(cfg))


def resolve_input(cfg: Config) -> tuple[int, tuple[int, int]]:
    """Channels and (H, W) (:func:`cnnzoo.data.sources.resolve_input`), a backbone's input size
    filling in where neither ``data.image_size`` nor ``model.input`` says."""
    size_unset = cfg.data.image_size is None and not cfg.model.input
    return sources.resolve_input(cfg, backbone_preprocessing(cfg) if size_unset else None)


def resolve_model_shape(cfg: Config) -> tuple[list[int], int | None]:
    """Input [C, H, W] and class count: from ``model`` where set, else from ``data``."""
    if cfg.model.input and cfg.model.num_classes:
        return list(cfg.model.input), cfg.model.num_classes
    channels, size = resolve_input(cfg)
    if cfg.model.num_classes:
        return [channels, *size], cfg.model.num_classes
    try:
        num_classes = len(sources.class_names(cfg))
    except UserError as exc:  # no data here: the class count is all a summary needs from it
        raise type(exc)(f"{exc}; a summary only needs the number of classes: --set model.num_classes=N") from None
    return [channels, *size], num_classes


# the class count a summary assumes for a config that names neither its data nor model.num_classes
# (a shipped recipe, whose data comes with --data): ten, as the clothing set the recipes were made on
ASSUMED_CLASSES = 10


def summarize(cfg: Config, expand: bool = False) -> dict[str, Any]:
    """``cnnzoo summary``'s table as plain data (:func:`cnnzoo.model.summary.summarize`), the input
    shape and class count taken from the data where the model leaves them out; with no data to
    count, :data:`ASSUMED_CLASSES`, which the result says it assumed (``classes_assumed``)."""
    from ..model import summary  # lazy: tracing the network imports torch

    assumed = not cfg.model.num_classes and cfg.data.source == "folder" and not cfg.data.root
    if assumed:  # a copy: the caller's config is not written to
        cfg = load_config(cfg, [f"model.num_classes={ASSUMED_CLASSES}"])
    input_shape, num_classes = resolve_model_shape(cfg)
    result = summary.summarize(cfg, expand, input_shape=input_shape, num_classes=num_classes)
    result["classes_assumed"] = assumed
    return result
