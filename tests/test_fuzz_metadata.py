"""Checkpoint and ONNX metadata (issue 28, items 6 and 12): what a model file says about itself is
checked like a config, in :func:`cnnzoo.checkpoint.check_meta`, the one check both formats share.

A tiny real run and its real ONNX export are mutated (types, NaN, huge sizes, duplicate classes,
deep nesting, unknown keys, a task that contradicts the head, test crops, unknown scores and
distillation records) and loaded through
:func:`cnnzoo.inference.load`, what ``predict`` and ``serve`` use: each case predicts or is a
:class:`cnnzoo.UserError` of one line naming the file, never another exception. An ONNX graph
that asks onnxruntime for terabytes is one line too, without onnxruntime's own coloured log line.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
from pathlib import Path

import pytest

from cnnzoo import UserError
from cnnzoo.inference import load
from cnnzoo.inference.classifier import METADATA_KEY

from support.cli import one_error_line, run_cnnzoo
from support.images import make_image_tree
from support.runs import train_run

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch tiny run (classes a, b), its best.pt as plain data, and its ONNX export."""
    import torch

    from cnnzoo.deploy.export import export

    run = train_run(tmp_path_factory.mktemp("fuzz-meta"), lambda base: make_image_tree(base / "images"), epochs=1)
    exported = export(run.best, "onnx").path
    image = str(sorted((run.root / "validation").rglob("*.png"))[0])
    return run, torch.load(run.best, map_location="cpu", weights_only=True), onnx.load(str(exported)), image


def _write_checkpoint(ckpt: dict, meta: dict, path: Path, config: dict | None = None) -> Path:
    import torch

    torch.save({**ckpt, "meta": meta, "config": ckpt["config"] if config is None else config}, path)
    return path


def _write_onnx(proto, metadata: str, path: Path) -> Path:
    proto = type(proto).FromString(proto.SerializeToString())
    next(e for e in proto.metadata_props if e.key == METADATA_KEY).value = metadata
    onnx.save(proto, str(path))
    return path


def _onnx_meta(proto) -> dict:
    return json.loads(next(e.value for e in proto.metadata_props if e.key == METADATA_KEY))


# ================================================================ what the adversarial run saw accepted

REFUSED = [
    ({"classes": ["a", "a"]}, "classes should name each class once; 'a' appears 2 times"),
    ({"task": "multi", "thresholds": [0.5, 0.5]}, "task is multi but the head was trained with cross_entropy"),
    ({"loss": "bce_multi_label"}, "task is single but the head was trained with bce_multi_label"),
    ({"resize": "lanczos; rm -rf /"}, "resize should be squash, letterbox, crop or bilinear"),
    ({"resize": ["letterbox"]}, "resize should be squash, letterbox, crop or bilinear"),
    ({"int8": "yes"}, "int8 should be the record an INT8 export writes"),
    ({"data": {"root": ["a"], "seed": 0}}, "data.root should be text or absent"),  # evaluate makes it a path
    ({"data": {"root": "a", "seed": "x"}}, "data.seed should be a whole number or absent"),
    ({"data": {"seed": True}}, "data.seed should be a whole number or absent"),
    ({"data": {"digest": 5, "seed": 0}}, "data.digest should be text or absent"),
    ({"loss": ["cross_entropy"]}, "loss should be one of cross_entropy, bce, bce_multi_label"),
    ({"mean": [10**400, 0.5, 0.5]}, "mean should be 3 numbers"),  # past any float: was an OverflowError
]


@pytest.mark.slow
@pytest.mark.parametrize("change, expected", REFUSED)
def test_metadata_that_contradicts_itself_is_refused_in_both_formats(trained, tmp_path, change, expected):
    run, ckpt, proto, image = trained
    checkpoint = _write_checkpoint(ckpt, {**ckpt["meta"], **change}, tmp_path / "changed.pt")
    exported = _write_onnx(proto, json.dumps({**_onnx_meta(proto), **change}), tmp_path / "changed.onnx")
    for path, prefix in [(checkpoint, "meta."), (exported, "metadata ")]:
        with pytest.raises(UserError) as refused:
            load(path)
        assert str(path) in str(refused.value) and prefix + expected in str(refused.value), str(refused.value)
    line = one_error_line(run_cnnzoo(["predict", image, "--model", exported], tmp_path))
    assert expected in line


@pytest.mark.slow
def test_a_checkpoint_task_is_checked_against_its_config_when_meta_has_no_loss(trained, tmp_path):
    run, ckpt, _, _ = trained
    meta = {key: value for key, value in ckpt["meta"].items() if key != "loss"}
    multi = {**meta, "task": "multi", "thresholds": [0.5, 0.5]}
    config = copy.deepcopy(ckpt["config"])
    config["train"]["loss"] = "cross_entropy"
    with pytest.raises(UserError, match=r"meta.task is multi but config train.loss is cross_entropy"):
        load(_write_checkpoint(ckpt, multi, tmp_path / "a.pt", config))
    config["train"].update(loss="auto", task="single")
    with pytest.raises(UserError, match=r"meta.task is multi but config train.task is single"):
        load(_write_checkpoint(ckpt, multi, tmp_path / "b.pt", config))
    config["train"]["task"] = "multi"
    with pytest.raises(UserError, match=r"meta.task is single but config train.task is multi"):
        load(_write_checkpoint(ckpt, meta, tmp_path / "c.pt", config))


# ================================================================================== the seeded fuzz

KEYS = [
    "classes", "channels", "image_size", "mean", "std", "task", "thresholds", "loss", "outputs",
    "resize", "int8", "data_root", "data", "epoch", "metrics", "cnnzoo_version", "unknown_key", "calibration",
    "test_crop", "unknown", "distill",
]  # fmt: skip


DEEP = "<nested deeply>"  # stands for a list nested thousands deep, made as each format is written


def _deep(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


VALUES = [
    None, True, False, 0, -1, 1, 3, 2**63, -(2**70), 1e308, math.nan, math.inf, -math.inf, 0.5,
    "", "x", "bilinear", "single", "multi", "cross_entropy", "bce", "bce_multi_label", "yes",
    "lanczos; rm -rf /", "\x1b[31mred", "x" * 10_000, [], [1, 2], ["a", "a"], ["a", "b"], ["b", "a"],
    ["a", "b", "c"], [16, 16], [16, 16, 16], [0.5] * 3, [math.nan] * 3, [0.5, 0.5], [2.0, 0.5],
    {"a": 1}, {}, {"scheme": "x"}, _deep(5), DEEP, [str(i) for i in range(100_000)],
    "squash", "letterbox", "crop", 2, 4, {"source": "manifest", "digest": 5, "seed": "x"},
    {"source": "pipe:sh", "root": ["a"], "val_fraction": math.nan},
    {"method": "temperature", "temperature": 0.7}, {"method": "temperature", "temperature": [1e-300, 2.0]},
    0.85, 0.875, 0.49, 1.01, {"score": "msp", "threshold": 0.5, "keep": 0.95},
    {"score": "energy", "threshold": math.nan, "keep": 0.95}, {"score": "knn", "threshold": 1.0, "keep": 0.95},
    {"score": "rm -rf /", "threshold": 0.5, "keep": 2}, {"teacher": "../../etc/passwd", "weight": math.inf},
]  # fmt: skip
CONTRADICTIONS = [{"task": "multi", "thresholds": [0.5, 0.5]}, {"loss": "bce_multi_label"}]


def _mutate(meta: dict, rng: random.Random) -> tuple[dict, list[str]]:
    """1 to 3 random changes: a key set to a hostile value, a key removed, a class duplicated,
    or a task that contradicts the loss."""
    meta, changes = copy.deepcopy(meta), []
    for _ in range(rng.randrange(1, 4)):
        kind = rng.random()
        if kind < 0.6:
            key, value = rng.choice(KEYS), rng.choice(VALUES)
            meta[key] = value
            changes.append(f"{key}={str(value)[:40]}")
        elif kind < 0.75:
            key = rng.choice(list(meta) or ["classes"])
            meta.pop(key, None)
            changes.append(f"del {key}")
        elif kind < 0.88:
            classes = meta.get("classes") if isinstance(meta.get("classes"), list) else ["a", "b"]
            meta["classes"] = [*classes, rng.choice(classes or ["a"])]
            changes.append("duplicate class")
        else:
            meta.update(rng.choice(CONTRADICTIONS))
            changes.append("task against the loss")
    return meta, changes


def _outcome(path: Path, image: str, case: str) -> bool:
    """True: the file loaded and predicted sensibly; False: refused in one line naming it."""
    try:
        records = load(path).predict([image])
    except UserError as exc:
        message = str(exc)
        assert str(path) in message and "\n" not in message.strip(), (case, message)
        return False
    except Exception as exc:  # noqa: BLE001 - the point: nothing else may escape
        pytest.fail(f"{case}: {type(exc).__name__}: {str(exc)[:300]}")
    assert len(records) == 1 and 0 <= records[0]["probability"] <= 1, (case, records)
    return True


@pytest.mark.slow
def test_fuzzed_checkpoint_and_onnx_metadata_load_or_are_refused_in_one_line(trained, tmp_path, capsys):
    run, ckpt, proto, image = trained
    cases = int(os.environ.get("CNNZOO_FUZZ_CASES", "150"))
    rng = random.Random(28)
    counts = {"checkpoint": [0, 0], "onnx": [0, 0]}  # [predicted, refused]
    for case in range(cases):
        if case % 2 == 0:
            meta, changes = _mutate(ckpt["meta"], rng)
            meta = {key: _deep(400) if value == DEEP else value for key, value in meta.items()}  # pickle's limit
            path, kind = _write_checkpoint(ckpt, meta, tmp_path / f"case{case}.pt"), "checkpoint"
        else:
            meta, changes = _mutate(_onnx_meta(proto), rng)
            text = json.dumps(meta).replace(json.dumps(DEEP), "[" * 100_000 + "]" * 100_000)
            path, kind = _write_onnx(proto, text, tmp_path / f"case{case}.onnx"), "onnx"
        loaded = _outcome(path, image, f"case {case} ({kind}): {'; '.join(changes)}")
        counts[kind][0 if loaded else 1] += 1
        path.unlink()
    with capsys.disabled():
        shown = ", ".join(f"{kind} {p} predicted, {r} refused" for kind, (p, r) in counts.items())
        print(f"\nfuzz: {cases} metadata cases: {shown}")
    for predicted, refused in counts.values():
        assert predicted > 0 and refused > predicted  # both outcomes met; most hostile changes refused


# ================================================================ onnxruntime asking for terabytes


def _onnx_asking_for_terabytes(path: Path) -> Path:
    """A valid 2-class graph with cnnzoo metadata that, at run time, fills a [batch, 2^20, 2^20]
    float tensor (4 TiB per image): the shape comes from the input, so nothing folds it away early."""
    from onnx import TensorProto, helper

    def ints(name: str, values: list[int]):
        return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)

    nodes = [
        helper.make_node("Shape", ["image"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "three"], ["batch_and_two"]),
        helper.make_node("Mul", ["batch_and_two", "huge"], ["blob_shape"]),
        helper.make_node("ConstantOfShape", ["blob_shape"], ["blob"], value=helper.make_tensor("one", 1, [1], [1.0])),
        helper.make_node("ReduceSum", ["blob", "one_two"], ["total"], keepdims=0),
        helper.make_node("Unsqueeze", ["total", "one"], ["column"]),
        helper.make_node("ReduceMean", ["image", "two_three"], ["pooled"], keepdims=0),
        helper.make_node("Slice", ["pooled", "zero", "two", "one"], ["two_scores"]),
        helper.make_node("Add", ["two_scores", "column"], ["logits"]),
    ]
    constants = [ints("zero", [0]), ints("one", [1]), ints("two", [2]), ints("three", [3])]
    constants += [ints("huge", [1, 2**20, 2**20]), ints("one_two", [1, 2]), ints("two_three", [2, 3])]
    graph = helper.make_graph(
        nodes,
        "terabytes",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    meta = {"classes": ["a", "b"], "channels": 3, "image_size": [16, 16], "mean": [0.5] * 3, "std": [0.25] * 3}
    helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_an_onnx_graph_asking_for_terabytes_is_one_line_without_onnxruntimes_log(tmp_path):
    """onnxruntime logged the failed allocation itself, an ANSI-coloured line before cnnzoo's."""
    from PIL import Image

    model = _onnx_asking_for_terabytes(tmp_path / "terabytes.onnx")
    Image.new("RGB", (16, 16)).save(tmp_path / "x.png")
    done = run_cnnzoo(["predict", "x.png", "--model", model], tmp_path)
    line = one_error_line(done)
    assert "\x1b" not in done.stderr
    assert line.startswith(f"cnnzoo: error: {model}: onnxruntime cannot run this model (")
