"""Export and torch-free prediction (issue #11), on models trained here for real.

ONNX and TorchScript exports of small CNNs (softmax and one-logit heads) and of a timm
backbone model are checked against their checkpoints; ``cnnzoo predict --model x.onnx``
runs in a subprocess whose ``sys.modules`` is inspected for torch.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import cnnzoo
from cnnzoo import inference
from cnnzoo.cli import app
from cnnzoo.deploy.export import export
from cnnzoo.inference.classifier import METADATA_KEY

from support.cli import one_error_line, predict_listing_torch, run_cnnzoo, torch_modules_imported
from support.images import make_image_tree
from support.runs import tiny_config, train_run, trained_batchnorm_cnn

pytestmark = pytest.mark.slow  # every test here trains a model or uses one a module fixture trained


pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three classes, a BatchNorm CNN, JPEG images; base/runs/latest points at it."""
    return trained_batchnorm_cnn(tmp_path_factory.mktemp("export-run"), train_per_class=12, validation_per_class=4)


@pytest.fixture(scope="module")
def exported(trained):
    return {fmt: export(trained.best, fmt) for fmt in ("onnx", "torchscript")}


def validation_jpegs(run) -> list[str]:
    return sorted(str(p) for p in (run.root / "validation").rglob("*.jpg"))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_writes_a_self_contained_file_that_matches_the_checkpoint(trained, exported, fmt):
    result = exported[fmt]
    assert result.ok and result.max_difference <= 1e-4
    assert result.path == trained.best.with_name("best" + (".onnx" if fmt == "onnx" else ".torchscript.pt"))
    reference = cnnzoo.load(trained.best)
    model = inference.load(result.path, trust_torchscript=fmt == "torchscript")  # our own file: trusted
    assert model.format == fmt and model.classes == ["a", "b", "c"]
    assert model.image_size == reference.image_size and model.mean == reference.mean
    images = validation_jpegs(trained)
    got, want = model.predict(images, top_k=3), reference.predict(images, top_k=3)
    assert [r["label"] for r in got] == [r["label"] for r in want]
    for g, w in zip(got, want):
        for a, b in zip(g["top_k"], w["top_k"]):
            assert a["label"] == b["label"] and a["probability"] == pytest.approx(b["probability"], abs=1e-4)


def test_onnx_batch_size_is_dynamic(exported, trained):
    model = inference.load(exported["onnx"].path)
    images = validation_jpegs(trained)
    one_by_one = [model.predict(p)[0]["probability"] for p in images[:5]]
    batched = [r["probability"] for r in model.predict(images[:5], batch_size=5)]
    assert batched == pytest.approx(one_by_one, abs=1e-6)


def test_onnx_predict_never_imports_torch_and_matches_the_checkpoint_cli(trained, exported):
    images = validation_jpegs(trained)[:6]
    done = predict_listing_torch(str(exported["onnx"].path), images)
    assert done.returncode == 0, done.stderr
    assert torch_modules_imported(done) == []
    onnx_records = json.loads(done.stdout)
    checkpoint = run_cnnzoo(["predict", "--model", trained.best, "--json", *images], trained.base)
    assert checkpoint.returncode == 0, checkpoint.stderr
    for a, b in zip(onnx_records, json.loads(checkpoint.stdout)):
        assert a["image"] == b["image"] and a["label"] == b["label"]
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)


def test_onnx_predict_keeps_the_cli_contract(trained, exported, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    good = validation_jpegs(trained)[0]
    done = run_cnnzoo(["predict", "--model", exported["onnx"].path, good, broken, "--csv", "-k", "2"], trained.base)
    assert done.returncode == 1  # some images unreadable
    lines = done.stdout.splitlines()
    assert lines[0] == "image,label,probability,top1_label,top1_probability,top2_label,top2_probability"
    assert len(lines) == 2 and lines[1].startswith(good)
    assert f"cnnzoo: cannot read {broken}" in done.stderr
    only_bad = run_cnnzoo(["predict", "--model", exported["onnx"].path, broken], trained.base)
    assert only_bad.returncode == 2


def test_binary_head_exports_with_the_same_two_class_probabilities(tmp_path):
    def one_logit(cfg):
        cfg["model"]["layers"][-1] = {"dense": {"out_features": 1}}

    run = train_run(tmp_path, _jpeg_tree_two, one_logit)
    result = export(run.best, "onnx")
    assert result.ok
    images = sorted(str(p) for p in (run.root / "validation").rglob("*.jpg"))
    got = inference.load(result.path).predict(images, top_k=2)
    want = cnnzoo.load(run.best).predict(images, top_k=2)
    assert [r["label"] for r in got] == [r["label"] for r in want]
    assert [r["probability"] for r in got] == pytest.approx([r["probability"] for r in want], abs=1e-5)


def _jpeg_tree_two(base: Path) -> Path:
    return make_image_tree(base / "images", ext="jpg")


def test_a_timm_backbone_model_exports(image_root, tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(5)
    weights = tmp_path / "lite0.pth"
    torch.save(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict(), weights)
    config = tiny_config(image_root, epochs=1)
    config["data"]["image_size"] = 32
    config["model"]["layers"] = [
        {"backbone": {"name": "timm/tf_efficientnet_lite0", "weights": str(weights)}},
        "gap",
        {"dense": {"out_features": "num_classes"}},
    ]
    run = cnnzoo.train(config, out=tmp_path / "runs", quiet=True)
    for fmt in ("onnx", "torchscript"):
        result = export(run / "best.pt", fmt, out=tmp_path / "exports")
        assert result.ok, result.max_difference
        assert result.path.parent == tmp_path / "exports"


def test_parity_failure_exits_1_and_says_so(trained, tmp_path):
    # a tolerance of zero cannot be met by a different runtime's float arithmetic (the ONNX
    # difference is about 1e-8 here), so the failure path runs for real
    done = run_cnnzoo(["export", trained.best, "--out", tmp_path / "strict.onnx", "--tolerance", "0"], trained.base)
    if "largest probability difference 0.00e+00" in done.stdout:
        pytest.skip("onnxruntime reproduced torch bit for bit on this machine")
    assert one_error_line(done, code=1).endswith("do not deploy it (try another --opset or --format)")
    assert "FAILED" in done.stdout


def test_export_cli_defaults_to_the_latest_run(trained, tmp_path):
    done = run_cnnzoo(["export", "--format", "onnx", "--out", tmp_path], trained.base)
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'best.onnx'}" in done.stdout
    assert ": ok" in done.stdout


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--format", "keras"], "--format keras: choose one of onnx, torchscript"),
        (["--out", "/proc/cnnzoo/x.onnx"], "cannot write there"),
    ],
)
def test_bad_export_arguments_are_one_line(trained, args, expected, monkeypatch):
    monkeypatch.chdir(trained.base)  # in-process: the same command code as a `cnnzoo` process
    assert expected in one_error_line(CliRunner().invoke(app, ["export", str(trained.best), *args]))


def test_bad_model_files_are_one_line(trained, tmp_path, monkeypatch):
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"\x08\x07garbage")
    image = validation_jpegs(trained)[0]
    # the real command once; the other refusals in-process (the same code, no new interpreter each)
    assert "not a readable ONNX model" in one_error_line(run_cnnzoo(["predict", "--model", fake, image], tmp_path))
    foreign = tmp_path / "foreign.onnx"
    import onnx

    proto = onnx.load(str(export(trained.best, "onnx", out=tmp_path / "plain.onnx").path))
    del proto.metadata_props[:]
    onnx.save(proto, str(foreign))
    monkeypatch.chdir(trained.base)
    runner = CliRunner()

    def cli(*args: object):
        return runner.invoke(app, [str(a) for a in args])

    assert "without cnnzoo's metadata" in one_error_line(cli("predict", "--model", foreign, image))
    scripted = export(trained.best, "torchscript", out=tmp_path / "model.torchscript.pt").path
    assert "already an export" in one_error_line(cli("export", foreign.with_name("plain.onnx")))
    assert "a TorchScript archive: it holds code" in one_error_line(cli("export", scripted))
    refused = one_error_line(cli("predict", "--model", scripted, image))
    assert "cnnzoo opens one only when told the file is trusted (--trust-torchscript" in refused
    trusted = cli("predict", "--model", scripted, "--trust-torchscript", "--json", image)
    assert trusted.exit_code == 0, trusted.stderr
    assert json.loads(trusted.stdout)[0]["image"] == image


# ============================================================================ what export may write over


def _state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_export_out_never_replaces_its_checkpoint_or_files_that_are_not_exports(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained.run_dir, run)
    os.symlink(run / "best.pt", tmp_path / "link.pt")
    before = _state(run)

    def refused(out: Path, *extra: str) -> str:  # in-process: test_bad_export_arguments_are_one_line runs the process
        return one_error_line(CliRunner().invoke(app, ["export", str(run / "best.pt"), "--out", str(out), *extra]))

    for out, extra in [(run / "best.pt", []), (run / "best.pt", ["--force"]), (tmp_path / "link.pt", ["--force"])]:
        line = refused(out, *extra)
        assert line.startswith(
            f"cnnzoo: error: --out {out}: that is the checkpoint being exported; writing there would replace it"
        ), line
    for name in ("last.pt", "metrics.csv", "config.yaml"):
        line = refused(run / name)
        assert line == (
            f"cnnzoo: error: --out {run / name}: a file that is not an ONNX export is there already "
            f"and would be replaced; choose another --out, or add --force"
        )
    assert _state(run) == before and not list(run.glob(".*.tmp"))
    scripted = export(run / "best.pt", "torchscript").path
    line = refused(scripted)
    assert "a file that is not an ONNX export is there already" in line  # another format's export
    done = run_cnnzoo(["export", run / "best.pt", "--out", run / "metrics.csv", "--force"], tmp_path)  # a real process
    assert done.returncode == 0, done.stderr
    from cnnzoo.deploy.export import is_export

    assert is_export(run / "metrics.csv", "onnx") and (run / "best.pt").read_bytes() == before["best.pt"]


def test_export_replaces_an_earlier_export_of_the_same_format(trained, tmp_path):
    out = tmp_path / "model.onnx"
    first = export(trained.best, "onnx", out=out)
    out.write_bytes(out.read_bytes())  # the same export, a new inode
    again = run_cnnzoo(["export", trained.best, "--out", out], tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"wrote {out}" in again.stdout and first.ok


# ============================================================================ parity must see NaN


def _onnx_with_a_nan_weight(source: Path, out: Path) -> Path:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(source))
    for initializer in proto.graph.initializer:
        values = numpy_helper.to_array(initializer)
        if values.dtype == np.float32 and values.ndim >= 2:
            initializer.CopyFrom(numpy_helper.from_array(np.full_like(values, np.nan), initializer.name))
            break
    onnx.save(proto, str(out))
    return out


def test_parity_check_fails_when_the_export_gives_nan(trained, exported, tmp_path):
    from cnnzoo.deploy.export import _parity_images, max_difference

    broken = inference.load(_onnx_with_a_nan_weight(exported["onnx"].path, tmp_path / "nan.onnx"))
    reference = cnnzoo.load(trained.best)
    worst = max_difference(reference, broken, _parity_images(reference))
    assert not worst <= 1e-4, worst  # NaN (or inf) never passes; the old max() kept 0.0
    image = validation_jpegs(trained)[0]
    line = one_error_line(run_cnnzoo(["predict", "--model", tmp_path / "nan.onnx", image], tmp_path))
    assert line.endswith(
        "the network's output is not finite (NaN or infinite); its weights or the ONNX export are broken"
    )


def _checkpoint_with(trained, tmp_path: Path, value: float, name: str) -> Path:
    ckpt = torch.load(trained.best, weights_only=True)
    key = next(k for k, t in ckpt["model_state"].items() if k.endswith("weight") and t.ndim == 2)
    ckpt["model_state"][key] = torch.full_like(ckpt["model_state"][key], value)
    torch.save(ckpt, tmp_path / name)
    return tmp_path / name


def test_a_checkpoint_with_nonfinite_weights_is_named_as_such(trained, tmp_path, monkeypatch):
    path = _checkpoint_with(trained, tmp_path, float("nan"), "nan.pt")
    image = validation_jpegs(trained)[0]
    line = one_error_line(run_cnnzoo(["export", path], trained.base))  # the real command once
    assert f"{path}: its weights hold NaN or infinite values (1 of" in line and "training diverged?" in line
    monkeypatch.chdir(trained.base)
    for command in (["predict", "-m", path, image], ["evaluate", path]):  # in-process: the same code
        line = one_error_line(CliRunner().invoke(app, [str(a) for a in command]))
        assert f"{path}: its weights hold NaN or infinite values (1 of" in line and "training diverged?" in line
    assert not (tmp_path / "nan.onnx").exists()


def test_outputs_that_overflow_fail_the_parity_check_with_exit_1(trained, tmp_path):
    path = _checkpoint_with(trained, tmp_path, 3e38, "huge.pt")  # finite weights, infinite logits
    done = run_cnnzoo(["export", path], trained.base)
    assert one_error_line(done, code=1) == (
        f"cnnzoo: error: {tmp_path / 'huge.onnx'}: the checkpoint's probabilities are NaN or infinite; do not deploy it"
    )
    assert "FAILED" in done.stdout


# ======================================================================= export metadata, checked like a checkpoint's


def onnx_variant(
    source: Path,
    out: Path,
    *,
    metadata: str | None = None,
    input_dims: list | None = None,
    output_dims: list | None = None,
) -> Path:
    """A copy of a real export with its metadata text or its graph's input/output sizes replaced."""
    import onnx

    proto = onnx.load(str(source))
    if metadata is not None:
        next(e for e in proto.metadata_props if e.key == METADATA_KEY).value = metadata
    for value, dims in ((proto.graph.input[0], input_dims), (proto.graph.output[0], output_dims)):
        if dims is not None:
            shape = value.type.tensor_type.shape
            del shape.dim[:]
            for d in dims:
                entry = shape.dim.add()
                if isinstance(d, int):
                    entry.dim_value = d
                else:
                    entry.dim_param = d
    onnx.save(proto, str(out))
    return out


HOSTILE_ONNX = [
    ({"metadata": "{not json"}, "damaged or foreign ONNX export: its cnnzoo metadata is not JSON"),
    ({"metadata": "[1, 2]"}, "its cnnzoo metadata should be a JSON object, not list"),
    ({"meta": {"classes": ["a", "b"]}}, "it gives 3 outputs but its metadata names 2 classes"),
    ({"meta": {"classes": ["a", "b", "c", "d"]}}, "it gives 3 outputs but its metadata names 4 classes"),
    ({"meta": {"classes": [1, 2, 3]}}, "metadata classes should be a list of 1 to 1,000,000 class names"),
    ({"meta": {"image_size": [20000, 20000]}}, "metadata image_size should be [height, width], each 1 to 4096"),
    ({"meta": {"image_size": [100000, 16]}}, "metadata image_size should be"),
    ({"meta": {"image_size": [0, 16]}}, "metadata image_size should be"),
    ({"meta": {"image_size": [-4, -4]}}, "metadata image_size should be"),
    ({"meta": {"image_size": 16}}, "metadata image_size should be"),
    ({"meta": {"channels": 5}}, "metadata channels should be 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA)"),
    ({"meta": {"std": [0.0, 1.0, 1.0]}}, "metadata std should be positive"),
    ({"meta": {"mean": [float("nan"), 0.0, 0.0]}}, "metadata mean should be 3 numbers"),
    ({"input_dims": [1, 3, 16, 16]}, "its input takes a fixed batch of 1"),
    ({"input_dims": [2, 3, 16, 16]}, "its input takes a fixed batch of 2"),
    ({"input_dims": ["batch", 1, 16, 16]}, "its input is [1, 16, 16] but its metadata says [3, 16, 16]"),
    ({"input_dims": ["batch", 3, 99, 99]}, "not a readable ONNX model"),  # onnxruntime's own shape check
]


@pytest.mark.parametrize("change, expected", HOSTILE_ONNX)
def test_onnx_metadata_and_shapes_are_checked_like_a_checkpoint(trained, exported, tmp_path, change, expected):
    metadata = change.get("metadata")
    if "meta" in change:
        meta = dict(inference.load(exported["onnx"].path).meta)
        meta.update(change["meta"])
        metadata = json.dumps(meta)
    path = onnx_variant(
        exported["onnx"].path,
        tmp_path / "hostile.onnx",
        metadata=metadata,
        input_dims=change.get("input_dims"),
        output_dims=change.get("output_dims"),
    )
    with pytest.raises(cnnzoo.UserError) as refused:
        inference.load(path).predict(validation_jpegs(trained)[:9], batch_size=8)
    assert str(path) in str(refused.value) and expected in str(refused.value), str(refused.value)
    line = one_error_line(run_cnnzoo(["predict", "--model", path, validation_jpegs(trained)[0]], tmp_path))
    assert expected in line


def test_torchscript_metadata_is_checked_like_a_checkpoint(trained, exported, tmp_path):
    import zipfile

    source = exported["torchscript"].path
    hostile = tmp_path / "hostile.torchscript.pt"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(hostile, "w") as copy:
        for entry in original.infolist():
            data = original.read(entry)
            if entry.filename.endswith(f"/extra/{METADATA_KEY}"):
                meta = json.loads(data)
                meta["image_size"] = [20000, 20000]
                data = json.dumps(meta).encode()
            copy.writestr(entry, data)
    with pytest.raises(cnnzoo.UserError, match=r"damaged or foreign torchscript export: metadata image_size"):
        inference.load(hostile, trust_torchscript=True)


def test_onnx_external_data_outside_the_model_folder_is_refused(exported, tmp_path):
    """What held (issue 23): an initializer stored "../outside.bin" is not read; the loading fails in one line."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    folder = tmp_path / "model"
    folder.mkdir()
    proto = onnx.load(str(exported["onnx"].path))
    convert_model_to_external_data(proto, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    onnx.save(proto, str(folder / "inside.onnx"))
    assert inference.load(folder / "inside.onnx").classes == ["a", "b", "c"]  # the control: beside it, it loads
    (folder / "weights.bin").rename(tmp_path / "outside.bin")
    proto = onnx.load(str(folder / "inside.onnx"), load_external_data=False)
    for initializer in proto.graph.initializer:
        for entry in initializer.external_data:
            if entry.key == "location":
                entry.value = "../outside.bin"
    onnx.save(proto, str(folder / "escapes.onnx"))
    with pytest.raises(cnnzoo.UserError, match=r"escapes\.onnx: not a readable ONNX model \(.*External data path"):
        inference.load(folder / "escapes.onnx")


def test_a_format_added_to_the_table_is_written_checked_and_recognised(trained, tmp_path, monkeypatch):
    """Adding an export format is a writer, a recogniser and one line in EXPORT_FORMATS (the
    architecture page's recipe): a toy format, living in the test, goes through the whole command."""
    from cnnzoo.deploy import export as exporting

    written = []

    def toy_written(model, path, opset):
        written.append(path)
        return exporting.EXPORT_FORMATS["onnx"].write(model, path, opset)

    toy = exporting.ExportFormat(".toy.onnx", "a toy", toy_written, exporting.EXPORT_FORMATS["onnx"].recognise)
    monkeypatch.setitem(exporting.EXPORT_FORMATS, "toy", toy)
    result = export(trained.best, "toy", out=tmp_path)
    assert result.ok and result.path == tmp_path / "best.toy.onnx" and written
    assert exporting.is_export(result.path, "toy") and not exporting.is_export(trained.best, "toy")
    with pytest.raises(cnnzoo.errors.UserError, match="a file that is not a toy export"):
        (tmp_path / "notes.toy.onnx").write_text("mine")
        export(trained.best, "toy", out=tmp_path / "notes.toy.onnx")
    assert (tmp_path / "notes.toy.onnx").read_text() == "mine"
