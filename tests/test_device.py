"""Precision choice (issue #10): ``train.amp: auto`` measures float32 against autocast.

The probe runs for real here on the CPU, whose autocast supports bfloat16; on CUDA the
engine runs the same function before training.
"""

from __future__ import annotations

import torch

from cnnzoo.model.layers import build_from_infos, trace_layers
from cnnzoo.runtime.device import AMP_MARGIN, choose_amp, measure_amp


def small_model() -> torch.nn.Module:
    layers = [
        {"conv": {"out_channels": 8, "kernel_size": 3, "padding": 1}},
        "batchnorm",
        "relu",
        "pool",
        "flatten",
        {"dense": {"out_features": "num_classes"}},
    ]
    torch.manual_seed(0)
    return build_from_infos(trace_layers(layers, [3, 16, 16], 4))


def test_the_probe_measures_both_precisions_and_leaves_the_model_alone():
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rates = measure_amp(
        model,
        (8, 3, 16, 16),
        num_outputs=4,
        device=torch.device("cpu"),
        candidate=torch.bfloat16,
        channels_last=True,
        steps=2,
    )
    assert set(rates) == {"float32", "bfloat16"}
    assert all(rate > 0 for rate in rates.values())
    after = model.state_dict()  # BatchNorm statistics and weights: the probe trained a copy
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_autocast_is_chosen_only_when_clearly_faster():
    assert choose_amp({"float32": 7034.0, "bfloat16": 6457.0}, torch.bfloat16) is None  # the H100 case
    assert choose_amp({"float32": 100.0, "bfloat16": 100.0 * AMP_MARGIN}, torch.bfloat16) is torch.bfloat16
    assert choose_amp({"float32": 100.0, "float16": 100.0 * AMP_MARGIN - 1}, torch.float16) is None
    assert choose_amp({"float32": 100.0}, None) is None
