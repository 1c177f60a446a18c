"""The command line (issue #2): fast help, the summary table, and user errors as one line.

Help, exit codes and the no-traceback rule are checked on real processes: the installed
``cnnzoo`` script, or ``python -c`` running ``cnnzoo.cli.main()`` exactly as the script
does, when the test must look inside the process (which modules got imported).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import cnnzoo
from cnnzoo.cli import app

from support.cli import CONFIGS, PROJECT, one_error_line, run_cnnzoo, subprocess_env

HOMEWORK = CONFIGS / "zoomcamp_homework.yaml"

# Runs the console script's entry point in this process, then reports on stderr (after
# whatever the command printed) its exit code and which heavy modules were imported.
PROBE = r"""
import json, sys
args = json.loads(sys.argv[1])
sys.argv = ["cnnzoo", *args]
import cnnzoo.cli
code = "returned"
try:
    cnnzoo.cli.main()
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "torchvision") if m in sys.modules)
sys.stderr.write("\nPROBE " + json.dumps({"code": code, "heavy": heavy}) + "\n")
"""


def probe(args: list[str], cwd: Path = PROJECT, importtime: bool = True) -> tuple[dict, subprocess.CompletedProcess]:
    """Run the CLI in a fresh interpreter (``-X importtime``: also list every module imported)."""
    flags = ["-X", "importtime"] if importtime else []
    result = subprocess.run(
        [sys.executable, *flags, "-c", PROBE, json.dumps(args)],
        cwd=str(cwd),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    tail = [line for line in result.stderr.splitlines() if line.startswith("PROBE ")]
    assert result.returncode == 0 and len(tail) == 1, result.stderr[-3000:]
    report = json.loads(tail[0][len("PROBE ") :])
    if importtime:
        # -X importtime lines: "import time: self | cumulative | name" (nested names are indented)
        imported = {
            m.group(1)
            for m in re.finditer(r"^import time:\s*\d+\s*\|\s*\d+\s*\|\s*(\S+)\s*$", result.stderr, re.MULTILINE)
        }
        assert "cnnzoo.cli" in imported, "the importtime trace was not read"
        report["imported"] = imported
    return report, result


HELP_ARGS = [
    ["--help"],
    ["-h"],
    ["train", "--help"],
    ["summary", "--help"],
    ["predict", "--help"],
    ["evaluate", "--help"],
    ["export", "--help"],
    ["serve", "--help"],
    ["explain", "--help"],
    ["lr-find", "--help"],
    ["sweep", "--help"],
    ["--version"],
]


@pytest.mark.parametrize("args", HELP_ARGS, ids=[" ".join(a) for a in HELP_ARGS])
def test_help_is_fast_and_never_imports_torch(args):
    report, result = probe(args)
    assert report["code"] in (0, None), result.stderr[-2000:]
    assert report["heavy"] == [], f"{' '.join(args)} imported {report['heavy']}"
    assert "torch" not in report["imported"] and "torchvision" not in report["imported"]
    if args != ["--version"]:
        assert "Usage" in result.stdout


def test_the_probe_does_see_torch_and_summary_prints_the_table():
    """Control for the test above (a command that needs torch shows it), and the summary table."""
    report, result = probe(["summary", "--config", str(HOMEWORK)], importtime=False)
    assert report["code"] in (0, None), result.stderr[-2000:]
    assert "torch" in report["heavy"]
    table = result.stdout
    expected_rows = [
        ("0", "Conv2d", "32x148x148", "896"),
        ("1", "ReLU", "32x148x148", "0"),
        ("2", "MaxPool2d", "32x74x74", "0"),
        ("3", "Flatten", "175232", "0"),
        ("4", "Linear", "64", "11,214,912"),
        ("5", "ReLU", "64", "0"),
        ("6", "Linear", "10", "650"),
    ]
    lines = table.splitlines()
    for index, kind, shape, params in expected_rows:
        matching = [line for line in lines if re.match(rf"\s*{index}\s+{kind}\b", line)]
        assert len(matching) == 1, f"row {index} {kind} not found in\n{table}"
        assert shape in matching[0].split() and params in matching[0].split(), matching[0]
    assert re.search(r"Total params:\s+11,216,458\b", table), table
    assert "Input" in table and "3x150x150" in table


def test_real_script_help_and_version():
    result = run_cnnzoo(["--help"], cwd=PROJECT)
    assert result.returncode == 0, result.stderr
    for command in ("train", "summary", "predict", "evaluate", "export", "serve", "explain", "lr-find", "sweep"):
        assert command in result.stdout
    version = run_cnnzoo(["--version"], cwd=PROJECT)
    assert version.returncode == 0
    assert version.stdout.strip() == f"cnnzoo {cnnzoo.__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", cnnzoo.__version__)


# ----------------------------------------------------------------------------- summary


def summary_json(*extra: str) -> dict:
    result = CliRunner().invoke(app, ["summary", "--config", str(HOMEWORK), "--json", *extra])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_summary_json_keys_and_totals():
    s = summary_json()
    for key in ("input_shape", "layers", "total_params", "trainable_params", "macs"):
        assert key in s
    assert s["input_shape"] == [3, 150, 150]
    assert [layer["index"] for layer in s["layers"]] == list(range(7))
    for layer in s["layers"]:
        assert {"index", "type", "output_shape", "params"} <= set(layer)
    assert [layer["type"] for layer in s["layers"]] == [
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Flatten",
        "Linear",
        "ReLU",
        "Linear",
    ]
    assert s["layers"][3]["output_shape"] == [32 * 74 * 74]
    by_hand = (3 * 3 * 3 * 32 + 32) + (32 * 74 * 74 * 64 + 64) + (64 * 10 + 10)
    assert s["total_params"] == by_hand == 11_216_458 == s["trainable_params"]
    assert sum(layer["params"] for layer in s["layers"]) == s["total_params"]
    # multiply-accumulates: conv 27 per output value, dense in*out (biases are additions)
    assert s["macs"] == 32 * 148 * 148 * 27 + 32 * 74 * 74 * 64 + 64 * 10


def test_summary_set_changes_the_totals():
    text = HOMEWORK.read_text()
    assert re.search(r"^\s*- conv: \{out_channels: 32", text, re.MULTILINE), "layer 0's key is `conv`"
    s = summary_json("--set", "model.layers.0.conv.out_channels=64")
    assert s["layers"][0]["output_shape"] == [64, 148, 148]
    by_hand = (3 * 3 * 3 * 64 + 64) + (64 * 74 * 74 * 64 + 64) + (64 * 10 + 10)
    assert s["total_params"] == by_hand == 22_432_202
    both = summary_json("--set", "model.num_classes=2", "--set", "model.layers.6.dense.out_features=1")
    assert both["total_params"] == 11_215_873  # the homework's binary head, as the config says


# ----------------------------------------------------------------------------- user errors


@pytest.fixture(scope="module")
def bad_configs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad-configs")
    (folder / "syntax.yaml").write_text("name: x\nmodel:\n\tlayers: [relu]\n")  # a tab on line 3
    net = "model:\n  input: [3, 8, 8]\n  num_classes: 2\n  layers:\n{layers}\n"
    (folder / "kernel.yaml").write_text(
        net.format(
            layers="    - conv: {out_channels: 4, kernel_size: 11}\n"
            "    - flatten\n"
            "    - dense: {out_features: num_classes}"
        )
    )
    (folder / "layer.yaml").write_text(
        net.format(
            layers="    - convv: {out_channels: 4, kernel_size: 3}\n"
            "    - flatten\n"
            "    - dense: {out_features: num_classes}"
        )
    )
    (folder / "key.yaml").write_text(
        net.format(layers="    - flatten\n    - dense: {out_features: num_classes}") + "train:\n  epoks: 3\n"
    )
    return folder


ERRORS = {  # name -> (arguments, words the one line must contain)
    "missing-config": (["summary", "--config", "nope.yaml"], ["nope.yaml", "not found"]),
    "yaml-syntax": (["summary", "--config", "syntax.yaml"], ["syntax.yaml:3", "YAML"]),
    "unknown-key": (["summary", "--config", "key.yaml"], ["train.epoks", "did you mean train.epochs"]),
    "kernel-bigger-than-input": (["summary", "--config", "kernel.yaml"], ["layer 0", "kernel", "8x8"]),
    "bad-set-syntax": (
        ["summary", "--config", str(HOMEWORK), "--set", "train.epochs"],
        ["--set", "train.epochs", "key=value"],
    ),
    "unknown-layer": (["summary", "--config", "layer.yaml"], ["convv", "did you mean conv"]),
    "train-without-config": (["train"], ["--config"]),
}


# each costs a torch import (2-3 s) as a real process; the rest go through Typer's runner
SUBPROCESS_ERRORS = [
    "missing-config",
    "yaml-syntax",
    "kernel-bigger-than-input",
    "unknown-layer",
    "train-without-config",
]


@pytest.mark.parametrize("name", SUBPROCESS_ERRORS)
def test_user_errors_are_one_line_and_exit_2(name, bad_configs):
    args, words = ERRORS[name]
    result = run_cnnzoo(args, cwd=bad_configs)
    line = one_error_line(result)
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert result.stdout == ""


@pytest.mark.parametrize("name", list(ERRORS))
def test_user_errors_in_process(name, bad_configs, monkeypatch):
    args, words = ERRORS[name]
    monkeypatch.chdir(bad_configs)
    result = CliRunner().invoke(app, args)
    line = one_error_line(result)
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert result.stdout == ""


def test_debug_shows_the_traceback(bad_configs):
    result = run_cnnzoo(["--debug", "summary", "--config", "syntax.yaml"], cwd=bad_configs)
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert "ConfigError" in result.stderr and "syntax.yaml:3" in result.stderr


def test_more_set_mistakes_in_process(bad_configs, monkeypatch):
    monkeypatch.chdir(bad_configs)
    runner = CliRunner()
    for args, words in [
        (["summary", "-c", str(HOMEWORK), "--set", "model.layers.9.conv.out_channels=4"], ["layers", "9"]),
        (["summary", "-c", str(HOMEWORK), "--set", "=3"], ["--set", "empty"]),
        (["summary", "-c", str(HOMEWORK), "--set", "model.layers.0.conv.kernel_size=200"], ["kernel"]),
        (["train", "--config", "nope.yaml"], ["nope.yaml"]),
    ]:
        line = one_error_line(runner.invoke(app, args))
        for word in words:
            assert word in line, (args, line)


# ============================================================================ shortcuts and conventions (issue #9)


@pytest.mark.slow
def test_train_shortcut_flags_and_unset(image_root, tmp_path):
    from support.runs import tiny_config

    config = tmp_path / "c.yaml"
    raw = tiny_config(tmp_path / "elsewhere")
    raw["train"]["patience"] = 1
    config.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(
        app,
        [
            "train",
            "-c",
            str(config),
            "--data",
            str(image_root),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--image-size",
            "12",
            "--unset",
            "train.patience",
            "--runs",
            str(tmp_path / "runs"),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "runs" / "latest" / "config.yaml").read_text())
    assert saved["data"]["root"] == str(image_root) and saved["data"]["image_size"] == [12, 12]
    assert (saved["train"]["epochs"], saved["train"]["batch_size"], saved["train"]["patience"]) == (1, 4, None)
    assert list(saved)[:2] == ["name", "seed"] and saved["data"]["channels"] == 3
    bad = CliRunner().invoke(app, ["train", "-c", str(config), "--unset", "train.nothing"])
    assert bad.exit_code == 2 and "--unset train.nothing: the config has no such key" in bad.stderr


@pytest.mark.slow
def test_train_name_flag_names_the_run_folder(image_root, tmp_path):
    from support.runs import tiny_config

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(image_root, epochs=1)))
    result = CliRunner().invoke(
        app, ["train", "-c", str(config), "--name", "photos_v2", "--runs", str(tmp_path / "runs"), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "runs" / "photos_v2" / "1")
    assert yaml.safe_load((tmp_path / "runs" / "latest" / "config.yaml").read_text())["name"] == "photos_v2"
    bad = CliRunner().invoke(app, ["train", "-c", str(config), "--name", "../up", "--runs", str(tmp_path / "r2")])
    assert bad.exit_code == 2 and "name: got '../up'; a run name is one folder name" in bad.stderr
    assert not (tmp_path / "r2").exists()


def test_version_short_flag_and_debug_anywhere(tmp_path):
    import subprocess

    assert CliRunner().invoke(app, ["-V"]).output.startswith("cnnzoo ")
    config = tmp_path / "typo.yaml"
    config.write_text("train: {epoch: 3}\n")
    result = subprocess.run(
        [sys.executable, "-m", "cnnzoo.cli", "train", "-c", str(config), "--debug"], capture_output=True, text=True
    )
    assert "Traceback" in result.stderr and "train.epoch: unknown key" in result.stderr


def test_summary_without_data_says_how_to_give_the_class_count(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"root": str(tmp_path / "missing"), "image_size": 16},
                "model": {"layers": ["flatten", {"dense": {"out_features": "num_classes"}}]},
            }
        )
    )
    result = CliRunner().invoke(app, ["summary", "-c", str(config)])
    assert result.exit_code == 2 and "--set model.num_classes=N" in result.stderr
    assert CliRunner().invoke(app, ["summary", "-c", str(config), "--set", "model.num_classes=3"]).exit_code == 0


def test_nproc_forwards_the_command_line_as_typed_without_nproc():
    """``--nproc N`` starts each process with the user's own arguments, so an option added to
    ``train`` later cannot be dropped on the way; only ``--nproc`` itself is taken out."""
    from cnnzoo.cli.train import forwarded_argv

    typed = shlex.split("--debug train -c 'a b.yaml' --nproc 2 --set train.lr=0.1 --epochs 1 -n x --nproc=3 -q")
    assert forwarded_argv(typed) == shlex.split("--debug train -c 'a b.yaml' --set train.lr=0.1 --epochs 1 -n x -q")
