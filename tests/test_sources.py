"""The source registry: one detection order for every command, and a new kind of data is one
:class:`~cnnzoo.data.sources.Source` subclass and one :func:`~cnnzoo.data.sources.register` line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnzoo.config import load_config
from cnnzoo.config.schema import SOURCE_NAMES
from cnnzoo.data import sources
from cnnzoo.data.sources import (
    SOURCES,
    ArraySamples,
    FileSamples,
    Samples,
    ShardSamples,
    Source,
    Splits,
    load_data,
    register,
)
from cnnzoo.errors import ConfigError, DataError


class ToySource(Source):
    """Bright and dark 16x16 images, made in memory."""

    name = "toy"
    native = (3, 16)

    def splits(self, missing: list[str] | None = None) -> Splits:
        def split(name: str, n: int) -> Samples:
            labels = [i % 2 for i in range(n)]
            noise = np.random.default_rng(n).integers(0, 40, (n, 16, 16, 3), dtype=np.uint8)
            array = np.stack([np.full((16, 16, 3), 180 if label else 20, np.uint8) for label in labels]) + noise
            return ArraySamples(name=name, labels=labels, array=array, origin=f"toy/{name}")

        return Splits(classes=["dark", "bright"], train=split("train", 16), val=split("validation", 8), where="toy")


@pytest.fixture
def toy():
    register(ToySource)
    yield
    del SOURCES["toy"]
    SOURCE_NAMES.remove("toy")


@pytest.mark.slow
def test_a_registered_source_is_loaded_and_trained_on(toy, tmp_path: Path) -> None:
    spec = load_data(load_config({"data": {"source": "toy"}}))
    assert spec.classes == ["dark", "bright"] and spec.source == "toy"
    assert (spec.channels, spec.image_size, len(spec.train), len(spec.val)) == (3, (16, 16), 16, 8)

    from cnnzoo.training.run import train

    config = {
        "data": {"source": "toy"},
        "model": {
            "layers": [
                {"conv": {"out_channels": 8, "kernel_size": 3}},
                "gap",
                {"dense": {"out_features": "num_classes"}},
            ]
        },
        "train": {"epochs": 1, "batch_size": 8},
    }
    run = train(config, out=tmp_path / "runs", quiet=True)
    assert (run / "best.pt").is_file()


def test_an_unregistered_source_is_refused_by_the_config() -> None:
    with pytest.raises(ConfigError, match=r"data.source: got 'toy' \(string\), expected folder \| shapes"):
        load_config({"data": {"source": "toy"}})


def test_every_command_detects_a_kind_in_the_registry_order(tmp_path: Path) -> None:
    assert list(SOURCES)[:4] == ["webdataset", "hf", "manifest", "folder"]
    assert set(SOURCES) == set(SOURCE_NAMES)  # the config's names are the registry's
    (tmp_path / "rows.csv").write_text("image,label\n")
    assert sources.kind_of_path(str(tmp_path / "rows.csv")).name == "manifest"
    assert sources.kind_of_path("shards/train-{0..3}.tar").name == "webdataset"
    assert sources.kind_of_path(str(tmp_path)).name == "folder"


def test_a_split_of_shards_refuses_to_be_subset() -> None:
    shards = ShardSamples(name="train", labels=[0, 1], shards=["a.tar"], shard_counts=[2])
    with pytest.raises(DataError, match="cannot be subset"):
        shards.subset([0])
    assert shards.streamed and shards.describe(1) == "train sample 1 of 1 shards" and shards.files() == []


def test_each_kind_of_samples_subsets_names_and_fingerprints_its_own_images(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.full((4, 4, 3), 60 * i, np.uint8)).save(paths[-1])
    files = FileSamples(name="train", labels=[0, 1, 0], paths=paths, label_sets=[[0], [1], [0]])
    picked = files.subset([2, 0])
    assert isinstance(picked, FileSamples) and picked.paths == [paths[2], paths[0]] and picked.labels == [0, 0]
    assert picked.label_sets == [[0], [0]] and picked.describe(0) == paths[2] and picked.files() == picked.paths
    assert files.encoded(1)[0] == "png" and not files.streamed
    before = files.fingerprint()
    Image.fromarray(np.full((4, 4, 3), 250, np.uint8)).save(paths[1])
    assert files.fingerprint() != before  # a changed image changes it
    array = ArraySamples(name="val", labels=[0, 1], array=np.zeros((2, 4, 4), np.uint8), origin="toy/val")
    one = array.subset([1])
    assert isinstance(one, ArraySamples) and one.array.shape == (1, 4, 4) and one.describe(0) == "toy/val[0]"
    assert one.origin == "toy/val" and one.files() == [] and one.decoded and one.encoded(0)[0] == "png"
    relabelled = ArraySamples(name="val", labels=[1, 1], array=array.array, origin="toy/val")
    assert array.fingerprint() != relabelled.fingerprint()
