"""Shipped configs: they load and trace, their headers tell the truth, and the classic
architectures are layer for layer the ones torchvision builds (no weights downloaded)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from cnnzoo.config import load_config
from cnnzoo.model.layers import build_model, trace_layers

from support.shared import reads_shared

torchvision = pytest.importorskip("torchvision")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = ["zoomcamp_homework", "lenet5", "alexnet", "vgg11", "vgg16", "resnet18", "resnet50", "mobilenet_v2"]
TORCHVISION = {  # config name -> (torchvision factory, published parameter count)
    "alexnet": (torchvision.models.alexnet, 61_100_840),
    "vgg11": (torchvision.models.vgg11, 132_863_336),
    "vgg16": (torchvision.models.vgg16, 138_357_544),
    "resnet18": (torchvision.models.resnet18, 11_689_512),
    "resnet50": (torchvision.models.resnet50, 25_557_032),
    "mobilenet_v2": (torchvision.models.mobilenet_v2, 3_504_872),
}
CHAINS = ["alexnet", "vgg11", "vgg16"]  # plain chains: compared layer by layer (the rest hold blocks)
HEADER_COUNT = re.compile(r"^#.*\bParameters:\s*([\d,]+)", re.MULTILINE)


def header_param_count(text: str) -> int | None:
    """The N of 'Parameters: N' in the comment block before the first YAML line."""
    head = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            break
        head.append(line)
    match = HEADER_COUNT.search("\n".join(head))
    return int(match.group(1).replace(",", "")) if match else None


def config_path(name: str) -> Path:
    return CONFIGS / f"{name}.yaml"


def build_ours(name: str, device: str = "cpu") -> nn.Sequential:
    cfg = load_config(config_path(name))
    with torch.device(device):
        return build_model(cfg.model.layers, cfg.model.input, cfg.model.num_classes)


def build_torchvision(name: str, device: str = "cpu") -> nn.Module:
    factory, _ = TORCHVISION[name]
    with torch.device(device):
        return factory(weights=None)


def torchvision_sequence(model: nn.Module) -> list[nn.Module]:
    """torchvision's leaf modules in forward order; its forward flattens after avgpool."""
    leaves = []
    for module in model.modules():
        if not list(module.children()):
            leaves.append(module)
            if isinstance(module, nn.AdaptiveAvgPool2d):
                leaves.append(nn.Flatten())
    return leaves


def normalized_repr(module: nn.Module) -> str:
    # ReLU(inplace=True) computes what ReLU() does; [6, 6] from YAML is torchvision's (6, 6)
    return repr(module).replace("inplace=True", "").replace("[", "(").replace("]", ")")


# --------------------------------------------------------------------------- torchvision twins


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_parameter_count_and_shapes_equal_torchvision(name):
    # both on the meta device: exact shapes, no memory, no init time
    ours = build_ours(name, "meta")
    theirs = build_torchvision(name, "meta")
    _, published = TORCHVISION[name]
    our_count = sum(p.numel() for p in ours.parameters())
    assert our_count == sum(p.numel() for p in theirs.parameters()) == published
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]


@pytest.mark.parametrize("name", CHAINS)
def test_layer_sequence_equals_torchvision(name):
    ours = build_ours(name, "meta")
    theirs = torchvision_sequence(build_torchvision(name, "meta"))
    assert [normalized_repr(m) for m in ours] == [normalized_repr(m) for m in theirs]


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    src_params, dst_params = list(src.parameters()), list(dst.parameters())
    assert len(src_params) == len(dst_params)
    with torch.no_grad():
        for s, d in zip(src_params, dst_params):
            d.copy_(s)


def test_forward_equals_torchvision_with_the_same_weights():
    # AlexNet only: the VGGs' layer reprs (kernel, stride, padding) are compared above,
    # and a second 133M-weight random init would cost seconds for little more
    torch.manual_seed(0)
    theirs = build_torchvision("alexnet").eval()
    ours = build_ours("alexnet").eval()  # the real (non-meta) build path
    assert all(not p.is_meta for p in ours.parameters())
    copy_weights(theirs, ours)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert got.shape == expected.shape == (2, 1000)
    scale = expected.abs().max()
    assert scale > 0
    torch.testing.assert_close(got / scale, expected / scale, rtol=1e-4, atol=1e-5)


def copy_state(src: nn.Module, dst: nn.Module) -> None:
    """Parameters and BatchNorm buffers, in module order (both nets list them alike)."""
    copy_weights(src, dst)
    src_buffers, dst_buffers = list(src.buffers()), list(dst.buffers())
    assert [b.shape for b in src_buffers] == [b.shape for b in dst_buffers]
    with torch.no_grad():
        for s, d in zip(src_buffers, dst_buffers):
            d.copy_(s)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2"])
def test_residual_networks_compute_what_torchvision_computes(name):
    torch.manual_seed(0)
    theirs = build_torchvision(name)
    ours = build_ours(name)
    copy_state(theirs, ours)
    with torch.no_grad():  # trained-looking BatchNorm statistics, so that eval mode is not a no-op
        for module in theirs.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    copy_state(theirs, ours)
    theirs.eval()
    ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    scale = expected.abs().max()
    assert scale > 0
    torch.testing.assert_close(got / scale, expected / scale, rtol=1e-4, atol=1e-5)


def test_forward_comparison_catches_a_stride_change():
    # same parameter shapes (the adaptive pool hides the size change), different network:
    # the forward comparison above is what tells them apart
    torch.manual_seed(0)
    theirs = build_torchvision("alexnet").eval()
    cfg = load_config(config_path("alexnet"), ["model.layers.0.conv.stride=3"])
    with torch.device("meta"):
        ours = build_model(cfg.model.layers, cfg.model.input, cfg.model.num_classes)
    ours = ours.to_empty(device="cpu").eval()
    copy_weights(theirs, ours)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert not torch.allclose(ours(x), theirs(x), rtol=1e-3, atol=1e-6)


# --------------------------------------------------------------------------- every shipped config


def shipped_configs() -> list[Path]:
    return sorted(CONFIGS.glob("*.yaml")) + sorted(CONFIGS.glob("*.yml"))


def test_the_documented_configs_are_shipped():
    names = {p.stem for p in shipped_configs()}
    assert set(SHIPPED) <= names


def shipped_params() -> list:
    """Every shipped config; those that point into ../shared carry the needs_shared marker."""
    return [
        pytest.param(p, id=p.name, marks=[pytest.mark.needs_shared] if reads_shared(p.read_text("utf-8")) else [])
        for p in shipped_configs()
    ]


@pytest.mark.parametrize("path", shipped_params())
def test_shipped_config_loads_traces_and_header_count_matches(path, tmp_path, monkeypatch):
    from cnnzoo.training.inputs import ASSUMED_CLASSES, resolve_model_shape

    monkeypatch.chdir(tmp_path)  # a config file's relative paths are read from its own folder
    text = path.read_text(encoding="utf-8")
    cfg = load_config(path)
    assert cfg.name, "a shipped config names itself"
    if cfg.data.source == "folder" and cfg.data.root and not Path(cfg.data.root).exists():
        pytest.skip(
            f"its data {cfg.data.root} is not present here (a fresh clone has no ../shared, and a data set "
            f"that a script under scripts/ builds is not built yet)"
        )
    if cfg.data.source == "folder" and not cfg.data.root and not cfg.model.num_classes:  # data from --data
        cfg = load_config(path, [f"model.num_classes={ASSUMED_CLASSES}"])  # what `cnnzoo summary` assumes
    input_shape, num_classes = resolve_model_shape(cfg)  # from data where the model leaves it out
    infos = trace_layers(cfg.model.layers, input_shape, num_classes)
    assert infos[-1].output_shape in {(num_classes,), (1,)}
    documented = header_param_count(text)
    assert documented is not None, f"{path.name}: the header comment needs 'Parameters: N'"
    assert documented == sum(i.params for i in infos)


def test_header_count_parser():
    text = "# Net\n# Parameters: 61,706 (as the builder counts them)\n\nname: x\n# Parameters: 5\n"
    assert header_param_count(text) == 61_706
    assert header_param_count("name: x\n# Parameters: 5\n") is None  # only the header counts


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_are_model_only(name):
    raw = yaml.safe_load(config_path(name).read_text(encoding="utf-8"))
    assert set(raw) == {"name", "model"} and raw["name"] == name
    assert set(raw["model"]) == {"input", "num_classes", "layers"}


def test_lenet5_shapes_and_forward():
    cfg = load_config(config_path("lenet5"))
    infos = trace_layers(cfg.model.layers, cfg.model.input, cfg.model.num_classes)
    assert [i.output_shape for i in infos if i.type in ("Conv2d", "AvgPool2d", "Flatten", "Linear")] == [
        (6, 28, 28),
        (6, 14, 14),
        (16, 10, 10),
        (16, 5, 5),
        (400,),
        (120,),
        (84,),
        (10,),
    ]
    assert sum(i.params for i in infos) == 61_706
    model = build_ours("lenet5")
    assert model(torch.randn(4, 1, 32, 32)).shape == (4, 10)


def test_zoomcamp_homework_binary_variant():
    # the override documented in the config's header
    cfg = load_config(config_path("zoomcamp_homework"), ["model.num_classes=2", "model.layers.6.dense.out_features=1"])
    infos = trace_layers(cfg.model.layers, cfg.model.input, cfg.model.num_classes)
    assert infos[-1].output_shape == (1,)
    assert sum(i.params for i in infos) == 11_215_873
    assert infos[3].output_shape == (32 * 74 * 74,)
