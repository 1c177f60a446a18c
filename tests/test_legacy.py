"""Artefacts written by an older cnnzoo (tests/data/legacy, see its README) still work: a checkpoint
loads and predicts what it predicted then, its ONNX export too, evaluate scores it, last.pt resumes
and best.pt exports; the run folder's config.yaml loads as the config the checkpoint holds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import cnnzoo

from support.images import make_image_tree

LEGACY = Path(__file__).resolve().parent / "data" / "legacy"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())


def _predicted(model) -> dict[str, list[float]]:
    paths = sorted(EXPECTED["probabilities"])
    records = model.predict([str(LEGACY / p) for p in paths], top_k=2)
    return {p: [t["probability"] for t in sorted(r["top_k"], key=lambda t: t["label"])] for p, r in zip(paths, records)}


@pytest.mark.parametrize("name", ["best.pt", "best.onnx"])
def test_legacy_model_predicts_what_it_predicted(name):
    model = cnnzoo.load(LEGACY / "run" / name)
    assert model.classes == ["a", "b"]
    got = _predicted(model)
    for path, probabilities in EXPECTED["probabilities"].items():
        np.testing.assert_allclose(got[path], probabilities, atol=1e-5, err_msg=path)


def test_legacy_checkpoint_evaluates_on_its_images(tmp_path):
    report = cnnzoo.evaluate(LEGACY / "run" / "best.pt", data=LEGACY / "images", out=tmp_path, progress=False)
    assert report["num_images"] == len(EXPECTED["probabilities"]) == 8
    hits = sum(int(np.argmax(p)) == "ab".index(Path(path).parent.name) for path, p in EXPECTED["probabilities"].items())
    assert report["accuracy"] == pytest.approx(hits / 8)
    assert (tmp_path / "eval.json").is_file()


def test_legacy_checkpoint_exports(tmp_path):
    shutil.copy2(LEGACY / "run" / "best.pt", tmp_path / "best.pt")
    result = cnnzoo.export(tmp_path / "best.pt", "onnx")
    assert result.ok and result.path == tmp_path / "best.onnx"


def test_legacy_config_yaml_loads_as_the_checkpoints_config():
    from cnnzoo.checkpoint import load_checkpoint

    cfg = cnnzoo.load_config(LEGACY / "run" / "config.yaml")
    # both through the loader: keys added since (with their defaults) fill in on each side alike
    saved = cnnzoo.load_config(load_checkpoint(LEGACY / "run" / "best.pt")["config"])
    assert cfg.to_dict() == saved.to_dict()


@pytest.mark.slow
def test_legacy_last_pt_resumes(tmp_path):
    run = tmp_path / "runs" / "legacy" / "1"
    shutil.copytree(LEGACY / "run", run)
    data = make_image_tree(tmp_path / "data")
    resumed = cnnzoo.train(
        overrides=[f"data.root={data}", "train.epochs=3"], resume=run / "last.pt", out=tmp_path / "runs", quiet=True
    )
    assert Path(resumed) == run.resolve()
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3"]
    from cnnzoo.checkpoint import load_checkpoint

    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 3 and last["config"]["train"]["epochs"] == 3
