"""The model builder (cnnzoo.model.layers): every refusal, and the layers it builds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnzoo.errors import ShapeError, UserError
from cnnzoo.model.layers import GlobalAvgPool, build_from_records, build_model, layer_records, trace_layers

CONV = {"Conv2d": {"out_channels": 8, "kernel_size": 3}}


def shape_error(layers, input_shape=(3, 8, 8), num_classes=None) -> str:
    with pytest.raises(ShapeError) as info:
        trace_layers(layers, input_shape, num_classes)
    msg = str(info.value)
    assert "\n" not in msg  # one line for the CLI
    return msg


def test_shape_error_is_a_user_error():
    assert issubclass(ShapeError, UserError)


# --------------------------------------------------------------------------- kernel arithmetic


def test_kernel_bigger_than_input_shows_the_arithmetic():
    layers = [
        {"conv": {"out_channels": 6, "kernel_size": 5}},
        "relu",
        {"conv": {"out_channels": 16, "kernel_size": 5}},
        "flatten",
    ]
    msg = shape_error(layers, (1, 8, 8))  # 8 -> 4, then a 5x5 kernel on 4x4
    assert msg == (
        "layer 2 (Conv2d, kernel_size=5): input 6x4x4 is smaller than the kernel: "
        "(4 − 5 + 2·0)/1 + 1 = 0; the smallest input that works is 1x9x9"
    )


def test_kernel_arithmetic_with_padding_and_stride():
    msg = shape_error(
        [{"Conv2d": {"out_channels": 4, "kernel_size": 7, "stride": 2, "padding": 1}}, "flatten"], (3, 4, 4)
    )
    assert msg == (
        "layer 0 (Conv2d, kernel_size=7, stride=2, padding=1): input 3x4x4 is smaller "
        "than the kernel: (4 − 7 + 2·1)/2 + 1 = 0; the smallest input that works is 3x5x5"
    )


def test_kernel_arithmetic_with_dilation():
    msg = shape_error([{"Conv2d": {"out_channels": 4, "kernel_size": 3, "dilation": 3}}, "flatten"], (3, 5, 5))
    assert msg == (
        "layer 0 (Conv2d, kernel_size=3, dilation=3): input 3x5x5 is smaller than the "
        "kernel (kernel 3 with dilation 3 spans 7): (5 − 7 + 2·0)/1 + 1 = -1; "
        "the smallest input that works is 3x7x7"
    )


def test_kernel_check_per_axis_for_rectangular_inputs():
    msg = shape_error([{"Conv2d": {"out_channels": 4, "kernel_size": [1, 5]}}, "flatten"], (3, 8, 3))
    assert msg.endswith(
        "input 3x8x3 is smaller than the kernel: (3 − 5 + 2·0)/1 + 1 = -1; the smallest input that works is 3x8x5"
    )


def test_pool_stride_defaults_to_its_kernel_in_the_check():
    # 3 wide with a 2x2 pool: floor((3 - 2)/2) + 1 = 1 (fine); a second pool on 1x1 is not.
    infos = trace_layers(["maxpool", "flatten"], (4, 3, 3))
    assert infos[0].output_shape == (4, 1, 1)
    msg = shape_error(["maxpool", "maxpool", "flatten"], (4, 3, 3))
    assert msg == (
        "layer 1 (MaxPool2d, kernel_size=2): input 4x1x1 is smaller than the kernel: "
        "(1 − 2 + 2·0)/2 + 1 = 0; the smallest input that works is 4x4x4"
    )


def _smallest_by_trying(layers, channels: int) -> int:
    """The smallest square side that traces, found the slow way: every side from 1 up."""
    for side in range(1, 300):
        try:
            trace_layers(layers, (channels, side, side))
            return side
        except ShapeError:
            continue
    raise AssertionError("no side up to 300 works")


LENET_LIKE = [
    {"conv": {"out_channels": 6, "kernel_size": 5}},
    "relu",
    "pool",
    {"conv": {"out_channels": 16, "kernel_size": 5, "stride": 2}},
    "relu",
    "pool",
    {"avgpool": {"kernel_size": 3, "ceil_mode": True}},
    "flatten",
]
BLOCKS_LIKE = [
    {"conv": {"out_channels": 8, "kernel_size": 3, "stride": 2}},
    {
        "residual": {
            "layers": [
                {"conv": {"out_channels": 16, "kernel_size": 3, "stride": 2}},
                "relu",
                {"conv": {"out_channels": 16, "kernel_size": 3}},
            ]
        }
    },
    {
        "branches": {
            "paths": [[{"conv": {"out_channels": 4, "kernel_size": 5}}], [{"maxpool": {"kernel_size": 5, "stride": 1}}]]
        }
    },
    "gap",
]


@pytest.mark.parametrize("layers", [LENET_LIKE, BLOCKS_LIKE], ids=["conv-pool", "blocks"])
def test_too_small_input_names_the_smallest_that_works(layers):
    side = _smallest_by_trying(layers, 3)
    msg = shape_error(layers, (3, side - 1, side - 1))
    assert msg.endswith(f"; the smallest input that works is 3x{side}x{side}"), msg


def test_a_backbone_too_small_for_its_input_names_the_smallest_that_works():
    msg = shape_error([{"backbone": {"name": "vgg11", "weights": None}}, "gap"], (3, 16, 16))
    assert msg.startswith("layer 0 (Backbone): cannot take input 3x16x16") and msg.endswith(
        "; the smallest input that works is 3x32x32"
    )  # five 2x2 pools


def test_no_size_hint_where_no_size_works():
    msg = shape_error([{"AdaptiveAvgPool2d": {"output_size": 0}}, "flatten"], (1, 4, 4))
    assert "smallest input" not in msg


def test_same_padding_is_not_refused():
    infos = trace_layers([{"conv": {"out_channels": 2, "kernel_size": 5, "padding": "same"}}, "flatten"], (1, 3, 3))
    assert infos[0].output_shape == (2, 3, 3)


# --------------------------------------------------------------------------- wiring mistakes


def test_linear_fed_a_feature_map_without_flatten():
    msg = shape_error([CONV, {"dense": {"out_features": 10}}])
    assert msg == (
        "layer 1 (Linear): input is 8x6x6, a 4-D batch; put flatten (or gap) before it to make a vector of 288 features"
    )


def test_explicit_in_channels_mismatch():
    msg = shape_error([{"Conv2d": {"in_channels": 1, "out_channels": 8, "kernel_size": 3}}, "flatten"])
    assert msg == (
        "layer 0 (Conv2d, kernel_size=3): in_channels=1 but the input 3x8x8 has 3 "
        "channels; leave in_channels out to infer it"
    )


def test_explicit_in_features_mismatch():
    msg = shape_error(["flatten", {"Linear": {"in_features": 100, "out_features": 10}}])
    assert msg == (
        "layer 1 (Linear): in_features=100 but the input has 192 features; leave in_features out to infer it"
    )


def test_explicit_num_features_mismatch():
    msg = shape_error([{"BatchNorm2d": {"num_features": 4}}, "flatten"])
    assert "num_features=4 but the input 3x8x8 has 3 channels" in msg


def test_explicit_matching_values_are_kept():
    infos = trace_layers(
        [
            {"Conv2d": {"in_channels": 3, "out_channels": 8, "kernel_size": 3}},
            "flatten",
            {"Linear": {"in_features": 288, "out_features": 5}},
        ],
        (3, 8, 8),
        5,
    )
    assert infos[0].kwargs["in_channels"] == 3 and infos[2].kwargs["in_features"] == 288


@pytest.mark.parametrize(
    "layer, expected",
    [
        (
            CONV,
            "layer 1 (Conv2d, kernel_size=3): needs a feature map, got a vector of 192 values "
            "(a Conv2d cannot follow Flatten/Linear)",
        ),
        (
            "maxpool",
            "layer 1 (MaxPool2d, kernel_size=2): needs a feature map CxHxW, got 192; "
            "MaxPool2d cannot follow Flatten/Linear",
        ),
        ({"avgpool": {"kernel_size": 3}}, "layer 1 (AvgPool2d, kernel_size=3): needs a feature map CxHxW, got 192"),
    ],
)
def test_spatial_layer_after_flatten(layer, expected):
    assert shape_error(["flatten", layer]).startswith(expected)


def test_network_ending_in_a_feature_map():
    msg = shape_error([CONV, "relu"], num_classes=10)
    assert msg.startswith(
        "the network ends with a 8x6x6 feature map, but a classifier must end with one score per class"
    )
    assert "flatten (or gap)" in msg


def test_wrong_final_width_for_the_class_count():
    msg = shape_error(["gap", {"dense": {"out_features": 5}}], num_classes=10)
    assert msg == (
        "layer 1 (Linear): the network ends with 5 outputs but there are 10 classes; use out_features: num_classes"
    )


def test_one_output_is_only_allowed_for_two_classes():
    trace_layers(["gap", {"dense": {"out_features": 1}}], (3, 8, 8), 2)  # binary head (BCE)
    assert "ends with 1 outputs but there are 3 classes" in shape_error(
        ["gap", {"dense": {"out_features": 1}}], num_classes=3
    )


def test_num_classes_used_when_unknown():
    msg = shape_error(["flatten", {"dense": {"out_features": "num_classes"}}], num_classes=None)
    assert msg.startswith(
        "layer 1 (Linear): out_features: num_classes, but the number of classes is unknown; set model.num_classes"
    )


def test_width_not_checked_when_num_classes_unknown():
    infos = trace_layers(["gap", {"dense": {"out_features": 7}}], (3, 8, 8), None)
    assert infos[-1].output_shape == (7,)


def test_empty_network():
    assert shape_error([]) == "model.layers: the network is empty; list at least one layer"


@pytest.mark.parametrize("layers", [{"Conv2d": {}}, "ReLU", None])
def test_layers_must_be_a_list(layers):
    assert shape_error(layers).startswith("model.layers: expected a list of layers")


# --------------------------------------------------------------------------- names and arguments


@pytest.mark.parametrize(
    "name, suggestion",
    [
        ("Conv2D", "Conv2d"),
        ("conv2d", "Conv2d"),
        ("maxpol", "maxpool"),
        ("Relu6", "ReLU6"),
        ("BatchNorm2D", "BatchNorm2d"),
        ("Flaten", "flatten"),  # the alias wins over the class of the same spelling
    ],
)
def test_unknown_layer_name_with_suggestion(name, suggestion):
    msg = shape_error(["flatten", {name: {}}])
    assert msg == f"layer 1 ({name}): unknown layer '{name}'; did you mean {suggestion}?"


def test_unknown_layer_name_without_suggestion():
    assert shape_error(["Xyzzyq"]) == "layer 0 (Xyzzyq): unknown layer 'Xyzzyq'"


@pytest.mark.parametrize("name", ["functional", "init", "Parameter", "_ConvNd"])
def test_non_module_names_in_torch_nn_are_refused(name):
    assert f"unknown layer '{name}'" in shape_error([name])


def test_unknown_argument_with_suggestion():
    msg = shape_error([{"Conv2d": {"out_channels": 8, "kernal_size": 3}}])
    assert msg == "layer 0 (Conv2d): unknown argument 'kernal_size'; did you mean kernel_size?"


def test_unknown_argument_lists_the_accepted_ones():
    msg = shape_error([{"ReLU": {"zzz": True}}])
    assert msg == "layer 0 (ReLU): unknown argument 'zzz'; it takes: inplace"
    assert shape_error([{"Flatten": {"q": 1}}]).endswith("it takes: start_dim, end_dim")


@pytest.mark.parametrize(
    "layer, expected",
    [
        (
            {"Conv2d": {"out_channels": 8}},
            "layer 0 (Conv2d): missing argument kernel_size; write e.g. `Conv2d: {kernel_size: ...}`",
        ),
        (
            "conv",
            "layer 0 (Conv2d): missing arguments out_channels, kernel_size; "
            "write e.g. `Conv2d: {out_channels: ..., kernel_size: ...}`",
        ),
        ("dense", "layer 0 (Linear): missing argument out_features"),
        ("MaxPool2d", "layer 0 (MaxPool2d): missing argument kernel_size"),
    ],
)
def test_missing_required_argument(layer, expected):
    layers = [layer] if layer != "dense" else ["flatten", layer]
    msg = shape_error(layers)
    assert msg.replace("layer 1", "layer 0").startswith(expected), msg


@pytest.mark.parametrize(
    "entry",
    [
        {"Conv2d": {"out_channels": 8, "kernel_size": 3}, "ReLU": None},  # two keys: missing '- '
        ["Conv2d", "ReLU"],
        3,
        {},
    ],
)
def test_bad_entry_form(entry):
    msg = shape_error(["relu", entry])
    assert msg.startswith("model.layers.1: a layer is a name (`- ReLU`) or a one-key mapping")


def test_arguments_must_be_a_mapping():
    msg = shape_error([{"Conv2d": 3}])
    assert msg.startswith("model.layers.0 (Conv2d): arguments must be a mapping")


def test_layer_name_must_be_text():
    assert shape_error([{3: {}}]).startswith("model.layers.0: layer name must be text")


@pytest.mark.parametrize("times", [0, -1, "2", 1.5, True, None])
def test_repeat_with_bad_times(times):
    msg = shape_error([{"repeat": {"times": times, "layers": ["relu"]}}, "flatten"])
    assert msg == f"model.layers.0 (repeat): times must be a positive integer, got {times!r}"


@pytest.mark.parametrize("args", [{"times": 2}, {"layers": ["relu"]}, {"times": 2, "layers": [], "x": 1}, None, 3])
def test_repeat_with_bad_shape(args):
    assert shape_error([{"repeat": args}]) == "model.layers.0 (repeat): write `repeat: {times: N, layers: [...]}`"


def test_repeat_layers_must_be_a_list_and_errors_point_inside():
    assert shape_error([{"repeat": {"times": 2, "layers": "relu"}}]).startswith(
        "model.layers.0.repeat.layers: expected a list of layers"
    )
    msg = shape_error(["relu", {"repeat": {"times": 2, "layers": ["relu", {"a": 1, "b": 2}]}}])
    assert msg.startswith("model.layers.1.repeat.layers.1: a layer is a name")


def test_torch_constructor_errors_become_shape_errors():
    msg = shape_error([{"dropout": {"p": 2}}, "flatten"])
    assert msg.startswith("layer 0 (Dropout): dropout probability has to be between 0 and 1")


def test_layer_that_returns_a_tuple_is_refused():
    msg = shape_error([{"LSTM": {"input_size": 4, "hidden_size": 3}}], (5, 4))
    assert msg == "layer 0 (LSTM): returns tuple, not a tensor; it cannot be used in a sequential network"


def test_empty_output_is_refused():
    msg = shape_error([{"AdaptiveAvgPool2d": {"output_size": 0}}, "flatten"], (1, 4, 4))
    assert msg == "layer 0 (AdaptiveAvgPool2d): turns input 1x4x4 into an empty output 1x0x0"


def test_forward_errors_become_shape_errors():
    # padding over half the kernel is refused by torch only when the pool runs
    msg = shape_error([{"MaxPool2d": {"kernel_size": 2, "padding": 2}}, "flatten"])
    assert msg.startswith("layer 0 (MaxPool2d, kernel_size=2, padding=2): cannot take input 3x8x8: ")


# --------------------------------------------------------------------------- happy paths


def test_aliases_resolve_to_torch_classes_with_defaults():
    layers = [
        {"conv": {"out_channels": 4, "kernel_size": 3, "padding": 1}},
        "batchnorm",
        "relu",
        "maxpool",
        "pool",
        "avgpool",
        "dropout",
        "gap",
        "batchnorm",
        {"dense": {"out_features": "num_classes"}},
    ]
    infos = trace_layers(layers, (3, 16, 16), 3)
    assert [i.type for i in infos] == [
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "MaxPool2d",
        "MaxPool2d",
        "AvgPool2d",
        "Dropout",
        "GlobalAvgPool",
        "BatchNorm1d",
        "Linear",
    ]
    assert [i.output_shape for i in infos] == [
        (4, 16, 16),
        (4, 16, 16),
        (4, 16, 16),
        (4, 8, 8),
        (4, 4, 4),
        (4, 2, 2),
        (4, 2, 2),
        (4,),
        (4,),
        (3,),
    ]
    assert infos[3].kwargs["kernel_size"] == 2 and infos[5].kwargs["kernel_size"] == 2
    assert infos[1].kwargs["num_features"] == 4 and infos[8].kwargs["num_features"] == 4
    assert infos[9].kwargs == {"out_features": 3, "in_features": 4}
    model = build_model(layers, (3, 16, 16), 3)
    assert isinstance(model[7], GlobalAvgPool)
    assert isinstance(model[1], nn.BatchNorm2d) and isinstance(model[8], nn.BatchNorm1d)


def test_alias_defaults_can_be_overridden():
    infos = trace_layers([{"maxpool": {"kernel_size": 3, "stride": 1}}, "flatten"], (1, 5, 5))
    assert infos[0].output_shape == (1, 3, 3)


def test_bare_names_and_empty_mappings():
    infos = trace_layers(["ReLU", {"Flatten": None}, {"Identity": {}}], (2, 3, 3))
    assert [i.type for i in infos] == ["ReLU", "Flatten", "Identity"]
    assert infos[-1].output_shape == (18,)


def test_in_channels_and_in_features_are_inferred():
    infos = trace_layers(
        [
            {"Conv2d": {"out_channels": 5, "kernel_size": 3}},
            {"Conv2d": {"out_channels": 7, "kernel_size": 1}},
            "flatten",
            {"Linear": {"out_features": 2}},
        ],
        (3, 6, 6),
    )
    assert infos[0].kwargs["in_channels"] == 3
    assert infos[1].kwargs["in_channels"] == 5
    assert infos[3].kwargs["in_features"] == 7 * 4 * 4


def test_repeat_expands_to_the_right_count_and_positions():
    block = {"repeat": {"times": 3, "layers": [{"conv": {"out_channels": 4, "kernel_size": 3, "padding": 1}}, "relu"]}}
    infos = trace_layers([block, "gap", {"dense": {"out_features": 2}}], (1, 8, 8), 2)
    assert len(infos) == 3 * 2 + 2
    assert [i.type for i in infos[:6]] == ["Conv2d", "ReLU"] * 3
    assert [i.index for i in infos] == list(range(8))
    assert infos[0].kwargs["in_channels"] == 1 and infos[2].kwargs["in_channels"] == 4
    assert infos[3].where == "model.layers.0.repeat.layers.1"
    assert infos[6].where == "model.layers.1"
    model = build_model([block, "gap", {"dense": {"out_features": 2}}], (1, 8, 8), 2)
    assert len(model) == 8 and model[4] is not model[0]  # independent copies, not shared weights


def test_nested_repeat():
    inner = {"repeat": {"times": 2, "layers": ["relu"]}}
    infos = trace_layers([{"repeat": {"times": 3, "layers": [inner, "Identity"]}}, "flatten"], (1, 2, 2))
    assert len(infos) == 3 * 3 + 1


def test_gap_averages_each_channel():
    infos = trace_layers(["gap"], (5, 7, 3))
    assert infos[0].output_shape == (5,) and infos[0].type == "GlobalAvgPool"
    x = torch.arange(2 * 5 * 7 * 3, dtype=torch.float32).reshape(2, 5, 7, 3)
    out = build_model(["gap"], (5, 7, 3))(x)
    torch.testing.assert_close(out, x.mean(dim=(2, 3)))


def test_batchnorm_alias_picks_2d_or_1d():
    assert trace_layers(["batchnorm", "flatten"], (3, 4, 4))[0].type == "BatchNorm2d"
    assert trace_layers(["flatten", "batchnorm"], (3, 4, 4))[1].type == "BatchNorm1d"


def test_forward_of_the_built_model_gives_batch_by_classes():
    torch.manual_seed(0)
    layers = [
        {"conv": {"out_channels": 8, "kernel_size": 3, "padding": 1}},
        "batchnorm",
        "relu",
        "maxpool",
        {"conv": {"out_channels": 16, "kernel_size": 3}},
        "relu",
        "gap",
        {"dropout": {"p": 0.2}},
        {"dense": {"out_features": "num_classes"}},
    ]
    model = build_model(layers, (3, 32, 32), 10)
    assert isinstance(model, nn.Sequential) and len(model) == 9
    assert all(p.device.type == "cpu" and not p.is_meta for p in model.parameters())
    x = torch.randn(5, 3, 32, 32)
    model.train()
    assert model(x).shape == (5, 10)
    model.eval()
    out = model(x)
    assert out.shape == (5, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert model[0].weight.grad is not None


def test_binary_head_forward():
    model = build_model(["flatten", {"dense": {"out_features": 1}}], (1, 4, 4), 2)
    assert model(torch.zeros(3, 1, 4, 4)).shape == (3, 1)


def test_params_are_counted_per_layer():
    infos = trace_layers(
        [{"conv": {"out_channels": 4, "kernel_size": 3}}, "batchnorm", "flatten", {"dense": {"out_features": 2}}],
        (3, 5, 5),
        2,
    )
    assert [i.params for i in infos] == [4 * 3 * 9 + 4, 2 * 4, 0, 4 * 9 * 2 + 2]
    assert [i.trainable_params for i in infos] == [i.params for i in infos]
    model = build_model(
        [{"conv": {"out_channels": 4, "kernel_size": 3}}, "batchnorm", "flatten", {"dense": {"out_features": 2}}],
        (3, 5, 5),
        2,
    )
    assert sum(p.numel() for p in model.parameters()) == sum(i.params for i in infos)


def test_macs_of_a_single_conv():
    c_in, c_out, k, h, w = 3, 4, 3, 10, 8
    infos = trace_layers(
        [{"Conv2d": {"out_channels": c_out, "kernel_size": k}}, "flatten"], (c_in, h, w), count_macs=True
    )
    out_elems = c_out * (h - k + 1) * (w - k + 1)
    assert infos[0].output_shape == (c_out, h - k + 1, w - k + 1)
    assert infos[0].macs == out_elems * c_in * k * k  # 4*8*6*27 = 5184
    assert infos[1].macs == 0


def test_macs_of_a_strided_conv_and_a_linear():
    infos = trace_layers(
        [
            {"Conv2d": {"out_channels": 6, "kernel_size": 5, "stride": 2, "padding": 2}},
            "flatten",
            {"dense": {"out_features": 7}},
        ],
        (2, 16, 16),
        count_macs=True,
    )
    assert infos[0].output_shape == (6, 8, 8)
    assert infos[0].macs == 6 * 8 * 8 * 2 * 5 * 5
    assert infos[2].macs == 6 * 8 * 8 * 7


def test_macs_are_zero_unless_asked():
    infos = trace_layers([{"Conv2d": {"out_channels": 4, "kernel_size": 3}}, "flatten"], (3, 8, 8))
    assert infos[0].macs == 0


@pytest.mark.parametrize("text, value", [("1e-5", 1e-5), ("1E-3", 1e-3), ("2.5e-2", 0.025), ("+1e0", 1.0)])
def test_number_strings_are_converted(text, value):
    infos = trace_layers([{"BatchNorm2d": {"eps": text}}, "flatten"], (3, 4, 4))
    assert infos[0].kwargs["eps"] == pytest.approx(value) and isinstance(infos[0].kwargs["eps"], float)
    model = build_model([{"BatchNorm2d": {"eps": text}}, "flatten"], (3, 4, 4))
    assert model[0].eps == pytest.approx(value)


def test_non_number_strings_are_left_alone():
    infos = trace_layers(
        [{"Conv2d": {"out_channels": 2, "kernel_size": 3, "padding": "same", "padding_mode": "reflect"}}, "flatten"],
        (1, 4, 4),
    )
    assert infos[0].kwargs["padding"] == "same" and infos[0].kwargs["padding_mode"] == "reflect"


def test_num_classes_placeholder_anywhere():
    infos = trace_layers(
        ["flatten", {"dense": {"out_features": "num_classes"}}, "relu", {"dense": {"out_features": "num_classes"}}],
        (1, 2, 2),
        6,
    )
    assert infos[1].kwargs["out_features"] == 6 and infos[3].kwargs["in_features"] == 6


def test_layer_records_rebuild_the_same_model():
    torch.manual_seed(0)
    layers = [{"conv": {"out_channels": 3, "kernel_size": [3, 1]}}, "relu", "gap", {"dense": {"out_features": 2}}]
    infos = trace_layers(layers, (2, 6, 6), 2)
    records = layer_records(infos)
    assert records[0]["type"] == "Conv2d" and records[0]["kwargs"]["kernel_size"] == [3, 1]
    rebuilt = build_from_records(records)
    original = build_model(layers, (2, 6, 6), 2)
    rebuilt.load_state_dict(original.state_dict())
    x = torch.randn(2, 2, 6, 6)
    torch.testing.assert_close(rebuilt(x), original(x))


def test_tracing_does_not_allocate_real_weights():
    # a 4096 x 25088 Linear traced on the meta device: fast, and nothing real is kept
    infos = trace_layers(["flatten", {"dense": {"out_features": 4096}}], (512, 7, 7))
    assert infos[1].params == 512 * 49 * 4096 + 4096


# --------------------------------------------------------------------------- ceil_mode


def test_ceil_mode_pool_is_accepted_when_torch_accepts_it():
    assert nn.MaxPool2d(2, ceil_mode=True)(torch.zeros(1, 1, 1, 1)).shape == (1, 1, 1, 1)
    infos = trace_layers([{"MaxPool2d": {"kernel_size": 2, "ceil_mode": True}}, "flatten"], (1, 1, 1))
    assert infos[0].output_shape == (1, 1, 1)


def test_a_layer_that_warns_and_fails_gives_the_error_line_alone(image_root, tmp_path):
    """nn.Transformer warns about nested tensors as it is made; that UserWarning came out before the
    one error line of a Transformer that cannot be a layer. A list that traces still shows it, once."""
    import yaml

    from support.cli import one_error_line, run_cnnzoo

    def summary(*layers):
        config = {"data": {"root": str(image_root), "image_size": 16}, "model": {"layers": ["flatten", *layers]}}
        (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
        return run_cnnzoo(["summary", "-c", "cfg.yaml"], tmp_path, PYTHONWARNINGS="default")

    transformer = {"Transformer": {"d_model": 768, "nhead": 4, "num_encoder_layers": 1, "num_decoder_layers": 1}}
    line = one_error_line(summary(transformer, {"dense": {"out_features": "num_classes"}}))
    assert "layer 1 (Transformer): cannot take input 768" in line
    traced = summary({"dense": {"out_features": "num_classes"}}, "Softmax")  # torch warns: no dim given
    assert traced.returncode == 0, traced.stderr
    assert traced.stderr.count("UserWarning: Implicit dimension choice for softmax") == 1, traced.stderr
