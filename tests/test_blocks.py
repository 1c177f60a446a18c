"""Residual, branch and squeeze-excite blocks (issue #13): shapes, errors, checkpoints, summary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

import cnnzoo
from cnnzoo.cli import app
from cnnzoo.config import load_config
from cnnzoo.errors import UserError
from cnnzoo.model.layers import build_model, trace_layers
from cnnzoo.training.run import train

from support.runs import metric_rows, tiny_config

BASIC = [
    {"conv": {"out_channels": 8, "kernel_size": 3, "padding": 1, "bias": False}},
    "batchnorm",
    "relu",
    {"conv": {"out_channels": 8, "kernel_size": 3, "padding": 1, "bias": False}},
    "batchnorm",
]
DOWN = [
    {"conv": {"out_channels": 16, "kernel_size": 3, "stride": 2, "padding": 1, "bias": False}},
    "batchnorm",
    "relu",
    {"conv": {"out_channels": 16, "kernel_size": 3, "padding": 1, "bias": False}},
    "batchnorm",
]
HEAD = ["gap", {"dense": {"out_features": "num_classes"}}]


def small_net() -> list:
    return [
        {"conv": {"out_channels": 8, "kernel_size": 3, "padding": 1}},
        {"residual": {"layers": BASIC}},
        {"residual": {"layers": DOWN}},
        {"squeeze_excite": {"reduction": 4}},
        {
            "branches": {
                "paths": [
                    [{"conv": {"out_channels": 4, "kernel_size": 1}}],
                    [{"conv": {"out_channels": 6, "kernel_size": 3, "padding": 1}}],
                ]
            }
        },
        *HEAD,
    ]


def test_residual_adds_the_input_or_an_inferred_projection():
    model = build_model(small_net(), (3, 15, 15), 2)
    identity, projected = model[1], model[2]
    assert isinstance(identity.shortcut, nn.Identity)
    conv, bn = projected.shortcut  # 8x15x15 -> 16x8x8: 1x1 conv, stride 2, no bias, then batchnorm
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (8, 16, (1, 1), (2, 2))
    assert conv.bias is None
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 16
    model.eval()
    x = torch.randn(2, 8, 15, 15)
    with torch.no_grad():
        assert torch.allclose(identity(x), torch.relu(identity.body(x) + x))
        assert model(torch.randn(2, 3, 15, 15)).shape == (2, 2)
    infos = trace_layers(small_net(), (3, 15, 15), 2)
    assert [i.output_shape for i in infos[1:5]] == [(8, 15, 15), (16, 8, 8), (16, 8, 8), (10, 8, 8)]


def test_branches_add_and_squeeze_excite():
    paths = [
        [{"conv": {"out_channels": 5, "kernel_size": 3, "padding": 1}}],
        [{"conv": {"out_channels": 5, "kernel_size": 1}}],
    ]
    layers = [{"branches": {"merge": "add", "paths": paths}}, {"squeeze_excite": {"reduction": 2}}, *HEAD]
    model = build_model(layers, (3, 8, 8), 3).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        merged = model[0].paths[0](x) + model[0].paths[1](x)
        assert torch.allclose(model[0](x), merged, atol=1e-6)
        gate = model[1].gate(merged)
        assert gate.shape == (1, 5, 1, 1) and torch.allclose(model[1](merged), merged * gate)


@pytest.mark.parametrize(
    "layers, expected",
    [
        (
            [{"residual": {"layers": [{"conv": {"out_channels": 8, "kernel_size": 9}}]}}, *HEAD],
            r"layer 0 \(Residual\): layers: layer 0 \(Conv2d, kernel_size=9\): input 3x4x4 is smaller than the kernel: "
            r"\(4 − 9 \+ 2·0\)/1 \+ 1 = -4",
        ),
        (
            [
                {"residual": {"shortcut": "identity", "layers": [{"conv": {"out_channels": 8, "kernel_size": 1}}]}},
                *HEAD,
            ],
            r"layer 0 \(Residual\): shortcut identity: the layers turn 3x4x4 into 8x4x4",
        ),
        (
            [
                {"residual": {"layers": [{"ConvTranspose2d": {"out_channels": 3, "kernel_size": 2, "stride": 2}}]}},
                *HEAD,
            ],
            r"cannot infer a shortcut from 3x4x4 to 3x8x8; write shortcut",
        ),
        (
            [{"residual": {"layers": ["relu"], "shortcut": [{"conv": {"out_channels": 5, "kernel_size": 1}}]}}, *HEAD],
            r"shortcut: gives 5x4x4 but the layers give 3x4x4",
        ),
        (
            [{"branches": {"paths": [["relu"], ["pool"]]}}, *HEAD],
            r"merge concat: the paths give 3x4x4, 3x2x2; they need the same height and width",
        ),
        ([{"branches": {"paths": [["relu"]]}}, *HEAD], r"paths: give at least two lists"),
        ([{"residual": {"layers": ["relu"], "activation": "nothing"}}, *HEAD], r"unknown layer 'nothing'"),
        (["flatten", {"squeeze_excite": {}}, *HEAD], r"needs a feature map CxHxW, got 48"),
        (
            [
                {"residual": {"layers": [{"repeat": {"times": 3000, "layers": ["relu"]}}]}},
                {"residual": {"layers": [{"repeat": {"times": 3000, "layers": ["relu"]}}]}},
                *HEAD,
            ],
            r"more layers than a network may have \(5,000\), blocks included",
        ),
        ([{"residual": {"layers": [{"backbone": {"name": "resnet18"}}]}}, *HEAD], r"at most one backbone layer"),
    ],
)
def test_errors_inside_blocks_name_the_block_and_the_layer(layers, expected):
    with pytest.raises(UserError, match=expected):
        trace_layers(layers, (3, 4, 4), 2)


@pytest.mark.slow
def test_a_block_network_trains_and_its_checkpoint_predicts_and_evaluates(image_root, tmp_path):
    config = tiny_config(image_root, epochs=2)
    config["model"]["layers"] = small_net()
    run = train(config, out=tmp_path / "runs", quiet=True)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["layers"][2]["type"] == "Residual" and ckpt["layers"][2]["kwargs"]["input_shape"] == [8, 16, 16]
    report = cnnzoo.evaluate(run / "best.pt", progress=False)
    row = metric_rows(run)[ckpt["epoch"] - 1]
    assert report["accuracy"] == pytest.approx(float(row["val_acc"])) and report["loss"] == pytest.approx(
        float(row["val_loss"]), abs=1e-5
    )
    images = [str(p) for p in sorted((image_root / "validation").rglob("*.png"))]
    records = cnnzoo.load(run / "best.pt").predict(images)
    assert len(records) == 8


def test_set_reaches_a_layer_inside_a_block_and_repeat_repeats_blocks(tmp_path):
    raw = {
        "model": {
            "input": [3, 16, 16],
            "num_classes": 2,
            "layers": [
                {"conv": {"out_channels": 8, "kernel_size": 3, "padding": 1}},
                {"repeat": {"times": 3, "layers": [{"residual": {"layers": BASIC}}]}},
                *HEAD,
            ],
        }
    }
    cfg = load_config(
        raw,
        [
            "model.layers.1.repeat.layers.0.residual.layers.3.conv.kernel_size=5",
            "model.layers.1.repeat.layers.0.residual.layers.3.conv.padding=2",
        ],
    )
    model = build_model(cfg.model.layers, cfg.model.input, cfg.model.num_classes)
    blocks = [m for m in model if type(m).__name__ == "Residual"]
    assert len(blocks) == 3 and all(b.body[3].kernel_size == (5, 5) for b in blocks)


def test_summary_shows_a_block_as_one_row_and_expand_shows_its_layers(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"input": [3, 15, 15], "num_classes": 2, "layers": small_net()}}))
    plain = CliRunner().invoke(app, ["summary", "-c", str(config), "--json"])
    layers = yaml.safe_load(plain.output)["layers"]
    assert [layer["type"] for layer in layers[1:5]] == ["Residual", "Residual", "SqueezeExcite", "Branches"]
    assert layers[2]["params"] == sum(p.numel() for p in build_model(small_net(), (3, 15, 15), 2)[2].parameters())
    expanded = yaml.safe_load(CliRunner().invoke(app, ["summary", "-c", str(config), "--json", "--expand"]).output)
    shortcut = [i for i in expanded["layers"][2]["inner"] if i["part"] == "shortcut"]
    assert [(i["type"], i["args"], i["output_shape"]) for i in shortcut] == [
        ("Conv2d", "out_channels=16, kernel_size=1, stride=2, bias=False", [16, 8, 8]),
        ("BatchNorm2d", "", [16, 8, 8]),
    ]
    table = CliRunner().invoke(app, ["summary", "-c", str(config), "--expand"]).output
    assert (
        "  shortcut.0: Conv2d(out_channels=16" in table and "  path 1.0: Conv2d(kernel_size=3, out_channels=6" in table
    )


@pytest.mark.slow
def test_a_zoo_config_trains_on_a_folder_and_evaluates(image_root, tmp_path):
    config = str(Path(__file__).resolve().parents[1] / "configs" / "resnet18.yaml")
    runs = tmp_path / "runs"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "-c",
            config,
            "--data",
            str(image_root),
            "--unset",
            "model.num_classes",
            "--unset",
            "model.input",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--runs",
            str(runs),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    report = cnnzoo.evaluate(runs / "latest" / "best.pt", progress=False)
    assert report["num_images"] == 8 and report["classes"] == ["a", "b"]
