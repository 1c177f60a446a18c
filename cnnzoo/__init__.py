"""cnnzoo: convolutional image classifiers described in YAML.

The Python API (the CLI is a thin layer over it)::

    import cnnzoo
    run_dir = cnnzoo.train("configs/quickstart.yaml", train__epochs=5)
    model = cnnzoo.load(run_dir / "best.pt")   # or an export: "best.onnx"
    model.predict(["a.jpg", pil_image, tensor], top_k=3)
    model.predict_manifest("test.csv", tta=True)       # cnnzoo predict --data test.csv --tta
    report = cnnzoo.evaluate(run_dir / "best.pt")      # or an export, without torch: "best.onnx"
    cnnzoo.export(run_dir / "best.pt", "onnx")          # best.onnx: cnnzoo.load() runs it without torch
    cnnzoo.benchmark(run_dir / "best.pt")               # every format: size, accuracy, latency (benchmark.md)
    path, report = cnnzoo.explain(run_dir / "best.pt", "a.jpg")
    cnnzoo.data_issues("clothing_transfer", "images.csv")  # issues/issues.csv and issues.html
    cnnzoo.tune("c.yaml", trials=20)   # Optuna search over the config's tune: section
    cnnzoo.write_shards(cnnzoo.load_config({"data": {"root": "photos"}}), "s3://bucket/set")  # data shards
    cnnzoo.sync_run(run_dir, "s3://bucket/runs/c/1")   # cnnzoo runs sync: checkpoints off the node

Attributes are imported on first use, so ``import cnnzoo`` (and ``cnnzoo --help``) does
not import torch.

The package, by floor (a module imports only from its own floor or below; tests/test_layering.py
checks it): errors, console, files | config, plots, pages | checkpoint, runs | runtime (device, DDP,
the torch install) | model | data, inference | evaluation | training | deploy, explanation | cli.
Each sub-package's ``__init__`` says what it owns.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "train": ("training.run", "train"),
    "load": ("inference", "load"),
    "export": ("deploy.export", "export"),
    "benchmark": ("deploy.benchmark", "benchmark"),
    "explain": ("explanation.page", "explain"),
    "evaluate": ("evaluation.evaluate", "evaluate"),
    "data_issues": ("training.issues", "data_issues"),
    "tune": ("training.tune", "tune"),
    "write_shards": ("data.shard_export", "write_source"),
    "sync_run": ("data.remote", "sync"),
    "load_config": ("config", "load_config"),
    "build_model": ("model.layers", "build_model"),
    "summarize": ("training.inputs", "summarize"),
    "UserError": ("errors", "UserError"),
}
__all__ = list(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attr = _API[name]
        return getattr(importlib.import_module(f"cnnzoo.{module}"), attr)
    raise AttributeError(f"module 'cnnzoo' has no attribute {name!r}")
