"""``data.source: mnist``, ``fashion_mnist`` and ``cifar10``: torchvision's sets, downloaded into
``data.root`` (default: the cache home) and held in memory.

Imports config, errors, files, runtime.versions; torchvision (and torch) lazily, when a set is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from ...files import cache_home
from ...runtime.versions import check as check_torch_pair
from .base import Source, Splits
from .samples import ArraySamples

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _torchvision_datasets() -> Any:
    """``torchvision.datasets``, imported when a torchvision source is first asked for."""
    check_torch_pair()  # torchvision is imported here first: a mismatched pair gets one line
    from torchvision import datasets  # lazy: seconds to import; folders (and evaluate on them) never need it

    return datasets


class TorchvisionSource(Source):
    """One of torchvision's sets: ``dataset`` names its class; training and validation are its own
    train and test parts."""

    dataset: str = ""

    def splits(self, missing: list[str] | None = None) -> Splits:
        datasets = _torchvision_datasets()
        cfg, name = self.cfg, self.name
        cls = getattr(datasets, self.dataset)
        root = Path(cfg.data.root) if cfg.data.root else cache_home() / "datasets"
        try:
            train = cls(str(root), train=True, download=cfg.data.download)
            test = cls(str(root), train=False, download=cfg.data.download)
        except RuntimeError as exc:
            hint = "" if cfg.data.download else "; set data.download: true to fetch it (needs internet)"
            raise DataError(f"data.source {name}: not found in {root} ({str(exc).strip()}){hint}") from None
        except OSError as exc:
            raise DataError(f"data.source {name}: could not download to {root}: {exc}") from None
        samples = []
        for split, ds in (("train", train), ("validation", test)):
            import torch  # lazy: folder sources (and evaluate of an export on them) stay torch-free

            array = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
            labels = [int(t) for t in ds.targets]
            samples.append(ArraySamples(name=split, labels=labels, array=array, origin=f"{name}/{split}"))
        return Splits(classes=list(train.classes), train=samples[0], val=samples[1], where=str(root))

    def class_names(self) -> list[str]:
        return list(getattr(_torchvision_datasets(), self.dataset).classes)


class MnistSource(TorchvisionSource):
    name, dataset, native = "mnist", "MNIST", (1, 28)


class FashionMnistSource(TorchvisionSource):
    name, dataset, native = "fashion_mnist", "FashionMNIST", (1, 28)


class Cifar10Source(TorchvisionSource):
    name, dataset, native = "cifar10", "CIFAR10", (3, 32)

    def class_names(self) -> list[str]:
        return list(CIFAR10_CLASSES)  # without importing torchvision
