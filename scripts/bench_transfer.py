#!/usr/bin/env python
"""What the frozen-feature cache buys: training the trainable part on cached features vs the whole network.

    python scripts/bench_transfer.py --config configs/clothing_transfer.yaml --set data.root=DATA \
        [--images 256] [--set k=v ...]

One process, the same model, optimizer, batch size and images (the first ``--images``
training images, decoded once), with the backbone trainable as in the config's last
stage (``train.unfreeze_stages`` when ``train.unfreeze_at_epoch`` is set):

  whole     cnnzoo's training loop on images: every step runs the frozen stages too
  features  computing the frozen stages' output once per image and flip (the cache build)
  cached    cnnzoo's training loop on the cached features: only the trainable stages and head

Prints images/s for each, the ratio cached/whole (the speed-up of each epoch), and after
how many epochs building the cache has paid for itself. Validation is excluded. Each
timed loop runs twice and the faster run counts (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--images", type=int, default=256, help="training images to use")
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    args = parser.parse_args()

    import torch

    from cnnzoo.config import load_config
    from cnnzoo.console import console
    from cnnzoo.data.cache import decode_all
    from cnnzoo.data.loaders import ImageDataset, make_loader
    from cnnzoo.model.backbones import backbone_of
    from cnnzoo.runtime.device import Feed, cpu_count, norm_tensors, prefers_channels_last
    from cnnzoo.training import feature_cache
    from cnnzoo.training.inputs import load_data
    from cnnzoo.training.loop import Stepper, train_one_epoch
    from cnnzoo.training.recipe import Criterion, LRSchedule, OptimizerSettings, ScheduleSettings, make_optimizer
    from cnnzoo.training.setup import build_for_data
    from cnnzoo.training.transfer import TransferSettings, trainable_stage_counts

    cfg = load_config(args.config, args.set)
    weights = Path(str(backbone_weights(cfg))).expanduser()
    with console.scoped(True):  # the data's and the weights' lines are training's, not this benchmark's
        spec = load_data(cfg)
        spec.train = spec.train.subset(list(range(min(args.images, len(spec.train)))))
        _, model = build_for_data(cfg, spec, pretrained=weights.is_file())
    backbone = backbone_of(model)
    if backbone is None:
        sys.exit(f"{args.config}: the model has no backbone layer; nothing to cache")
    backbone.set_trainable(trainable_stage_counts(model, TransferSettings.of(cfg))[1])
    device = torch.device("cpu")
    channels_last = prefers_channels_last(device)
    model.to(memory_format=torch.channels_last)
    feed = Feed(device=device, norm=norm_tensors(spec.mean, spec.std, device), channels_last=channels_last)
    decoded = decode_all(spec.train, spec.image_size, spec.channels, kind="ram", cache_dir=None, workers=cpu_count())
    images = ImageDataset(spec.train, spec.image_size, spec.channels, decoded=decoded)
    batch = cfg.train.batch_size

    def epoch_rate(net, loader) -> float:
        criterion = Criterion("cross_entropy", None, cfg.train.label_smoothing)
        optimizer = make_optimizer(model, OptimizerSettings.of(cfg.train))
        stepper = Stepper(model, optimizer, LRSchedule(optimizer, ScheduleSettings.of(cfg.train), len(loader)))
        best = 0.0
        for attempt in range(2):
            loader.batch_sampler.set_epoch(attempt + 1)
            stats = train_one_epoch(net, loader, criterion=criterion, stepper=stepper, feed=feed, desc="bench")
            best = max(best, stats["images_per_s"])
        return best

    cache, reason = feature_cache.cache_cut(model, cfg.data.augment, setting="ram", pixel_cache="ram")
    if cache is None:
        sys.exit(f"the feature cache does not apply to this config: {reason}")
    whole = epoch_rate(model, make_loader(images, batch, shuffle=True, seed=cfg.seed, workers=0))
    start = time.perf_counter()
    store = feature_cache.build(cache, images, "bench", feed=feed, flips=cache.flips)
    build_seconds = time.perf_counter() - start
    feature_rate = len(images) * len(cache.flips) / build_seconds
    cached_set = feature_cache.FeatureDataset(store, images.labels, cache.flips, flip_p=cache.flip_p)
    cached = epoch_rate(cache.suffix(), make_loader(cached_set, batch, shuffle=True, seed=cfg.seed, workers=0))

    with console.scoped(True):
        n_all = len(load_data(cfg).train)
    per_epoch_saved = n_all / whole - n_all / cached
    print(
        f"config {args.config}: backbone {backbone.name}, {backbone.trainable} of {len(backbone.stages)} "
        f"stages trainable, {cache.cut} cached, {len(cache.flips)} versions per image, "
        f"{len(images)} images at {spec.image_size[0]}x{spec.image_size[1]}, batch {batch}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"  whole     {whole:8.1f} images/s  (training steps through the whole network)")
    print(f"  features  {feature_rate:8.1f} images/s  (the cache build: frozen stages once per image and flip)")
    print(f"  cached    {cached:8.1f} images/s  (training steps on cached features)")
    print(f"ratio cached/whole: {cached / whole:.2f}x per epoch")
    cache_seconds = n_all * len(cache.flips) / feature_rate
    print(
        f"for all {n_all} training images: cache build {cache_seconds:.0f}s, one epoch {n_all / whole:.0f}s "
        f"whole vs {n_all / cached:.0f}s cached; the cache pays for itself after "
        f"{cache_seconds / per_epoch_saved:.1f} epochs"
        if per_epoch_saved > 0
        else "the cache never pays off here"
    )


def backbone_weights(cfg) -> str:
    from cnnzoo.config import backbone_entry

    entry = backbone_entry(cfg.model.layers)
    return entry[1].get("weights") or "" if entry else ""


if __name__ == "__main__":
    main()
