"""Transfer learning (issue #8): the backbone layer, weights, freezing, two stages, the feature cache.

Every backbone here is a real torchvision or timm network; its "pretrained" weights are a
state dict this file writes (random, but fixed), so nothing is downloaded: conftest sets
CNNZOO_OFFLINE and points TORCH_HOME into the test's folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import cnnzoo
from cnnzoo.cli import app
from cnnzoo.config import load_config
from cnnzoo.errors import UserError
from cnnzoo.model.backbones import Backbone, backbone_of
from cnnzoo.training.inputs import load_data, resolve_input
from cnnzoo.training.run import train

from support.runs import metric_rows

RESNET_STAGES = ["stem", "layer1", "layer2", "layer3", "layer4"]


def transfer_config(root: Path, backbone: dict, image_size: int = 32, **train_settings) -> dict:
    return {
        "name": "transfer",
        "seed": 0,
        "data": {"root": str(root), "image_size": image_size, "cache": "ram", "workers": 0},
        "model": {"layers": [{"backbone": backbone}, "gap", {"dense": {"out_features": "num_classes"}}]},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, **train_settings},
    }


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> Path:
    """A whole torchvision resnet18 state dict (fc included), as a user would download one."""
    import torchvision

    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def body_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The backbone's tensors in a cnnzoo checkpoint, under torchvision's own key names."""
    state = torch.load(checkpoint, weights_only=True)["model_state"]
    return {k[len("0.body.") :]: v for k, v in state.items() if k.startswith("0.body.")}


def run_log(capsys) -> str:
    out = capsys.readouterr()
    return out.out + out.err


# ============================================================================ weights and freezing


@pytest.mark.slow
def test_frozen_backbone_keeps_its_weights_and_batchnorm_statistics(image_root, resnet18_file, tmp_path):
    run = train(
        transfer_config(image_root, {"name": "resnet18", "weights": str(resnet18_file)}),
        out=tmp_path / "runs",
        quiet=True,
    )
    original = torch.load(resnet18_file, weights_only=True)
    trained = body_state(run / "last.pt")
    assert set(trained) == {k for k in original if not k.startswith("fc.")}
    for key, value in trained.items():  # running_mean/var too: frozen BatchNorm stays in eval mode
        assert torch.equal(value, original[key]), key
    rows = metric_rows(run)
    assert [r["stage"] for r in rows] == ["1", "1"]
    assert [int(r["trainable_params"]) for r in rows] == [512 * 2 + 2] * 2  # the dense head alone
    assert torch.load(run / "last.pt", weights_only=True)["meta"]["image_size"] == [32, 32]


@pytest.mark.slow
def test_checkpoint_alone_predicts_and_evaluates_without_the_weights_file(image_root, resnet18_file, tmp_path):
    weights = tmp_path / "copy.pth"
    weights.write_bytes(resnet18_file.read_bytes())
    run = train(
        transfer_config(image_root, {"name": "resnet18", "weights": str(weights), "freeze": 1}, epochs=1),
        out=tmp_path / "runs",
        quiet=True,
    )
    weights.unlink()  # predict and evaluate must not need it
    model = cnnzoo.load(run / "best.pt")
    images = sorted((image_root / "validation").rglob("*.png"))
    records = model.predict([str(p) for p in images])
    assert len(records) == len(images)
    report = cnnzoo.evaluate(run / "best.pt", progress=False)
    best_epoch = torch.load(run / "best.pt", weights_only=True)["epoch"]
    row = metric_rows(run)[best_epoch - 1]
    assert report["accuracy"] == pytest.approx(float(row["val_acc"]), abs=1e-6)
    assert report["loss"] == pytest.approx(float(row["val_loss"]), abs=1e-4)
    result = CliRunner().invoke(app, ["predict", str(images[0]), "--checkpoint", str(run / "best.pt"), "--json"])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_two_stages_unfreeze_the_last_stages_at_the_given_epoch(image_root, resnet18_file, tmp_path):
    config = transfer_config(
        image_root,
        {"name": "resnet18", "weights": str(resnet18_file)},
        epochs=3,
        unfreeze_at_epoch=2,
        unfreeze_stages=1,
        backbone_lr=0.002,
    )
    run = train(config, out=tmp_path / "runs", quiet=True)
    rows = metric_rows(run)
    assert [r["stage"] for r in rows] == ["1", "2", "2"]
    head = 512 * 2 + 2
    layer4 = sum(p.numel() for p in Backbone("resnet18", None).body.layer4.parameters())
    assert [int(r["trainable_params"]) for r in rows] == [head, head + layer4, head + layer4]
    assert float(rows[1]["backbone_lr"]) == pytest.approx(0.002)
    original = torch.load(resnet18_file, weights_only=True)
    trained = body_state(run / "last.pt")
    changed = {k.split(".")[0] for k, v in trained.items() if not torch.equal(v, original[k])}
    assert changed == {"layer4"}  # stem and layers 1-3 stayed frozen throughout


@pytest.mark.slow
def test_resume_across_the_unfreeze_epoch_continues_exactly(image_root, resnet18_file, tmp_path):
    def config(epochs):
        return transfer_config(
            image_root,
            {"name": "resnet18", "weights": str(resnet18_file)},
            epochs=epochs,
            unfreeze_at_epoch=2,
            unfreeze_stages=2,
            optimizer="adam",
            lr=0.003,
        )

    whole = train(config(2), out=tmp_path / "whole", quiet=True)
    part = train(config(1), out=tmp_path / "part", quiet=True)  # ends in stage 1, before the unfreeze epoch
    resumed = train(resume=part / "last.pt", overrides=["train.epochs=2"], quiet=True)
    assert [r["stage"] for r in metric_rows(whole)] == ["1", "2"]
    assert metric_rows(resumed) == metric_rows(whole)


@pytest.mark.slow
def test_torchvision_weights_name_reads_the_torch_hub_cache(image_root, isolated_home, tmp_path, capsys):
    import torchvision
    from torchvision.models import ResNet18_Weights

    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(ResNet18_Weights.DEFAULT.url).name
    assert str(hub_file).startswith(str(isolated_home))  # TORCH_HOME points into the test folder
    config = transfer_config(image_root, {"name": "resnet18", "weights": "DEFAULT"}, epochs=1)
    with pytest.raises(UserError) as missing:
        train(config, out=tmp_path / "runs", quiet=True)
    message = str(missing.value)
    assert hub_file.name in message and str(hub_file.parent) in message
    assert message.endswith("or give a state dict file with --set model.layers.0.backbone.weights=PATH")
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made

    torch.manual_seed(7)
    hub_file.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), hub_file)
    run = train(config, out=tmp_path / "runs")
    assert "ResNet18_Weights.IMAGENET1K_V1" in run_log(capsys)
    assert torch.equal(
        body_state(run / "last.pt")["conv1.weight"], torch.load(hub_file, weights_only=True)["conv1.weight"]
    )
    meta = torch.load(run / "best.pt", weights_only=True)["meta"]
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["std"] == pytest.approx([0.229, 0.224, 0.225])


def test_input_size_and_normalisation_follow_the_weights_unless_set(image_root):
    config = transfer_config(image_root, {"name": "mobilenet_v3_small", "weights": "IMAGENET1K_V1"})
    del config["data"]["image_size"]
    cfg = load_config(config)
    assert resolve_input(cfg) == (3, (224, 224))
    spec = load_data(cfg)
    assert spec.mean == pytest.approx([0.485, 0.456, 0.406])
    cfg = load_config(config, ["data.image_size=96", "data.normalize={mean: [0.5], std: [0.25]}"])
    spec = load_data(cfg)
    assert spec.image_size == (96, 96) and spec.mean == [0.5] * 3 and spec.std == [0.25] * 3


@pytest.mark.parametrize(
    "name, stages",
    [
        ("resnet18", 5),
        ("mobilenet_v2", 19),
        ("mobilenet_v3_small", 13),
        ("efficientnet_b0", 9),
        ("convnext_tiny", 8),
        ("vgg11", 5),
        ("regnet_y_400mf", 5),
    ],
)
def test_torchvision_families_build_as_a_chain_of_stages(name, stages):
    backbone = Backbone(name, weights=None, freeze=1)
    assert len(backbone.stages) == stages
    backbone.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(backbone(x), backbone.run(x, 0, stages))
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    last = backbone.stages[-1]
    assert trainable and all(any(n.startswith(f"body.{u}.") for u in last) for n in trainable)


# ============================================================================ the feature cache


@pytest.mark.slow
def test_feature_cache_gives_the_same_training_as_the_whole_network(image_root, resnet18_file, tmp_path, capsys):
    def run(feature_cache):
        config = transfer_config(image_root, {"name": "resnet18", "weights": str(resnet18_file), "freeze": 1}, epochs=2)
        config["data"]["feature_cache"] = feature_cache
        return train(config, out=tmp_path / feature_cache)

    cached = run("ram")
    log = run_log(capsys)
    assert "feature cache train (output of the 4 frozen stages): 24 images x 1 versions of 256x2x2" in log
    whole = run("none")
    assert "feature cache: off (data.feature_cache: none)" in run_log(capsys)
    for a, b in zip(metric_rows(cached), metric_rows(whole)):
        assert a["train_acc"] == b["train_acc"] and a["val_acc"] == b["val_acc"]
        for key in ("train_loss", "val_loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-4)


@pytest.mark.slow
def test_feature_cache_holds_flipped_versions_and_says_why_it_is_off(image_root, resnet18_file, tmp_path, capsys):
    config = transfer_config(image_root, {"name": "resnet18", "weights": str(resnet18_file)}, epochs=1)
    config["data"]["augment"] = {"hflip": True, "vflip": 0.2}
    train(config, out=tmp_path / "flips")
    assert "24 images x 4 versions of 512x1x1" in run_log(capsys)
    config["data"]["augment"] = {"hflip": True, "random_resized_crop": [0.5, 1.0]}
    train(config, out=tmp_path / "crop")
    assert "feature cache: off (data.augment.random_resized_crop changes the pixels every epoch" in run_log(capsys)


@pytest.mark.slow
def test_disk_feature_cache_is_reused_by_the_next_run(image_root, resnet18_file, tmp_path, isolated_home, capsys):
    config = transfer_config(image_root, {"name": "resnet18", "weights": str(resnet18_file)}, epochs=1)
    config["data"]["feature_cache"] = "disk"
    first = train(config, out=tmp_path / "runs")
    assert "reused" not in run_log(capsys)
    files = sorted((isolated_home / "cache").glob("features-*.npy"))
    assert [f.name.split("-")[1] for f in files] == ["train", "validation"]
    second = train(config, out=tmp_path / "runs")
    assert run_log(capsys).count("reused on disk") == 2
    assert metric_rows(first) == metric_rows(second)
    files[0].write_bytes(files[0].read_bytes()[:1000])  # a truncated cache is rebuilt, not trusted
    third = train(config, out=tmp_path / "runs")
    log = run_log(capsys)
    assert f"data.feature_cache: rebuilding {files[0]}: it is truncated (1,000 of " in log
    assert log.count("reused on disk") == 1 and metric_rows(third) == metric_rows(first)


# ============================================================================ timm


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory) -> Path:
    timm = pytest.importorskip("timm")
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("timm") / "lite0.pth"
    torch.save(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict(), path)
    return path


@pytest.mark.slow
def test_timm_backbone_trains_with_a_cut_feature_cache_and_predicts(image_root, lite0_file, tmp_path, capsys):
    config = transfer_config(
        image_root, {"name": "timm/tf_efficientnet_lite0", "weights": str(lite0_file), "freeze": 2}, epochs=2
    )
    config["data"]["augment"] = {"hflip": True}
    run = train(config, out=tmp_path / "runs")
    log = run_log(capsys)
    assert "ignored 2 keys of the original classifier" in log
    assert "feature cache train (output of the 6 frozen stages): 24 images x 2 versions of 112x2x2" in log
    report = cnnzoo.evaluate(run / "best.pt", progress=False)
    best_epoch = torch.load(run / "best.pt", weights_only=True)["epoch"]
    assert report["accuracy"] == pytest.approx(float(metric_rows(run)[best_epoch - 1]["val_acc"]))
    original = torch.load(lite0_file, weights_only=True)
    trained = body_state(run / "last.pt")
    frozen = [k for k in trained if k.startswith(("conv_stem", "bn1", "blocks.0", "blocks.4"))]
    assert frozen and all(torch.equal(trained[k], original[k]) for k in frozen)
    assert not torch.equal(trained["conv_head.weight"], original["conv_head.weight"])


def test_timm_preprocessing_comes_from_the_pretrained_config(image_root, lite0_file):
    config = transfer_config(image_root, {"name": "timm/tf_efficientnet_lite0", "weights": str(lite0_file)})
    del config["data"]["image_size"]
    spec = load_data(load_config(config))
    assert spec.image_size == (224, 224) and spec.mean == [0.5] * 3 and spec.std == [0.5] * 3


class NetworkAttempts:
    """Records every socket connection and name lookup this process tries (a Python audit hook)."""

    def __init__(self):
        import sys

        self.on, self.seen = False, []
        sys.addaudithook(self._hook)  # cannot be removed; it records only while `on`

    def _hook(self, event: str, args) -> None:
        if self.on and event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
            self.seen.append((event, str(args)[:80]))


@pytest.fixture(scope="module")
def network_attempts() -> NetworkAttempts:
    return NetworkAttempts()


def timm_default_config(root: Path) -> dict:
    return transfer_config(root, {"name": "timm/tf_efficientnet_lite0", "weights": "DEFAULT"}, epochs=1)


def test_timm_default_weights_offline_fail_at_once_saying_which_file_goes_where(
    image_root, isolated_home, tmp_path, monkeypatch, network_attempts
):
    pytest.importorskip("timm")
    monkeypatch.delenv("HF_HUB_OFFLINE")  # CNNZOO_OFFLINE alone must keep timm off the network
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(timm_default_config(image_root)))
    network_attempts.on = True
    try:
        result = CliRunner().invoke(app, ["train", "-c", str(config), "--out", str(tmp_path / "runs")])
    finally:
        network_attempts.on = False
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    line = result.stderr.strip()
    folder = isolated_home / "weights" / "timm" / "tf_efficientnet_lite0.in1k"
    assert (
        f"put model.safetensors (from https://huggingface.co/timm/tf_efficientnet_lite0.in1k/resolve/main/"
        f"model.safetensors) in {folder}"
    ) in line
    assert "downloads are off (CNNZOO_OFFLINE)" in line
    assert line.endswith("or give a state dict file with --set model.layers.0.backbone.weights=PATH")
    assert network_attempts.seen == []


@pytest.mark.slow
def test_timm_default_weights_are_read_from_cnnzoo_weights_folder(image_root, isolated_home, tmp_path, capsys):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(11)
    whole = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()  # classifier included
    folder = isolated_home / "weights" / "timm" / "tf_efficientnet_lite0.in1k"
    folder.mkdir(parents=True)
    save_file(whole, str(folder / "model.safetensors"))
    run = train(timm_default_config(image_root), out=tmp_path / "runs")
    assert f"loaded timm tf_efficientnet_lite0 ({folder / 'model.safetensors'})" in run_log(capsys)
    first = torch.load(run / "best.pt", weights_only=True)["model_state"]["0.body.conv_stem.weight"]
    assert torch.equal(first, whole["conv_stem.weight"])  # stage 1 of 7 is frozen: still the file's


def test_timm_default_weights_are_read_from_the_hugging_face_cache_offline(
    image_root, tmp_path, monkeypatch, network_attempts
):
    timm = pytest.importorskip("timm")
    from huggingface_hub import constants
    from safetensors.torch import save_file

    from cnnzoo.model.backbones import Backbone

    # the Hugging Face cache's own layout, as a download with a network leaves it
    repo = tmp_path / "hub" / "models--timm--tf_efficientnet_lite0.in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    torch.manual_seed(12)
    whole = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    save_file(whole, str(repo / "snapshots" / "0123abcd" / "model.safetensors"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # what HF_HOME sets at import
    backbone = Backbone("timm/tf_efficientnet_lite0", "DEFAULT")
    network_attempts.on = True
    try:
        backbone.load_pretrained()
    finally:
        network_attempts.on = False
    assert torch.equal(backbone.body.conv_stem.weight, whole["conv_stem.weight"])
    assert network_attempts.seen == []


def hostile_weight_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a weights file a stranger could hand over, what the one line must say)."""
    import json
    import os
    import struct

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("echo pwned > /tmp/cnnzoo-weights-pwned",))

    files = {}
    pickled = folder / "evil.pth"
    torch.save({"conv1.weight": RunsCode()}, pickled)
    files["pickle"] = (pickled, f"{pickled}: refused: loading it would call posix.system, which is neither")
    huge = folder / "huge_header.safetensors"
    huge.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    files["huge header"] = (
        huge,
        f"{huge}: not a readable safetensors file (Error while deserializing header: header too large)",
    )
    header = json.dumps({"w": {"dtype": "Q99", "shape": [2], "data_offsets": [0, 8]}}).encode()
    dtype = folder / "bad_dtype.safetensors"
    dtype.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    files["bad dtype"] = (
        dtype,
        f"{dtype}: not a readable safetensors file (Error while deserializing header: "
        f"invalid JSON in header: unknown variant `Q99` ...)",
    )
    return files


@pytest.mark.parametrize("kind", ["pickle", "huge header", "bad dtype"])
def test_hostile_weight_files_are_one_complete_line(image_root, tmp_path, kind):
    path, expected = hostile_weight_files(tmp_path)[kind]
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(transfer_config(image_root, {"name": "resnet18", "weights": str(path)})))
    result = CliRunner().invoke(app, ["train", "-c", str(config), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and expected in line, line
    assert "Re-running" not in line and "internal error" not in line
    assert not Path("/tmp/cnnzoo-weights-pwned").exists()


# ============================================================================ summary and errors


def test_summary_shows_the_backbone_as_one_row_with_frozen_parameters(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"image_size": 64},
                "model": {
                    "num_classes": 3,
                    "input": [3, 64, 64],
                    "layers": [
                        {"backbone": {"name": "resnet18", "weights": None, "freeze": 1}},
                        "gap",
                        {"dense": {"out_features": "num_classes"}},
                    ],
                },
            }
        )
    )
    result = CliRunner().invoke(app, ["summary", "-c", str(config), "--json"])
    assert result.exit_code == 0, result.output
    summary = yaml.safe_load(result.output)
    first = summary["layers"][0]
    assert first["type"] == "Backbone" and first["output_shape"] == [512, 2, 2]
    layer4 = sum(p.numel() for p in Backbone("resnet18", None).body.layer4.parameters())
    assert first["params"] == 11_176_512 and first["trainable_params"] == layer4
    assert summary["trainable_params"] == layer4 + 512 * 3 + 3
    # inner activations count: resnet18's stem alone gives 64x32x32 values per image at 64 px
    assert summary["activation_bytes"] > 4 * 64 * 32 * 32 * 4
    table = CliRunner().invoke(app, ["summary", "-c", str(config), "--expand"]).output
    assert f"{11_176_512:,} ({11_176_512 - layer4:,} frozen)" in table
    assert "layer4" in table and "512x2x2" in table


ERROR_CASES = [
    ({"name": "resnet19"}, {}, "did you mean resnet18"),
    (
        {"name": "resnet18", "weights": "/nowhere/r18.pth"},
        {},
        "weights file not found: /nowhere/r18.pth; give the file with --set model.layers.0.backbone.weights=PATH",
    ),
    ({"name": "resnet18", "weights": "IMAGENET9K"}, {}, "weights 'IMAGENET9K' unknown; use one of DEFAULT"),
    ({"name": "resnet18", "freeze": 9}, {}, "freeze: got 9"),
    (
        {"name": "resnet18", "weights": None},
        {"unfreeze_at_epoch": 2, "unfreeze_stages": 0},
        "train.unfreeze_stages: 0 stages train already in stage 1",
    ),
    ({"name": "resnet18", "weights": None}, {"backbone_lr": "fast"}, "train.backbone_lr: got 'fast'"),
    ({"name": "resnet18", "weights": None}, {"unfreeze_at_epoch": 1}, "train.unfreeze_at_epoch: got 1"),
    ({"name": "googlenet"}, {}, "cannot be used as a backbone yet"),
    ({"name": "timm/tf_efficientnet_lite9"}, {}, "timm has no model 'tf_efficientnet_lite9'; did you mean"),
]


@pytest.mark.parametrize("backbone, train_settings, expected", ERROR_CASES)
def test_bad_backbone_settings_are_one_line_and_exit_2(image_root, tmp_path, backbone, train_settings, expected):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(transfer_config(image_root, backbone, **train_settings)))
    result = CliRunner().invoke(app, ["train", "-c", str(config), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("cnnzoo: error: ") and expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_state_dict_of_another_model_is_refused(image_root, tmp_path):
    import torchvision

    other = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), other)
    config = transfer_config(image_root, {"name": "resnet18", "weights": str(other)})
    expected = r"mobilenet.pth lacks 120 of the backbone's 120 tensors .*state dict of resnet18"
    with pytest.raises(UserError, match=expected):
        train(config, out=tmp_path / "runs", quiet=True)


@pytest.mark.parametrize(
    "layers, expected",
    [
        (["flatten", {"backbone": {"name": "resnet18"}}], r"a Backbone cannot follow Flatten/Linear"),
        (
            [{"conv": {"out_channels": 8, "kernel_size": 1}}, {"backbone": {"name": "resnet18"}}],
            r"of 1 \(grey\), 2 \(grey \+ alpha\), 3 \(RGB\) or 4 \(RGBA\) channels, got 8x32x32; put it first",
        ),
        (
            [{"backbone": {"name": "resnet18"}}, {"dense": {"out_features": 2}}],
            r"layer 1 \(Linear\): input is 512x1x1, a 4-D batch; put flatten \(or gap\)",
        ),
    ],
)
def test_backbone_shape_errors_name_the_layer(layers, expected):
    with pytest.raises(UserError, match=expected):
        cnnzoo.build_model(layers, (3, 32, 32), 2, pretrained=False)


@pytest.mark.parametrize(
    "layers",
    [
        [{"backbone": {"name": "resnet18"}}, {"backbone": {"name": "resnet18"}}, "gap", {"dense": {"out_features": 2}}],
        [
            {"repeat": {"times": 1, "layers": [{"backbone": {"name": "resnet18"}}]}},
            "gap",
            {"dense": {"out_features": 2}},
        ],
    ],
)
def test_one_backbone_per_network_outside_repeat(layers):
    with pytest.raises(UserError, match="at most one backbone layer, outside repeat and blocks"):
        cnnzoo.build_model(layers, (3, 32, 32), 2, pretrained=False)


def test_unfreeze_without_a_backbone_is_a_config_error(image_root, tmp_path):
    from support.runs import tiny_config

    with pytest.raises(UserError, match="train.unfreeze_at_epoch: the model has no backbone layer"):
        train(tiny_config(image_root, unfreeze_at_epoch=2), out=tmp_path / "runs", quiet=True)


def test_grey_data_gives_a_backbone_a_one_channel_first_conv():
    layers = [{"backbone": {"name": "resnet18"}}, "gap", {"dense": {"out_features": 2}}]
    model = cnnzoo.build_model(layers, (1, 32, 32), 2, pretrained=False)
    assert backbone_of(model).body.conv1.in_channels == 1
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 2)


@pytest.mark.slow
def test_feature_cache_falls_back_to_ram_when_the_cache_folder_cannot_be_written(
    image_root, resnet18_file, tmp_path, capsys
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = transfer_config(image_root, {"name": "resnet18", "weights": str(resnet18_file)}, epochs=1)
    config["data"].update(feature_cache="disk", cache_dir=str(blocker / "cache"))
    run = train(config, out=tmp_path / "runs")
    log = run_log(capsys)
    assert f"data.feature_cache: cannot write {blocker / 'cache'}" in log
    assert "24 images x 1 versions of 512x1x1" in log and "MB in RAM" in log
    assert len(metric_rows(run)) == 1


@pytest.mark.parametrize(
    "key, value",
    [
        ("rotation", 10),
        ("translate", 0.1),
        ("translate", [0.0, 0.1]),
        ("shear", 5),
        ("zoom", 0.1),
        ("random_resized_crop", [0.6, 1.0]),
        ("color_jitter", {"brightness": 0.2}),
    ],
)
def test_every_augmentation_but_flips_turns_the_feature_cache_off(key, value):
    from cnnzoo.training.feature_cache import _flip_versions

    aug = load_config({"data": {"augment": {key: value, "hflip": True}}}).data.augment
    reason, flips, _ = _flip_versions(aug)
    assert reason.startswith(f"data.augment.{key} changes the pixels every epoch") and flips == []
    still = load_config({"data": {"augment": {"hflip": 0.3, "vflip": True, "translate": [0.0, 0.0]}}}).data.augment
    assert _flip_versions(still) == (None, [(False, False), (False, True), (True, False), (True, True)], (0.3, 0.5))


def test_transfer_settings_are_the_keys_the_stages_and_the_feature_cache_read():
    from cnnzoo.training.transfer import TransferSettings

    cfg = load_config(
        {
            "seed": 3,
            "data": {"feature_cache": "disk", "cache": "ram", "cache_dir": "features", "sampler": "balanced"},
            "train": {"epochs": 4, "unfreeze_at_epoch": 2, "unfreeze_stages": 2, "mixup": 0.2, "batch_size": 8},
        }
    )
    s = TransferSettings.of(cfg)
    assert (s.unfreeze_at_epoch, s.unfreeze_stages, s.epochs, s.batch_size, s.seed) == (2, 2, 4, 8, 3)
    assert (s.feature_cache, s.pixel_cache, s.cache_dir, s.balanced) == ("disk", "ram", Path("features"), True)
    assert s.mixing == ("mixup",) and s.augment is cfg.data.augment
    with pytest.raises(AttributeError):  # frozen: one value per run, read from the config once
        s.epochs = 5
