"""``cnnzoo summary``: a Keras-style table of a config's network, or the same as JSON.

Shapes come from the builder's trace on the meta device, so even VGG-16 is summarised
without allocating its 138 M parameters; multiply-accumulates are counted by torch's
``FlopCounterMode`` (2 FLOPs per MAC).
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import Config
from ..errors import shape_text
from .blocks import BLOCKS
from .layers import LayerInfo, trace_layers


def summarize(cfg: Config, expand: bool = False, *, input_shape: list[int], num_classes: int | None) -> dict[str, Any]:
    """The summary of ``cfg``'s network on ``input_shape`` [C, H, W] as plain data (the caller,
    :func:`cnnzoo.training.inputs.summarize`, takes them from the data where the model leaves them
    out); ``expand`` adds each backbone's stages and each block's layers."""
    infos = trace_layers(cfg.model.layers, input_shape, num_classes, count_macs=True)
    result = _as_dict(infos, input_shape, num_classes)
    if expand:
        for info, layer in zip(infos, result["layers"]):
            if info.type == "Backbone":
                layer["stages"] = _backbone_stages(info)
            elif info.type in BLOCKS:
                layer["inner"] = _block_layers(info)
    return result


def _block_layers(info: LayerInfo) -> list[dict[str, Any]]:
    """A block's inner layers, part by part (``layers``, ``shortcut``, ``path 0`` ...)."""

    with torch.device("meta"):
        block = info.cls(**info.kwargs)
    return [
        {
            "part": part,
            "index": i.index,
            "type": i.type,
            "args": _short_args(i),
            "output_shape": list(i.output_shape),
            "params": i.params,
            "trainable_params": i.trainable_params,
        }
        for part, inner in block.inner.items()
        for i in inner
    ]


def _backbone_stages(info: LayerInfo) -> list[dict[str, Any]]:
    """Each stage of a backbone: its modules, output shape and parameters (traced on the meta device)."""

    with torch.device("meta"):
        backbone = info.cls(**info.kwargs)
    x: Any = torch.empty((1, *info.input_shape), device="meta")
    stages = []
    for index, units in enumerate(backbone.stages):
        params = [p for u in units for p in backbone.body.get_submodule(u).parameters()]
        try:
            x = backbone.run(x, index, index + 1) if x is not None else None
        except Exception:  # a timm model whose forward is not a plain chain: no per-stage shapes
            x = None
        stages.append(
            {
                "index": index,
                "modules": units,
                "output_shape": list(x.shape[1:]) if x is not None else None,
                "params": sum(p.numel() for p in params),
                "trainable_params": sum(p.numel() for p in params if p.requires_grad),
            }
        )
    return stages


def _as_dict(infos: list[LayerInfo], input_shape: list[int], num_classes: int | None) -> dict[str, Any]:
    total = sum(i.params for i in infos)
    trainable = sum(i.trainable_params for i in infos)
    activations = sum(i.activations for i in infos)
    return {
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "layers": [
            {
                "index": i.index,
                "type": i.type,
                "output_shape": list(i.output_shape),
                "params": i.params,
                "trainable_params": i.trainable_params,
                "macs": i.macs,
                "args": _short_args(i),
            }
            for i in infos
        ],
        "total_params": total,
        "trainable_params": trainable,
        "non_trainable_params": total - trainable,
        "macs": sum(i.macs for i in infos),
        "param_bytes": 4 * total,
        "activation_bytes": 4 * activations,
    }


def _short_args(info: LayerInfo) -> str:
    skip = {"in_channels", "in_features", "num_features", "input_shape"}
    return ", ".join(f"{k}={_compact(v)}" for k, v in info.kwargs.items() if k not in skip)


def _compact(v: Any) -> str:
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (list, dict)) for x in v):
        return f"[{len(v)} paths]"  # a block's list of layer lists
    if isinstance(v, (list, tuple)) and any(isinstance(x, (list, dict, str)) for x in v):
        return f"[{len(v)} layers]"  # a block's layer list
    if isinstance(v, (list, tuple)) and v and len(set(v)) == 1:
        return str(v[0])
    return str(v)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GB"


def human_count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(int(n))


def _params_text(entry: dict[str, Any]) -> str:
    frozen = entry["params"] - entry["trainable_params"]
    if not frozen:
        return f"{entry['params']:,}"
    return f"{entry['params']:,} (frozen)" if frozen == entry["params"] else f"{entry['params']:,} ({frozen:,} frozen)"


def format_summary(s: dict[str, Any], title: str = "") -> str:
    rows = [("#", "Layer (type)", "Output shape", "Param #", "MACs")]
    rows.append(("", "Input", shape_text(s["input_shape"]), "", ""))
    for layer in s["layers"]:
        name = f"{layer['type']}({layer['args']})" if layer["args"] else layer["type"]
        rows.append(
            (
                str(layer["index"]),
                name,
                shape_text(layer["output_shape"]),
                _params_text(layer),
                human_count(layer["macs"]) if layer["macs"] else "",
            )
        )
        for inner in layer.get("inner", []):
            name = f"{inner['type']}({inner['args']})" if inner["args"] else inner["type"]
            rows.append(
                (
                    "",
                    f"  {inner['part']}.{inner['index']}: {name}",
                    shape_text(inner["output_shape"]),
                    _params_text(inner),
                    "",
                )
            )
        for stage in layer.get("stages", []):
            shape = shape_text(stage["output_shape"]) if stage["output_shape"] else "?"
            rows.append(
                ("", f"  stage {stage['index']}: {', '.join(stage['modules'])}", shape, _params_text(stage), "")
            )
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    widths[1] = min(widths[1], 52)

    def line(r: tuple[str, ...]) -> str:
        name = r[1] if len(r[1]) <= widths[1] else r[1][: widths[1] - 1] + "…"
        return (
            f"{r[0]:>{widths[0]}}  {name:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]:>{widths[4]}}"
        ).rstrip()

    rule = "─" * len(line(rows[0]).ljust(sum(widths) + 8))
    out = [f'Model: "{title}"' if title else "Model", rule, line(rows[0]), rule.replace("─", "═")]
    out += [line(r) for r in rows[1:]]
    out.append(rule)
    out.append(f"Total params:         {s['total_params']:,} ({human_bytes(s['param_bytes'])})")
    out.append(f"Trainable params:     {s['trainable_params']:,}")
    out.append(f"Non-trainable params: {s['non_trainable_params']:,}")
    out.append(f"MACs per image:       {human_count(s['macs'])} ({s['macs']:,})")
    out.append(f"Activations per image (forward, float32): {human_bytes(s['activation_bytes'])}")
    assumed = " (assumed: the config names no data nor model.num_classes; --set model.num_classes=N)"
    out.append(f"Classes: {s['num_classes']}{assumed if s.get('classes_assumed') else ''}")
    out.append(rule)
    return "\n".join(out)
