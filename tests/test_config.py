"""Config loading: schema, YAML errors, ``--set`` overrides and value checks (cnnzoo.config)."""

from __future__ import annotations

import dataclasses
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from cnnzoo.config import Config, dump_config, load_config, parse_override
from cnnzoo.errors import ConfigError, UserError

SMALL_MODEL = """\
model:
  input: [3, 16, 16]
  num_classes: 4
  layers:
    - Conv2d: {out_channels: 32, kernel_size: 3}
    - ReLU
    - flatten
    - dense: {out_features: num_classes}
"""


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(source, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(source, overrides)
    return str(info.value)


# --------------------------------------------------------------------------- loading


def test_file_loads_with_defaults_and_source(tmp_path):
    path = write(tmp_path, SMALL_MODEL, "small_net.yaml")
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.model.input == [3, 16, 16]
    assert cfg.model.num_classes == 4
    assert cfg.model.layers[0] == {"Conv2d": {"out_channels": 32, "kernel_size": 3}}
    assert cfg.train.epochs == 10 and cfg.train.optimizer == "adam" and cfg.train.lr == 1e-3
    assert cfg.data.source == "folder" and cfg.seed == 0
    assert cfg.source_path == str(path)
    assert cfg.run_name == "small_net"  # no `name:`: the file's stem


def test_name_wins_over_file_stem(tmp_path):
    cfg = load_config(write(tmp_path, "name: my-run\n" + SMALL_MODEL, "other.yaml"))
    assert cfg.run_name == "my-run"


def test_empty_file_gives_defaults(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.model.layers == [] and cfg.train.epochs == 10


def test_config_error_is_a_user_error():
    assert issubclass(ConfigError, UserError)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    msg = error_of(path)
    assert str(path) in msg and "config file not found" in msg


def test_directory_is_not_a_config_file(tmp_path):
    assert "config file not found" in error_of(tmp_path)


def test_top_level_must_be_a_mapping(tmp_path):
    msg = error_of(write(tmp_path, "- model\n- train\n"))
    assert "run.yaml" in msg
    assert "expected a mapping with model/data/train sections, got list" in msg


def test_binary_file_is_refused(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_bytes(b"\x80\x81\xfe\xff\x00binary")
    msg = error_of(path)
    assert str(path) in msg and "not a text file" in msg


# --------------------------------------------------------------------------- YAML syntax


@pytest.mark.parametrize(
    "text, line, col, problem",
    [
        ("name: x\ntrain:\n  epochs: 5\n   lr: 0.1\n", 4, 6, "mapping values are not allowed here"),
        ("name: x\ntrain:\n\tepochs: 3\n", 3, 1, "cannot start any token"),
        ("name: x\nmodel:\n  input: [3, 32, 32\ntrain:\n  epochs: 3\n", 4, 6, "expected ',' or ']'"),
    ],
)
def test_yaml_syntax_error_names_file_line_and_column(tmp_path, text, line, col, problem):
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    msg = error_of(path)
    assert msg.startswith(f"{path}:{line}:{col}: YAML syntax error: ")
    assert problem in msg
    assert "\n" not in msg  # one line for the CLI


# --------------------------------------------------------------------------- unknown keys


def test_unknown_key_suggests_the_close_one_and_names_the_file(tmp_path):
    path = write(tmp_path, SMALL_MODEL + "train:\n  epochz: 5\n", "typo.yaml")
    msg = error_of(path)
    assert "typo.yaml" in msg
    assert "train.epochz: unknown key" in msg
    assert "did you mean train.epochs?" in msg


@pytest.mark.parametrize(
    "raw, dotted, suggestion",
    [
        ({"data": {"augment": {"hfilp": 0.5}}}, "data.augment.hfilp", "did you mean data.augment.hflip?"),
        ({"modle": {}}, "modle", "did you mean model?"),
        ({"train": {"learning_rat": 0.1, "lr": 0.1}}, "train.learning_rat", None),
        ({"model": {"num_class": 3}}, "model.num_class", "did you mean model.num_classes?"),
    ],
)
def test_unknown_key_variants(raw, dotted, suggestion):
    msg = error_of(raw)
    assert msg.startswith(f"{dotted}: unknown key")  # no file: no file prefix
    if suggestion:
        assert suggestion in msg


def test_unknown_key_without_close_match_lists_known_keys():
    msg = error_of({"train": {"zzzzzz": 1}})
    assert "train.zzzzzz: unknown key; known keys of train: epochs, batch_size" in msg
    top = error_of({"qqqq": 1})
    assert "qqqq: unknown key; known keys: model, data, train, name, seed" in top


def test_internal_field_is_not_a_config_key():
    msg = error_of({"source_path": "x.yaml"})
    assert "source_path: unknown key" in msg
    assert "source_path" not in msg.split("known keys")[-1]


@pytest.mark.parametrize(
    "raw, dotted, hint",
    [
        ({"train": {"seed": 3}}, "train.seed", "seed is a top-level key: write `seed: N`"),
        ({"data": {"num_classes": 3}}, "data.num_classes", "write model.num_classes"),
        ({"train": {"sampler": "balanced"}}, "train.sampler", "data.sampler"),
        ({"train": {"augment": {"hflip": 0.5}}}, "train.augment", "data.augment"),
    ],
)
def test_moved_key_hint(tmp_path, raw, dotted, hint):
    path = write(tmp_path, yaml.safe_dump(raw), "moved.yaml")
    msg = error_of(path)
    assert msg.startswith(f"{path}: {dotted}: unknown key; ")
    assert hint in msg


def test_seed_at_top_level_is_accepted():
    assert load_config({"seed": 3}).seed == 3


# --------------------------------------------------------------------------- types


def test_wrong_type_names_key_value_and_expected_type(tmp_path):
    path = write(tmp_path, "train:\n  epochs: ten\n", "types.yaml")
    msg = error_of(path)
    assert msg == f"{path}: train.epochs: got 'ten' (string), expected int"


@pytest.mark.parametrize(
    "raw, expected_in_msg",
    [
        ({"train": {"epochs": True}}, "train.epochs: got True (boolean), expected int"),
        ({"train": {"epochs": 2.5}}, "train.epochs: got 2.5 (number), expected int"),
        ({"train": {"lr": "fast"}}, "train.lr: got 'fast' (string), expected float"),
        ({"train": {"lr": [0.1]}}, "train.lr: got [0.1] (list), expected float"),
        (
            {"train": {"optimizer": "sgdd"}},
            "train.optimizer: got 'sgdd' (string), expected sgd | adam | adamw | rmsprop",
        ),
        ({"train": {"nesterov": "yes please"}}, "train.nesterov: got 'yes please' (string), expected bool"),
        ({"train": {"grad_clip": "none"}}, "train.grad_clip: got 'none' (string), expected float or null"),
        ({"model": {"input": "3x32x32"}}, "model.input: got '3x32x32' (string), expected a list of int or null"),
        ({"model": {"input": [3, 32.5, 32]}}, "model.input: got [3, 32.5, 32] (list), expected a list of int or null"),
        ({"model": {"num_classes": "ten"}}, "model.num_classes: got 'ten' (string), expected int or null"),
        ({"name": 5}, "name: got 5 (integer), expected str or null"),
        ({"seed": "3"}, "seed: got '3' (string), expected int"),
        ({"train": 5}, "train: got 5 (integer), expected a mapping"),
        ({"data": {"augment": "heavy"}}, "data.augment: got 'heavy' (string), expected a mapping"),
        ({"data": {"source": "imagenet"}}, "data.source: got 'imagenet' (string), expected folder | shapes"),
        ({"data": {"workers": "many"}}, "data.workers: got 'many' (string), expected auto or int"),
        ({"data": {"normalize": {"mean": ["a"], "std": [1.0]}}}, "data.normalize: got {"),
    ],
)
def test_wrong_types(raw, expected_in_msg):
    assert expected_in_msg in error_of(raw)


def test_gentle_conversions():
    cfg = load_config(
        {
            "train": {"lr": 1, "grad_clip": 1, "channels_last": False, "amp": False},
            "data": {
                "sampler": False,
                "augment": {"hflip": True, "vflip": 0.25, "translate": [0.1, 0.2]},
                "workers": 0,
                "image_size": [64, 48],
                "normalize": "imagenet",
            },
        }
    )
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.grad_clip == 1.0 and isinstance(cfg.train.grad_clip, float)
    assert cfg.train.channels_last is False  # the bool branch, not the Literal
    assert cfg.train.amp == "none"  # YAML `no`/`false` in a field that knows "none"
    assert cfg.data.sampler == "none"
    assert cfg.data.augment.hflip is True and cfg.data.augment.vflip == 0.25
    assert cfg.data.augment.translate == [0.1, 0.2]
    assert cfg.data.workers == 0 and cfg.data.image_size == [64, 48]


def test_lr_written_1e_minus_3_is_a_float(tmp_path):
    # PyYAML follows YAML 1.1: `1e-3` (no dot) is a string, not a number ...
    assert yaml.safe_load("lr: 1e-3")["lr"] == "1e-3"
    # ... and the config turns it into the float it means.
    cfg = load_config(write(tmp_path, "train:\n  lr: 1e-3\n  weight_decay: 5e-4\n"))
    assert cfg.train.lr == pytest.approx(0.001) and isinstance(cfg.train.lr, float)
    assert cfg.train.weight_decay == pytest.approx(5e-4)
    assert load_config({}, ["train.lr=3e-4"]).train.lr == pytest.approx(3e-4)


# --------------------------------------------------------------------------- --set overrides


@pytest.mark.parametrize(
    "override, getter, expected",
    [
        ("train.epochs=5", lambda c: c.train.epochs, 5),
        ("train.lr=0.01", lambda c: c.train.lr, 0.01),
        ("train.batch_size= 64", lambda c: c.train.batch_size, 64),
        ("train.optimizer=sgd", lambda c: c.train.optimizer, "sgd"),
        ("train.nesterov=true", lambda c: c.train.nesterov, True),
        ("train.grad_clip=null", lambda c: c.train.grad_clip, None),
        ("train.patience=3", lambda c: c.train.patience, 3),
        ("model.input=[1, 28, 28]", lambda c: c.model.input, [1, 28, 28]),
        ("model.input.0=1", lambda c: c.model.input, [1, 16, 16]),
        ("model.input.-1=20", lambda c: c.model.input, [3, 16, 20]),
        ("data.image_size=[32, 40]", lambda c: c.data.image_size, [32, 40]),
        ("data.augment.hflip=0.5", lambda c: c.data.augment.hflip, 0.5),
        ("data.normalize={mean: [0.5], std: [0.25]}", lambda c: c.data.normalize, {"mean": [0.5], "std": [0.25]}),
        ("seed=7", lambda c: c.seed, 7),
        ("name=exp1", lambda c: c.run_name, "exp1"),
    ],
)
def test_override_values(tmp_path, override, getter, expected):
    path = write(tmp_path, SMALL_MODEL)
    value = getter(load_config(path, [override]))
    assert value == expected
    assert type(value) is type(expected)


def test_override_types_are_read_as_yaml():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a.b=3.5") == ("a.b", 3.5)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a.b=x=y") == ("a.b", "x=y")  # only the first '=' splits
    assert parse_override(" a.b =") == ("a.b", None)


def test_later_override_wins_and_overrides_beat_the_file(tmp_path):
    path = write(tmp_path, SMALL_MODEL + "train:\n  epochs: 3\n")
    assert load_config(path).train.epochs == 3
    assert load_config(path, ["train.epochs=4", "train.epochs=6"]).train.epochs == 6


def test_override_does_not_touch_the_callers_mapping():
    raw = {"train": {"epochs": 3}, "model": {"layers": ["ReLU"]}}
    load_config(raw, ["train.epochs=9", "model.layers.0.ReLU.inplace=true"])
    assert raw == {"train": {"epochs": 3}, "model": {"layers": ["ReLU"]}}


def test_nested_layer_override_changes_the_built_model(tmp_path):
    torch = pytest.importorskip("torch")
    from cnnzoo.model.layers import build_model

    path = write(tmp_path, SMALL_MODEL)
    before = load_config(path)
    after = load_config(path, ["model.layers.0.Conv2d.out_channels=64"])
    assert after.model.layers[0] == {"Conv2d": {"out_channels": 64, "kernel_size": 3}}
    m_before = build_model(before.model.layers, before.model.input, before.model.num_classes)
    m_after = build_model(after.model.layers, after.model.input, after.model.num_classes)
    assert m_before[0].out_channels == 32
    assert m_after[0].out_channels == 64
    assert m_after[3].in_features == 64 * 14 * 14  # the change carries through to the dense layer
    assert m_after(torch.zeros(2, 3, 16, 16)).shape == (2, 4)


def test_override_gives_a_bare_layer_name_arguments():
    raw = {"model": {"layers": ["Flatten", "ReLU"]}}
    cfg = load_config(raw, ["model.layers.1.ReLU.inplace=true"])
    assert cfg.model.layers == ["Flatten", {"ReLU": {"inplace": True}}]


def test_override_creates_missing_sections():
    cfg = load_config({}, ["data.augment.zoom=0.2", "train.epochs=2"])
    assert cfg.data.augment.zoom == 0.2 and cfg.train.epochs == 2


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.epochs", "--set train.epochs: expected dotted.key=value, e.g. --set train.epochs=5"),
        ("=5", "--set =5: the key before '=' is empty"),
        ("train.epochs=[1, 2", "--set train.epochs=[1, 2: the value is not valid YAML"),
        ("model.layers.5.ReLU.inplace=true", "--set model.layers.5.ReLU.inplace: model.layers has 4 items, no index 5"),
        ("model.layers.-5=ReLU", "--set model.layers.-5: model.layers has 4 items, no index -5"),
        ("model.layers.first=ReLU", "--set model.layers.first: model.layers is a list; use an index, e.g. .0"),
        ("train.epochs.max=3", "--set train.epochs.max: train.epochs is a single value (3), it has no key 'max'"),
        ("model.input.0.x=1", "--set model.input.0.x: model.input.0 is a single value (3), it has no key 'x'"),
        (
            "model.layers.1.inplace=true",
            "--set model.layers.1.inplace: model.layers.1 is a single value ('ReLU'), it has no key 'inplace'",
        ),
    ],
)
def test_override_errors(tmp_path, override, expected):
    path = write(tmp_path, SMALL_MODEL + "train:\n  epochs: 3\n")
    msg = error_of(path, [override])
    assert msg.startswith(expected), msg


def test_override_through_a_missing_scalar_is_a_type_error():
    # train.epochs is not in the mapping, so the override makes it a section, which the
    # schema then refuses with the key's expected type.
    assert "train.epochs: got {'max': 3} (mapping), expected int" in error_of({}, ["train.epochs.max=3"])


def test_override_values_are_validated_like_the_file(tmp_path):
    path = write(tmp_path, SMALL_MODEL, "ov.yaml")
    assert f"{path}: train.epochs: got 'many' (string), expected int" == error_of(path, ["train.epochs=many"])
    assert "did you mean train.epochs?" in error_of(path, ["train.epochz=3"])
    assert f"{path}: train.epochs: got 0, expected a positive integer" == error_of(path, ["train.epochs=0"])


# --------------------------------------------------------------------------- value checks


@pytest.mark.parametrize(
    "raw, expected",
    [
        (
            {"model": {"input": [3, 32]}},
            "model.input: got [3, 32], expected [channels, height, width] of positive integers",
        ),
        ({"model": {"input": [3, 32, 32, 1]}}, "model.input: got [3, 32, 32, 1], expected [channels, height, width]"),
        ({"model": {"input": [3, 0, 32]}}, "model.input: got [3, 0, 32], expected"),
        ({"model": {"input": []}}, "model.input: got [], expected"),
        ({"model": {"num_classes": 0}}, "model.num_classes: got 0, expected a positive integer"),
        ({"data": {"channels": 5}}, "data.channels: got 5, expected 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA)"),
        ({"model": {"input": [6, 32, 32]}}, "model.input: got 6 channels, expected 1 (grey), 2 (grey + alpha)"),
        ({"data": {"resize": "pad"}}, "data.resize: got 'pad'"),
        ({"data": {"image_size": [32]}}, "data.image_size: got [32], expected an integer or [height, width]"),
        ({"data": {"image_size": [32, 0]}}, "data.image_size: got [32, 0], expected"),
        ({"data": {"image_size": 0}}, "data.image_size: got 0, expected a positive integer"),
        ({"data": {"val_fraction": 0}}, "data.val_fraction: got 0.0, expected a number between 0 and 1"),
        ({"data": {"val_fraction": 1}}, "data.val_fraction: got 1.0, expected a number between 0 and 1"),
        ({"data": {"normalize": {"mean": [0.5]}}}, "data.normalize: a mapping needs exactly the keys mean and std"),
        (
            {"data": {"normalize": {"mean": [0.5], "std": [0.5], "max": [1.0]}}},
            "data.normalize: a mapping needs exactly the keys mean and std",
        ),
        (
            {"data": {"normalize": {"mean": [0.5, 0.5], "std": [0.2, 0.0]}}},
            "data.normalize.std: every std must be positive",
        ),
        ({"data": {"workers": -1}}, "data.workers: got -1, expected auto or a number >= 0"),
        ({"train": {"epochs": 0}}, "train.epochs: got 0, expected a positive integer"),
        ({"train": {"batch_size": -2}}, "train.batch_size: got -2, expected a positive integer"),
        ({"train": {"step_size": 0}}, "train.step_size: got 0, expected a positive integer"),
        ({"train": {"lr": 0}}, "train.lr: got 0.0, expected a positive number"),
        ({"train": {"lr": -0.1}}, "train.lr: got -0.1, expected a positive number"),
        ({"train": {"label_smoothing": 1.0}}, "train.label_smoothing: got 1.0, expected a number in [0, 1)"),
        ({"train": {"label_smoothing": -0.1}}, "train.label_smoothing: got -0.1"),
        ({"train": {"patience": 0}}, "train.patience: got 0, expected a positive integer or null (off)"),
    ],
)
def test_value_checks(raw, expected):
    msg = error_of(raw)
    assert msg.startswith(expected), msg


def test_value_check_names_the_file(tmp_path):
    path = write(tmp_path, "data:\n  channels: 5\n", "chan.yaml")
    assert error_of(path) == f"{path}: data.channels: got 5, expected 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA)"


@pytest.mark.parametrize(
    "raw",
    [
        {"model": {"input": [1, 1, 1], "num_classes": 1}},
        {"data": {"channels": 1, "image_size": 28, "val_fraction": 0.5, "workers": 0}},
        {"data": {"normalize": {"mean": [0.5], "std": [0.5]}}},
        {"train": {"label_smoothing": 0.0, "patience": 1, "lr": 1e-9}},
    ],
)
def test_boundary_values_are_accepted(raw):
    load_config(raw)


# --------------------------------------------------------------------------- round trips


def test_config_object_reloads_with_overrides(tmp_path):
    path = write(tmp_path, SMALL_MODEL)
    cfg = load_config(path)
    again = load_config(cfg, ["train.epochs=2"])
    assert again.train.epochs == 2 and cfg.train.epochs == 10
    assert again.source_path == str(path)
    assert again.model == cfg.model


def test_dump_config_round_trips(tmp_path):
    path = write(
        tmp_path,
        SMALL_MODEL + "train:\n  lr: 1e-3\n  scheduler: one-cycle\n"
        "data:\n  augment: {hflip: true, color_jitter: {brightness: 0.2}}\n",
    )
    cfg = load_config(path)
    text = dump_config(cfg)
    assert "source_path" not in text
    again = load_config(yaml.safe_load(text))
    assert again.to_dict() == cfg.to_dict()


# --------------------------------------------------------------------------- empty and non-finite values


def test_empty_section_means_defaults(tmp_path):
    path = write(tmp_path, "train:\n  # epochs: 3\ndata:\n")
    cfg = load_config(path)
    assert cfg.train.epochs == 10 and cfg.data.source == "folder"


@pytest.mark.parametrize("value", ["nan", ".inf"])
def test_non_finite_lr_is_refused(value):
    msg = error_of({}, [f"train.lr={value}"])
    assert re.match(r"train\.lr: got (nan|inf), expected a positive number", msg)


# --------------------------------------------------------------------------- paths in a config


def test_tilde_in_data_root_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    written = write(tmp_path, "data: {root: ~/photos, cache_dir: ~/cache}\n")
    cfg = load_config(written)
    assert cfg.data.root == str(tmp_path / "photos") and cfg.data.cache_dir == str(tmp_path / "cache")
    assert load_config({}, ["data.root=~/photos"]).data.root == str(tmp_path / "photos")  # --set, --data=~/...
    assert load_config({"data": {"root": "~/x"}}).data.root == str(tmp_path / "x")  # the Python API's mappings


def test_relative_paths_in_a_config_file_are_read_from_its_folder(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "images").mkdir()
    (project / "weights.pth").write_bytes(b"")
    config = write(
        project / "configs",
        """\
        data: {root: ../images}
        model:
          layers:
            - backbone: {name: resnet18, weights: ../weights.pth}
            - gap
        """,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(config)
    assert cfg.data.root == str(project / "images")
    assert cfg.model.layers[0]["backbone"]["weights"] == str(project / "weights.pth")
    assert cfg.model.layers[0]["backbone"]["name"] == "resnet18"  # names are not paths
    # what the command line gives is read from the working directory, as a shell user expects
    assert load_config(config, ["data.root=mine"]).data.root == "mine"


def test_a_path_found_only_from_the_working_directory_still_works(tmp_path, monkeypatch):
    # configs written when relative paths were read from the working directory keep working there
    (tmp_path / "configs").mkdir()
    (tmp_path / "data").mkdir()
    config = write(tmp_path / "configs", "data: {root: data}\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(config).data.root == "data"
    (tmp_path / "configs" / "data").mkdir()  # the file's own folder has it: that one wins
    assert load_config(config).data.root == str(tmp_path / "configs" / "data")


@pytest.mark.needs_shared
def test_shipped_transfer_config_finds_its_weights_in_the_cache_from_any_folder(tmp_path, monkeypatch, isolated_home):
    pytest.importorskip("timm")
    from cnnzoo.model.weights import timm_weights

    from support.shared import PROJECT_ROOT, shared_path

    weights = shared_path("weights/tf_efficientnet_lite0.imagenet.pth")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(PROJECT_ROOT / "configs" / "clothing_transfer.yaml", ["data.root=photos"])
    backbone = cfg.model.layers[0]["backbone"]
    assert backbone["weights"] == "DEFAULT" and cfg.data.root == "photos"  # --data's path, from here
    source = timm_weights(backbone["name"].removeprefix("timm/"))
    assert source.folder == isolated_home / "weights" / "timm" / "tf_efficientnet_lite0.in1k"
    source.folder.mkdir(parents=True)
    (source.folder / weights.name).symlink_to(weights)  # the file a user has, under its own name
    assert source.local_file() == source.folder / weights.name


# ---------------------------------------------------------------------- ranges next to their fields (issue 23, item 7)

# Each passed validation and `summary`, then crashed `train` with an internal error.
CRASHED_TRAINING = [
    ("seed=-1", "seed: got -1, expected an integer from 0 to 18446744073709551615"),
    ("seed=18446744073709551616", "seed: got 18446744073709551616, expected an integer from 0"),
    ("data.augment.hflip=1.5", "data.augment.hflip: got 1.5, expected a probability in [0, 1] or true"),
    ("data.augment.vflip=-0.5", "data.augment.vflip: got -0.5, expected a probability"),
    ("data.augment.translate=[0.1, 0.1, 0.1]", "data.augment.translate: got [0.1, 0.1, 0.1], expected a fraction"),
    ("data.augment.translate=-0.1", "data.augment.translate: got -0.1, expected a fraction in [0, 1]"),
    ("data.augment.translate=[0.1, -0.1]", "data.augment.translate: got [0.1, -0.1]"),
    ("data.augment.rotation=-5", "data.augment.rotation: got -5.0, expected a number in [0, 180]"),
    ("data.augment.rotation=1e300", "data.augment.rotation: got 1e+300"),
    (
        "data.augment.color_jitter.brightness=-1",
        "data.augment.color_jitter.brightness: got -1.0, expected a number in [0, 10]",
    ),
    ("data.augment.color_jitter.saturation=1e300", "data.augment.color_jitter.saturation: got 1e+300"),
    ("data.augment.color_jitter.hue=0.9", "data.augment.color_jitter.hue: got 0.9, expected a number in [0, 0.5]"),
    ("data.augment.shear=1e300", "data.augment.shear: got 1e+300, expected a number in [0, 90)"),
    ("data.augment.shear=-1", "data.augment.shear: got -1.0"),
    ("train.ddp_timeout=1e300", "train.ddp_timeout: got 1e+300, expected a number of seconds from 1 to 604800"),
    ("train.lr=1e300", "train.lr: got 1e+300, expected a positive number up to 1e+06"),
    ("train.weight_decay=1e300", "train.weight_decay: got 1e+300, expected a number in [0, 1e+06]"),
    ("train.gamma=2", "train.gamma: got 2.0, expected a number in [0, 1)"),
    ("train.backbone_lr=1e300x", "train.backbone_lr: got '1e300x', expected a learning rate"),
]


@pytest.mark.parametrize("override, expected", CRASHED_TRAINING)
def test_values_that_crashed_training_are_refused_by_summary(tmp_path, override, expected):
    from typer.testing import CliRunner

    from cnnzoo.cli import app

    path = write(tmp_path, SMALL_MODEL)
    assert error_of(path, [override]).startswith(f"{path}: {expected}")
    done = CliRunner().invoke(app, ["summary", "-c", str(path), "--set", override])
    assert done.exit_code == 2 and done.stderr.strip().splitlines() == [f"cnnzoo: error: {error_of(path, [override])}"]


def bounded_fields(cls=Config, prefix=""):
    """(dotted key, Bounds, integer?) of every field that carries a range, however deep."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from bounded_fields(hints[f.name], f"{prefix}{f.name}.")
        elif "bounds" in f.metadata:
            yield f"{prefix}{f.name}", f.metadata["bounds"], "float" not in str(hints[f.name])


def edges(bounds, integer: bool) -> tuple[list, list]:
    """Numbers at the very edges of a range (inside, outside), as the field takes them."""
    step = 1 if integer else 1e-9
    inside, outside = [], [float("nan")] if not integer else []
    if bounds.low is not None:
        inside.append(bounds.low + step if bounds.open_low else bounds.low)
        outside.append(bounds.low if bounds.open_low else bounds.low - step)
    if bounds.high is not None:
        inside.append(bounds.high - step if bounds.open_high else bounds.high)
        outside.append(bounds.high if bounds.open_high else bounds.high + step)
    if bounds.length:
        inside = [[v] * bounds.length for v in inside]
        outside = [[v] * bounds.length for v in outside] + [[inside[0][0]] * (bounds.length + 1)]
    return inside, outside


@pytest.mark.parametrize("key, bounds, integer", list(bounded_fields()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_range_admits_its_edges_and_refuses_past_them(key, bounds, integer):
    inside, outside = edges(bounds, integer)
    assert inside and outside
    for value in inside:
        load_config({}, [f"{key}={value}"])
    for value in outside:
        assert error_of({}, [f"{key}={'.nan' if value != value else value}"]).startswith(f"{key}: got ")


def test_the_ranges_page_lists_every_ranged_key():
    page = (Path(__file__).resolve().parents[1] / "docs" / "config-ranges.md").read_text()
    missing = [key for key, _, _ in bounded_fields() if key.rsplit(".", 1)[-1] not in page]
    assert not missing, f"docs/config-ranges.md does not list {missing}"


def test_every_config_key_is_documented_and_loads_with_its_default():
    # the docs site's Config keys page is generated from these (docs/hooks.py): a key without its
    # attribute docstring would be a row that says nothing
    from cnnzoo.config.reference import config_keys

    keys = config_keys()
    assert {"seed", "data.augment.color_jitter.hue", "train.ddp_timeout"} <= {k.key for k in keys}
    undocumented = [k.key for k in keys if not k.doc]
    assert not undocumented, f"config keys without documentation in cnnzoo/config/schema.py: {undocumented}"
    for entry in keys:
        if not entry.section and entry.default not in ("", "null"):
            load_config({}, [f"{entry.key}={entry.default}"])  # the default as the reference writes it


def test_the_reference_reads_attribute_docstrings_and_misses_a_field_without_one():
    from cnnzoo.config.reference import attribute_docs, config_keys, markdown_table

    @dataclasses.dataclass
    class Section:
        documented: int = 1
        """Says what it does:
        on two lines."""
        bare: str | None = None  # a comment is not documentation

    assert attribute_docs(Section) == {"documented": "Says what it does:\non two lines."}
    rows = {k.key: k for k in config_keys(Section, "s.")}
    assert rows["s.bare"].doc == "" and rows["s.bare"].type == "str or null" and rows["s.bare"].default == "null"
    table = markdown_table(config_keys(Section, "s."))
    assert "| `s.documented` | int | `1` | Says what it does: on two lines. |" in table
