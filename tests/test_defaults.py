"""Training without a config (issue 30, items 1 and 3): the default recipe and the line that says
why, ``--model``, the shipped configs by name (``cnnzoo configs``), configs without their data,
and hub weights that fail fast with no network whether or not CNNZOO_OFFLINE is set."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cnnzoo.config import about, load_config, shipped_configs
from cnnzoo.config.shipped import SHIPPED_FOLDER

from support.cli import PROJECT, invoke_cnnzoo, one_error_line, run_cnnzoo
from support.images import make_image_tree, write_kaggle_layout
from support.shared import reads_shared, shared_path

TINY = ["--epochs", "1", "--image-size", "16", "--batch-size", "8", "--quiet"]
LITE0_FOLDER = Path("weights") / "timm" / "tf_efficientnet_lite0.in1k"  # under CNNZOO_HOME


def no_network_here() -> None:
    """Skip where this machine reaches the weights' hosts: these tests need the network absent."""
    from cnnzoo.model.weights import reachable

    if reachable("https://huggingface.co/") or reachable("https://download.pytorch.org/"):
        pytest.skip("this machine reaches huggingface.co or download.pytorch.org; the test needs no network")


def kaggle_set(folder: Path) -> Path:
    """images/ + images.csv, two labels of 12 pictures; returns the folder."""
    write_kaggle_layout(folder, {"T-Shirt": 12, "Pants": 12})
    return folder


# --------------------------------------------------------------------------- the shipped configs


def test_the_shipped_configs_are_package_data_and_the_repository_folder_links_to_them():
    assert (PROJECT / "configs").resolve() == SHIPPED_FOLDER
    assert set(shipped_configs()) >= {"quickstart", "clothing", "clothing_recipe", "clothing_transfer"}


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_config_says_what_it_is_and_reaches_nothing_beside_the_project(name):
    path = shipped_configs()[name]
    text = path.read_text(encoding="utf-8")
    assert 20 < len(about(path)) <= 120, f"{name}: the first line is `# About: ...`, one short line"
    assert not reads_shared(text) and "../data" not in text
    raw = yaml.safe_load(text)
    assert "root" not in (raw.get("data") or {}), f"{name}: a shipped config takes its data from --data"
    for item in raw["model"]["layers"]:
        if isinstance(item, dict) and "backbone" in item:
            assert item["backbone"]["weights"] == "DEFAULT", "weights come from the cache, not a path"


def test_configs_lists_each_shipped_config_with_its_line_and_how_to_copy_one(tmp_path):
    result = invoke_cnnzoo(["configs"], tmp_path)
    assert result.exit_code == 0, result.stderr
    for name, path in shipped_configs().items():
        assert any(line.split()[:1] == [name] and about(path) in line for line in result.stdout.splitlines()), name
    assert f"cp {SHIPPED_FOLDER}/NAME.yaml my.yaml" in result.stdout


def test_a_config_is_named_without_its_path(tmp_path):
    assert load_config("resnet_clothing").source_path == str(shipped_configs()["resnet_clothing"])
    assert load_config("quickstart.yaml").name == "quickstart"
    result = invoke_cnnzoo(["summary", "-c", "quickstart", "--json"], tmp_path)
    assert result.exit_code == 0 and '"num_classes": 5' in result.stdout, result.stderr
    (tmp_path / "quickstart").write_text("name: mine\nmodel: {input: [3, 8, 8], num_classes: 2, layers: [flatten]}\n")
    assert load_config(tmp_path / "quickstart").name == "mine"  # a file the user has wins over the name


def test_an_unknown_config_name_lists_the_shipped_ones(tmp_path):
    line = one_error_line(invoke_cnnzoo(["summary", "-c", "resnet_clothes"], tmp_path))
    assert "resnet_clothes: config file not found, and no shipped config has that name" in line
    assert "resnet_clothing" in line and "quickstart" in line


def test_a_config_without_its_data_asks_for_data_in_one_line(tmp_path):
    commands = (
        ["train", "-c", "clothing"],
        ["lr-find", "-c", "configs/clothing_recipe.yaml"],
        ["data", "check", "clothing"],
    )
    for command in commands:
        line = one_error_line(invoke_cnnzoo(command, PROJECT if "/" in command[-1] else tmp_path))
        assert "data.root is not set; give your data with --data DIR" in line, line


def test_summary_of_a_shipped_clothing_config_needs_no_data(tmp_path):
    result = invoke_cnnzoo(["summary", "--config", PROJECT / "configs" / "clothing.yaml"], tmp_path)
    assert result.exit_code == 0, result.stderr
    assert "Total params:         391,946" in result.stdout  # the header comment's count, at 10 classes
    assert "Classes: 10 (assumed: the config names no data nor model.num_classes" in result.stdout


# --------------------------------------------------------------------------- train without a config


def test_train_without_config_or_data_says_what_to_give(tmp_path):
    line = one_error_line(invoke_cnnzoo(["train"], tmp_path))
    assert "give --data DIR" in line and "--config FILE" in line and "--resume" in line


def test_model_refuses_a_name_that_is_neither_a_backbone_nor_a_shipped_config(tmp_path):
    line = one_error_line(invoke_cnnzoo(["train", "--data", tmp_path, "--model", "resnet_19"], tmp_path))
    assert "--model resnet_19: not a backbone nor a shipped config" in line
    assert "timm/ARCH" in line and "clothing_recipe" in line
    line = one_error_line(invoke_cnnzoo(["train", "-c", "quickstart", "--model", "resnet18"], tmp_path))
    assert "--model: give --model NAME or --config, not both" in line


def trained_without_config(base: Path, data: Path, *extra: str) -> tuple[str, dict]:
    """``cnnzoo train --data DATA`` (tiny) in this process, its one line about the choice, and the run's config."""
    result = invoke_cnnzoo(["train", "--data", data, *extra, *TINY], base)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    choice = [
        line for line in result.stderr.splitlines() if line.startswith(("cnnzoo: no --config", "cnnzoo: --model"))
    ]
    assert len(choice) == 1, result.stderr
    run = base / result.stdout.strip().splitlines()[-1]
    assert (run / "best.pt").is_file()
    saved = load_config(run / "config.yaml")  # the saved config trains again as it is
    return choice[0], saved.to_dict()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["kaggle", "class folders"])
def test_no_config_trains_the_from_scratch_recipe_without_pretrained_weights(layout, tmp_path, isolated_home):
    pytest.importorskip("timm")  # without it the line says so instead (the same recipe)
    data = kaggle_set(tmp_path / "shop") / "images.csv" if layout == "kaggle" else make_image_tree(tmp_path / "shop")
    line, saved = trained_without_config(tmp_path, data)
    assert line.startswith("cnnzoo: no --config: training the clothing_recipe recipe's small ResNet from scratch")
    assert "timm/tf_efficientnet_lite0 would be fine-tuned" in line and "downloads are off (CNNZOO_OFFLINE)" in line
    assert f"in {isolated_home / LITE0_FOLDER} (CNNZOO_HOME moves it) to fine-tune it" in line
    assert saved["name"] == "shop" and saved["train"]["epochs"] == 1 and saved["train"]["mixup"] == 0
    assert saved["data"]["augment"]["trivialaugment"] is True
    assert any("residual" in layer for layer in saved["model"]["layers"] if isinstance(layer, dict))


@pytest.mark.slow
@pytest.mark.needs_shared
@pytest.mark.parametrize("layout", ["kaggle", "class folders"])
def test_no_config_fine_tunes_the_transfer_recipe_with_its_weights_in_the_cache(layout, tmp_path, isolated_home):
    pytest.importorskip("timm")
    weights = shared_path("weights/tf_efficientnet_lite0.imagenet.pth")
    folder = isolated_home / LITE0_FOLDER  # where the offline line says to put the file; any state dict name
    folder.mkdir(parents=True)
    (folder / weights.name).symlink_to(weights)
    data = kaggle_set(tmp_path / "shop") / "images.csv" if layout == "kaggle" else make_image_tree(tmp_path / "shop")
    line, saved = trained_without_config(tmp_path, data)
    assert line == (
        f"cnnzoo: no --config: fine-tuning timm/tf_efficientnet_lite0 with the clothing_transfer recipe "
        f"(1 epoch), as its pretrained weights are in the cache ({folder / weights.name})"
    )
    backbone = saved["model"]["layers"][0]["backbone"]
    assert backbone["name"] == "timm/tf_efficientnet_lite0" and backbone["weights"] == "DEFAULT"


@pytest.mark.slow
def test_model_names_a_shipped_config(tmp_path):
    line, saved = trained_without_config(tmp_path, make_image_tree(tmp_path / "shop"), "--model", "clothing")
    assert line.startswith("cnnzoo: --model clothing: the shipped config clothing")
    assert saved["name"] == "clothing" and len(saved["model"]["layers"]) == 19


# --------------------------------------------------------------------------- offline, without CNNZOO_OFFLINE


@pytest.mark.parametrize(
    "args, where",
    [
        (["-c", "clothing_transfer"], "weights/timm/tf_efficientnet_lite0.in1k (CNNZOO_HOME moves it)"),
        (["--model", "timm/tf_efficientnet_lite0"], "weights/timm/tf_efficientnet_lite0.in1k (CNNZOO_HOME moves it)"),
        (["--model", "resnet18"], "torch/hub/checkpoints (TORCH_HOME moves it)"),
    ],
    ids=["config", "timm", "torchvision"],
)
def test_hub_weights_fail_fast_with_one_line_when_there_is_no_network(args, where, tmp_path, monkeypatch):
    """No CNNZOO_OFFLINE, no HF_HUB_OFFLINE: the real (absent) network is asked, once, briefly."""
    if "timm" in str(args) or "clothing_transfer" in args:
        pytest.importorskip("timm")
    no_network_here()
    monkeypatch.delenv("CNNZOO_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    data = kaggle_set(tmp_path / "shop") / "images.csv"
    # one line: no "Retrying in 8s" from huggingface_hub
    line = one_error_line(result := run_cnnzoo(["train", *args, "--data", data, *TINY], cwd=tmp_path))
    assert "cannot be reached" in line and where in line, line
    assert "Retrying" not in result.stderr + result.stdout


def test_the_reachability_check_gives_up_on_a_host_that_never_answers():
    """A connection that hangs (a non-routable address) or a lookup that fails is "not reachable",
    answered by the check itself, which waits at most its seconds (the test's only clock is pytest's)."""
    from cnnzoo.model.weights import reachable

    assert reachable("https://10.255.255.1/model.safetensors", seconds=0.5) is False
    assert reachable("https://no-such-host.invalid/model.safetensors", seconds=0.5) is False


def test_the_reachability_check_says_yes_when_a_server_answers():
    import http.server
    import threading

    from cnnzoo.model.weights import reachable

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:  # any status is an answer (a 404 here): the server is there to download from
        assert reachable(f"http://127.0.0.1:{server.server_port}/no-such-file.safetensors", seconds=5) is True
    finally:
        server.shutdown()
        server.server_close()
