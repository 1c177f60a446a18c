"""Transfer learning's two training stages, and when they read the frozen-feature cache.

Stage 1 trains the head and the backbone stages that ``freeze`` leaves trainable; from
``train.unfreeze_at_epoch`` on, stage 2 trains the last ``train.unfreeze_stages`` too
(:func:`trainable_stage_counts`, :class:`TransferStages`). What stays frozen in both stages
is computed once per image by :mod:`cnnzoo.training.feature_cache` when augmentation allows.

Both read :class:`TransferSettings`, the few ``train`` and ``data`` keys they need. On the
training floor: it imports the config, the console, errors, the model's backbones, the
runtime, the data layer's loaders and its sibling modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..config import AugmentConfig, Config
from ..console import console
from ..data import loaders as loaders_mod
from ..errors import ConfigError
from ..model.backbones import backbone_of, trainable_stages
from ..runtime import distributed
from ..runtime.device import Feed
from .feature_cache import FeatureDataset, build, cache_cut, store_rows
from .mixing import MixSettings


@dataclass(frozen=True, kw_only=True)
class TransferSettings:
    """What the stages and the feature cache read: ``train.unfreeze_at_epoch``, ``unfreeze_stages``,
    ``epochs``, ``batch_size`` and the keys that mix images; ``data.augment``, ``feature_cache``,
    ``cache``, ``cache_dir`` and ``sampler``; and ``seed``."""

    unfreeze_at_epoch: int | None = None  # None: one stage
    unfreeze_stages: int | str = "all"
    epochs: int = 10
    batch_size: int = 32
    mixing: tuple[str, ...] = ()  # the train keys that mix images or read them (a teacher): they need pixels
    augment: AugmentConfig
    feature_cache: str = "auto"  # none, ram, disk or auto
    pixel_cache: str = "auto"  # data.cache: the feature cache is built from it
    cache_dir: Path | None = None
    balanced: bool = False  # data.sampler: balanced
    seed: int = 0

    @classmethod
    def of(cls, cfg: Config) -> TransferSettings:
        t, d = cfg.train, cfg.data
        return cls(
            unfreeze_at_epoch=t.unfreeze_at_epoch,
            unfreeze_stages=t.unfreeze_stages,
            epochs=t.epochs,
            batch_size=t.batch_size,
            mixing=tuple(MixSettings.of(t).keys_on) + (("distill.teacher",) if t.distill else ()),
            augment=d.augment,
            feature_cache=d.feature_cache,
            pixel_cache=d.cache,
            cache_dir=Path(d.cache_dir) if d.cache_dir else None,
            balanced=d.sampler == "balanced",
            seed=cfg.seed,
        )


def trainable_stage_counts(model: nn.Module, s: TransferSettings) -> tuple[int, int] | None:
    """How many backbone stages train in stage 1 and in stage 2; None without a backbone."""
    backbone = backbone_of(model)
    if backbone is None:
        if s.unfreeze_at_epoch is not None:
            raise ConfigError("train.unfreeze_at_epoch: the model has no backbone layer to unfreeze")
        return None
    total = len(backbone.stages)
    first = trainable_stages(backbone.freeze, total, "freeze")
    if s.unfreeze_at_epoch is None:
        return first, first
    try:
        second = trainable_stages(s.unfreeze_stages, total, "train.unfreeze_stages")
    except ValueError as exc:
        raise ConfigError(f"{exc} (the backbone {backbone.name} has {total} stages)") from None
    if second <= first:
        raise ConfigError(
            f"train.unfreeze_stages: {s.unfreeze_stages} stages train already in stage 1 "
            f"(freeze leaves {first} of {total} trainable); unfreeze more, or drop "
            f"train.unfreeze_at_epoch"
        )
    if s.unfreeze_at_epoch > s.epochs:
        console.warn(
            f"train.unfreeze_at_epoch: {s.unfreeze_at_epoch} is after the last epoch "
            f"({s.epochs}); stage 2 starts only if the run is resumed with more epochs"
        )
    return first, second


class TransferStages:
    """Which backbone stages train at each epoch, and the network and loaders that run them.

    Stage 1 trains what ``freeze`` leaves trainable; from ``train.unfreeze_at_epoch`` on,
    stage 2 trains the last ``train.unfreeze_stages``. Whatever stays frozen during a
    stage is computed once per image (:mod:`cnnzoo.training.feature_cache`) when augmentation allows.
    A model without a backbone has one stage: the whole model on images.
    """

    def __init__(
        self,
        model: nn.Sequential,
        settings: TransferSettings,
        *,
        trainable_counts: tuple[int, int] | None,
        loaders: loaders_mod.Loaders,
        feed: Feed,
    ):
        self.model, self.settings, self.loaders, self.feed = model, settings, loaders, feed
        self.backbone = backbone_of(model)
        self.first, self.second = trainable_counts or (0, 0)
        self.trainable: int | None = None
        self.cut: int | None = None  # backbone stages the current net reads from the cache
        self.net: nn.Module = model
        self.train_loader, self.val_loader = loaders.train, loaders.val

    def stage_at(self, epoch: int) -> int:
        k = self.settings.unfreeze_at_epoch
        return 2 if k is not None and epoch >= k else 1

    def enter(self, epoch: int) -> None:
        """Make ``net`` and the loaders right for ``epoch`` (rebuilt when the stage changes)."""
        if self.backbone is None:
            return
        count = self.first if self.stage_at(epoch) == 1 else self.second
        if count == self.trainable:
            return
        self.trainable = count
        bb = self.backbone
        bb.set_trainable(count)
        frozen = sum(p.numel() for p in bb.parameters() if not p.requires_grad)
        what = (
            f"frozen (all {len(bb.stages)} stages, {frozen:,} parameters); only the head trains"
            if count == 0
            else f"trains its last {count} of {len(bb.stages)} stages ({frozen:,} parameters stay frozen)"
        )
        console.log(f"stage {self.stage_at(epoch)} from epoch {epoch}: backbone {bb.name} {what}")
        # cache only what stays frozen in stage 2 as well, so that one cache serves both stages
        later_frozen = len(bb.stages) - self.second
        cut = later_frozen if later_frozen > 0 else bb.frozen_stages
        if cut != self.cut:
            self.net, self.train_loader, self.val_loader = self._with_feature_cache(cut)

    def _cache_cut(self, cut: int):
        """Where the feature cache cuts the model, up to ``cut`` frozen stages (None when off), and why it is off."""
        s = self.settings
        pixels = "none" if getattr(self.loaders.train_set, "streaming", False) else s.pixel_cache  # shards: none
        return cache_cut(self.model, s.augment, setting=s.feature_cache, pixel_cache=pixels, cut=cut, mixing=s.mixing)

    def _with_feature_cache(self, cut: int):
        plain, s = (self.model, self.loaders.train, self.loaders.val), self.settings
        cached, reason = self._cache_cut(cut)
        self.cut = cached.cut if cached is not None else 0
        if cached is None:
            console.log(f"feature cache: off ({reason})")
            return plain
        stores = []
        for dataset, name, flips, feed in (
            (self.loaders.train_set, "train", cached.flips, self.feed),
            (self.loaders.val_set, "validation", [(False, False)], self.feed.without_autocast()),
        ):
            if stores and _same_images(self.loaders.train_set, dataset) and feed.describe() == self.feed.describe():
                stores.append(stores[0])  # a fold's pool: validation reads the unflipped version of the same store
                console.log(f"feature cache {name}: the training store's unflipped version (the same images)")
                continue
            # local rank 0 writes a file on disk, the others map it; a fold's features are those of
            # its whole pool (data.folds), computed once for every fold
            with distributed.main_first(shared=s.feature_cache != "ram"):
                store = build(
                    cached,
                    dataset.whole(),
                    name,
                    feed=feed,
                    flips=flips,
                    setting=s.feature_cache,
                    cache_dir=s.cache_dir,
                )
            if store is None:
                self.cut = 0
                console.log(
                    f"feature cache: off ({self.backbone.name}'s forward is not a plain chain of "
                    f"its stages, so it cannot be cut there)"
                )
                return plain
            console.log(f"feature cache {name} (output of the {cached.cut} frozen stages): {store.describe()}")
            stores.append(store)
        pin, shard = self.feed.device.type == "cuda", distributed.shard()
        train, val = self.loaders.train_set, self.loaders.val_set
        train_set = FeatureDataset(stores[0], train.targets, cached.flips, cached.flip_p, rows=store_rows(train))
        val_set = FeatureDataset(stores[1], val.targets, [(False, False)], rows=store_rows(val))
        return (
            cached.suffix(),
            loaders_mod.make_loader(
                train_set,
                s.batch_size,
                shuffle=True,
                seed=s.seed,
                workers=0,
                balanced=s.balanced,
                pin_memory=pin,
                shard=shard,
            ),
            loaders_mod.make_loader(
                val_set, s.batch_size * 2, shuffle=False, seed=s.seed, workers=0, pin_memory=pin, shard=shard
            ),
        )


def _same_images(train: loaders_mod.ImageDataset, val: loaders_mod.ImageDataset) -> bool:
    """Whether both splits are rows of one pool (``data.folds``), whose features are computed once."""
    return train.samples is val.samples and train.whole().indices == val.whole().indices
