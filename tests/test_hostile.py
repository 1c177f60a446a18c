"""Hostile and careless input (issue #9): each reproduction from the issue, and a seeded fuzz test.

Every bad input must end as a :class:`cnnzoo.errors.UserError` (the CLI's one line and
exit code 2), never another exception, a hang or a huge allocation. The fuzz test runs
``CNNZOO_FUZZ_CASES`` cases (300 by default; the closing note reports a longer run).
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import cnnzoo
from cnnzoo.checkpoint import FORMAT, VERSION, load_checkpoint
from cnnzoo.cli import app
from cnnzoo.config import load_config
from cnnzoo.config.reference import config_keys
from cnnzoo.data.cache import decode_all
from cnnzoo.errors import UserError
from cnnzoo.inference.inputs import expand_inputs
from cnnzoo.model.layers import trace_layers
from cnnzoo.runs import resolve_checkpoint
from cnnzoo.training.inputs import load_data, resolve_input
from cnnzoo.training.run import train

from servelib import png_claiming
from support.cli import one_error_line
from support.disk import private_tmpfs_works
from support.images import make_image_tree, write_class_folders
from support.runs import tiny_config


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    root = make_image_tree(folder / "images", train={"a": 6, "b": 6}, validation={"a": 2, "b": 2})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNZOO_HOME", str(folder / "home"))
        run = train(tiny_config(root, epochs=1), out=folder / "runs", quiet=True)
    return run


# ============================================================================ paths and names


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "a/b", "..", ".hidden"])
def test_a_run_name_cannot_leave_the_output_folder(image_root, tmp_path, name):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(image_root)))
    out = tmp_path / "out" / "runs"
    line = one_error_line(cli("train", "-c", str(config), "--set", f"name={name}", "--out", str(out)))
    assert "name: got" in line and "no slashes" in line
    assert not (tmp_path / "out").exists() and not Path("/abs/path").exists()


def test_out_that_is_a_file_is_one_line(image_root, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(image_root)))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_error_line(cli("train", "-c", str(config), "--out", str(blocker)))
    assert f"--runs {blocker}: cannot make a run folder" in line


def test_evaluate_out_that_cannot_be_written_is_one_line(trained, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_error_line(cli("evaluate", str(trained / "best.pt"), "--out", str(blocker / "sub")))
    assert f"--out {blocker / 'sub'}: cannot write the report there" in line


@pytest.mark.slow
def test_unwritable_cache_dir_falls_back_to_ram(image_root, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    config = tiny_config(image_root, epochs=1)
    config["data"].update(cache="disk", cache_dir=str(blocker / "cache"))
    run = train(config, out=tmp_path / "runs")
    assert f"data.cache: cannot write {blocker / 'cache'}" in capsys.readouterr().err
    assert (run / "best.pt").is_file()


def test_stale_temporary_files_are_cleaned_on_resume(trained, tmp_path):
    import shutil

    run = tmp_path / "copy" / "tiny" / "1"
    shutil.copytree(trained, run)
    for stale in (".last.pt.k1ll3d_x.tmp", "metrics.tmp"):
        (run / stale).write_bytes(b"half written")
    train(resume=run / "last.pt", overrides=["train.epochs=2"], quiet=True)
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))


# ============================================================================ a full disk (issue 23, items 9 and 10)

# Run inside a private mount namespace (unshare -rm) on a 4 MB tmpfs: a real full disk, without
# root on the machine. Run 1 finishes; run 2 trains until the disk is filled under it; run 3 starts
# on the full disk; then the disk is freed and run 2 resumes. The logs live outside the tmpfs.
FULL_DISK_SCRIPT = r"""
set -u
D=$1; CFG=$2; LOG=$3; shift 3
mount -t tmpfs -o size=4m tmpfs "$D" || exit 97
"$@" -m cnnzoo train -c "$CFG" --runs "$D/runs" -q --epochs 2 >/dev/null 2>"$LOG/first.err"; echo "first=$?"
"$@" -m cnnzoo train -c "$CFG" --runs "$D/runs" -q --epochs 500 >/dev/null 2>"$LOG/second.err" &
pid=$!
while ! { [ -f "$D/runs/tiny/2/metrics.csv" ] && [ "$(wc -l < "$D/runs/tiny/2/metrics.csv")" -ge 3 ]; }; do
  kill -0 $pid 2>/dev/null || break; sleep 0.1
done
dd if=/dev/zero of="$D/filler" bs=4k 2>/dev/null
wait $pid; echo "second=$?"
"$@" -m cnnzoo train -c "$CFG" --runs "$D/runs" -q --epochs 2 >/dev/null 2>"$LOG/third.err"; echo "third=$?"
echo "latest=$(readlink "$D/runs/latest")"
echo "files=$(ls -A "$D/runs/tiny/2" | tr '\n' ' ')"
"$@" -c "
import torch
for n in ('best', 'last'):
    print(n + '=' + str(torch.load('$D/runs/tiny/2/' + n + '.pt', weights_only=True)['epoch']))
"
rm -f "$D/filler"
held=$("$@" -c "import torch; print(torch.load('$D/runs/tiny/2/last.pt', weights_only=True)['epoch'])")
"$@" -m cnnzoo train --resume "$D/runs/tiny/2/last.pt" --set train.epochs=$((held + 1)) -q >/dev/null \
  2>"$LOG/resume.err"; echo "resume=$?"
"$@" -c "import torch; print('resumed=' + str(torch.load('$D/runs/tiny/2/last.pt', weights_only=True)['epoch']))"
"""


def test_a_full_disk_is_one_line_keeps_the_checkpoints_and_latest(image_root, tmp_path, isolated_home):
    import subprocess
    import sys

    mount = tmp_path / "disk"
    if not private_tmpfs_works(mount):
        pytest.skip("no private tmpfs here (unshare -rm and mount are not allowed)")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(image_root)))
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "CNNZOO_HOME": str(isolated_home), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [
            "unshare",
            "-rm",
            "bash",
            "-c",
            FULL_DISK_SCRIPT,
            "full-disk",
            str(mount),
            str(config),
            str(logs),
            sys.executable,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    facts = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert facts.get("first") == "0", (done.stdout, done.stderr)
    run = mount / "runs" / "tiny" / "2"

    def errors(name: str) -> list[str]:  # warnings (a small validation split) may come before the one error line
        return [line for line in (logs / name).read_text().splitlines() if not line.startswith("warning: ")]

    second = (logs / "second.err").read_text()
    assert facts["second"] == "2" and errors("second.err") == [
        f"cnnzoo: error: disk full at {run}; last.pt holds epoch {facts['last']}; free some space, then resume "
        f"with: cnnzoo train --resume {run / 'last.pt'}"
    ], second
    assert facts["files"].split() == [
        "best.pt",
        "config.yaml",
        "history.png",
        "last.pt",
        "metrics.csv",
    ]  # no temporaries
    # both whole (torch.load read them); best.pt is written before last.pt, so when the disk fills
    # between the two, best.pt holds the epoch after last.pt's, which the resume below redoes
    assert 1 <= int(facts["best"]) <= int(facts["last"]) + 1
    third = (logs / "third.err").read_text()
    assert facts["third"] == "2" and errors("third.err") == [
        f"cnnzoo: error: disk full at {mount / 'runs' / 'tiny' / '3'}; nothing was saved; free some space or "
        f"choose another folder with --runs"
    ], third
    assert facts["latest"] == "tiny/2"  # the run that failed before a best.pt did not take runs/latest
    assert facts["resume"] == "0" and int(facts["resumed"]) == int(facts["last"]) + 1, (logs / "resume.err").read_text()


@pytest.mark.slow
def test_a_run_stopped_before_its_first_best_pt_leaves_latest_alone(image_root, tmp_path, monkeypatch):
    from cnnzoo.training import callbacks as loggers
    from cnnzoo.training.run import TrainingInterrupted

    first = train(tiny_config(image_root, epochs=1), out=tmp_path / "runs", quiet=True)
    assert (tmp_path / "runs" / "latest").resolve() == first.resolve()

    def epoch_end(self, end):  # Ctrl-C pressed as epoch 1's checkpoints are about to be written
        raise KeyboardInterrupt

    monkeypatch.setattr(loggers.Checkpoints, "epoch_end", epoch_end)
    with pytest.raises(TrainingInterrupted) as info:
        train(tiny_config(image_root, epochs=3), out=tmp_path / "runs", quiet=True)
    assert (info.value.run_dir / "last.pt").is_file() and not (info.value.run_dir / "best.pt").exists()
    assert (tmp_path / "runs" / "latest").resolve() == first.resolve()
    assert resolve_checkpoint(None, tmp_path / "runs") == first.resolve() / "best.pt"
    monkeypatch.undo()
    resumed = train(resume=info.value.run_dir / "last.pt", quiet=True)  # resumed, it earns latest
    assert (tmp_path / "runs" / "latest").resolve() == resumed.resolve()


# ============================================================================ data folders


def test_fifo_in_a_data_folder_is_skipped_and_named(image_root, tmp_path, capsys):
    fifo = image_root / "train" / "a" / "x.jpg"
    os.mkfifo(fifo)
    spec = load_data(load_config(tiny_config(image_root)))
    assert len(spec.train) == 24
    assert f"skipped {fifo}: not a regular file" in capsys.readouterr().err
    paths, missing = expand_inputs([str(fifo), str(image_root / "train" / "a")])
    assert str(fifo) not in paths and (str(fifo), "not a regular file") in missing
    assert len(paths) == 12


def test_a_link_loop_does_not_multiply_the_data_or_cross_splits(image_root, capsys):
    os.symlink("..", image_root / "train" / "a" / "loop")
    os.symlink(image_root / "train" / "b" / "b_000.png", image_root / "validation" / "b" / "dup.png")
    spec = load_data(load_config(tiny_config(image_root)))
    err = capsys.readouterr().err
    assert (len(spec.train), len(spec.val)) == (24, 8)
    assert "a link to a folder that was already read" in err and "the same file was already read" in err
    assert not set(map(os.path.realpath, spec.train.paths)) & set(map(os.path.realpath, spec.val.paths))


def test_predict_names_every_file_it_cannot_read(image_root):
    folder = image_root / "validation" / "a"
    os.symlink(folder / "nowhere.png", folder / "dangling.png")
    paths, missing = expand_inputs([str(folder)])
    assert len(paths) == 4 and (str(folder / "dangling.png"), "broken link") in missing


def test_one_class_folder_is_refused(tmp_path):
    root = write_class_folders(tmp_path / "one", {"only": 10})
    with pytest.raises(UserError, match="only one class folder .*at least two classes"):
        load_data(load_config(tiny_config(root)))


def test_an_automatic_split_is_announced(tmp_path, capsys):
    root = write_class_folders(tmp_path / "flat", {"a": 10, "b": 10})
    load_data(load_config(tiny_config(root)))
    assert "held out 0.2 of each class for validation (4 of 20 images" in capsys.readouterr().out


# ============================================================================ layers and configs


STRANGE = [float("nan"), float("inf"), "", "abc", None, [], [[1]], {"a": 1}, 0, -1, True]


@pytest.mark.parametrize(
    "key, value",
    [
        (k, v)
        for k in ("kernel_size", "stride", "padding", "dilation")
        for v in STRANGE
        if not (k == "padding" and v == 0)
    ],
)  # padding 0 is fine
def test_strange_conv_arguments_are_shape_errors(key, value):
    args = {"out_channels": 4, "kernel_size": 3, key: value}
    with pytest.raises(UserError, match=r"layer 0 \("):
        trace_layers([{"conv": args}, "flatten", {"dense": {"out_features": 2}}], (3, 16, 16), 2)


@pytest.mark.parametrize(
    "layers, expected",
    [
        ([{"relu": {1: 2}}], "argument names are words"),
        ([{"conv": {"out_channels": 2**64, "kernel_size": 3}}], "is larger than cnnzoo allows"),
        (
            ["flatten", {"dense": {"out_features": 1_000_000}}, {"dense": {"out_features": 1_000_000}}],
            "parameters, more than cnnzoo allows",
        ),
        ([{"repeat": {"times": 10**12, "layers": ["relu"]}}], "more than a network may have"),
        (
            [
                {
                    "repeat": {
                        "times": 10,
                        "layers": [
                            {
                                "repeat": {
                                    "times": 10,
                                    "layers": [
                                        {
                                            "repeat": {
                                                "times": 10,
                                                "layers": [{"repeat": {"times": 10, "layers": ["relu"]}}],
                                            }
                                        }
                                    ],
                                }
                            }
                        ],
                    }
                }
            ],
            "more than a network",
        ),
    ],
)
def test_layer_lists_that_would_exhaust_the_machine_are_refused(layers, expected):
    with pytest.raises(UserError, match=expected):
        trace_layers(layers, (3, 16, 16), 2)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.image_size=1099511627776", "at most 4096"),
        ("model.input=[3, 1099511627776, 8]", "at most 4096"),
    ],
)
def test_huge_images_are_config_errors(image_root, override, expected):
    with pytest.raises(UserError, match=expected):
        load_config(tiny_config(image_root), [override])


@pytest.mark.slow
def test_a_config_at_the_edge_of_every_range_trains(image_root, tmp_path):
    """What the schema admits, train runs (issue 23, item 7: summary and train agree)."""
    config = tiny_config(
        image_root,
        epochs=2,
        lr=1e6,
        momentum=1.0,
        weight_decay=1e6,
        scheduler="step",
        step_size=1,
        gamma=0.999,
        label_smoothing=0.999,
        ddp_timeout=604800,
        optimizer="sgd",
    )
    config["seed"] = 2**64 - 1
    config["data"]["augment"] = {
        "hflip": 1.0,
        "vflip": True,
        "rotation": 180,
        "translate": [1.0, 1.0],
        "shear": 89.99,
        "zoom": 0.999,
        "random_resized_crop": [1e-6, 1.0],
        "color_jitter": {"brightness": 10, "contrast": 10, "saturation": 10, "hue": 0.5},
    }
    run = train(config, out=tmp_path / "runs", quiet=True)
    assert (run / "last.pt").is_file()


def test_deeply_nested_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(UserError, match="nested too deeply"):
        load_config(path)


# ============================================================================ checkpoints


def hostile(trained: Path, tmp_path: Path, change) -> Path:
    ckpt = torch.load(trained / "best.pt", weights_only=True)
    change(ckpt)
    path = tmp_path / "hostile.pt"
    torch.save(ckpt, path)
    return path


HOSTILE_CHECKPOINTS = [
    (lambda c: c["meta"].update(image_size=[100000, 100000]), "meta.image_size"),
    (lambda c: c.update(layers=[{"type": "utils", "kwargs": {}}]), "unknown layer 'utils'"),
    (lambda c: [c.pop(k) for k in list(c) if k not in ("format", "version")], "meta is missing"),
    (
        lambda c: c.update(
            layers=[
                {"type": "Flatten", "kwargs": {}},
                {"type": "Linear", "kwargs": {"in_features": 10**6, "out_features": 10**6}},
            ]
        ),
        "larger than cnnzoo allows|more than cnnzoo allows|in_features",
    ),
    (lambda c: c.update(config="rm -rf /"), "config should be a mapping"),
    (lambda c: c["meta"].update(std=[0.0, 1.0, 1.0]), "meta.std"),
    (lambda c: c["meta"].update(classes="ab"), "meta.classes"),
    (lambda c: c.update(model_state={"0.weight": torch.zeros(1)}), "weights do not fit its layers"),
]


@pytest.mark.parametrize("change, expected", HOSTILE_CHECKPOINTS)
def test_hostile_but_loadable_checkpoints_are_refused_in_words(trained, tmp_path, change, expected):
    path = hostile(trained, tmp_path, change)
    with pytest.raises(UserError, match=expected):
        cnnzoo.load(path)
    line = one_error_line(cli("predict", str(trained.parent), "--checkpoint", str(path)))
    assert str(path) in line


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/cnnzoo-pwned",))


def test_a_pickle_that_would_run_code_is_refused_plainly(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "cnnzoo-checkpoint", "payload": _RunsCode()}, path, pickle_protocol=2)
    line = one_error_line(cli("predict", str(tmp_path), "--checkpoint", str(path)))
    assert "refused: this file would run code when loaded (it asks for posix.system)" in line
    assert "weights_only set to False" not in line and not Path("/tmp/cnnzoo-pwned").exists()


# ============================================================================ fuzz


# every key the schema has, sections too (a new option is fuzzed the day it is added)
CONFIG_KEYS = [entry.key for entry in config_keys()]


FUZZ_VALUES = [
    None,
    True,
    0,
    -1,
    1,
    3,
    2**31,
    2**64,
    1e-9,
    float("nan"),
    float("inf"),
    "",
    "abc",
    "num_classes",
    [],
    [0],
    [1, 2, 3],
    [[1]],
    {},
    {"a": 1},
    {1: 2},
    "1e-3",
    "../x",
    "/tmp/x",
]
FUZZ_KEYS = [
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "out_channels",
    "out_features",
    "p",
    "times",
    "layers",
    "name",
    "weights",
    "freeze",
    "in_channels",
    "in_features",
]


def mutate(config: dict, rng: random.Random) -> tuple[dict, list[str]]:
    """One random change to a config: a layer argument, a layer, or a top-level setting."""
    layers = config["model"]["layers"]
    choice = rng.random()
    if choice < 0.5:
        index = rng.randrange(len(layers))
        entry = layers[index]
        name, args = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
        args = dict(args or {})
        args[rng.choice(FUZZ_KEYS)] = rng.choice(FUZZ_VALUES)
        layers[index] = {name: args}
        return config, []
    if choice < 0.75:
        layers.insert(
            rng.randrange(len(layers) + 1),
            rng.choice(
                [
                    "relu",
                    "pool",
                    "gap",
                    "flatten",
                    "bogus",
                    {"conv": {"out_channels": rng.choice(FUZZ_VALUES)}},
                    {"repeat": {"times": rng.choice(FUZZ_VALUES), "layers": ["relu"]}},
                    {"backbone": {"name": rng.choice(["resnet18", "nothing", "timm/nothing", 7])}},
                    {
                        "residual": {
                            "layers": rng.choice([["relu"], [], "relu", [{"conv": {"out_channels": 3}}]]),
                            "shortcut": rng.choice(["auto", "identity", [], ["pool"], 3]),
                        }
                    },
                    {
                        "branches": {
                            "paths": rng.choice([[["relu"], ["relu"]], [["relu"], ["pool"]], [], "x"]),
                            "merge": rng.choice(["concat", "add", "max"]),
                        }
                    },
                    {"squeeze_excite": {"reduction": rng.choice(FUZZ_VALUES)}},
                    {"dense": {"out_features": rng.choice(FUZZ_VALUES)}},
                    {rng.choice(FUZZ_VALUES[:3]): {}},
                ]
            ),
        )
        return config, []
    key = rng.choice(CONFIG_KEYS)
    value = yaml.safe_dump(rng.choice(FUZZ_VALUES), default_flow_style=True).strip().split("\n")[0]
    return config, [f"{key}={value}"]


def test_fuzzed_configs_give_user_errors_or_valid_networks(image_root):
    cases = int(os.environ.get("CNNZOO_FUZZ_CASES", "300"))
    rng = random.Random(20261127)
    outcomes = {"ok": 0, "user error": 0}
    for case in range(cases):
        config, overrides = mutate(tiny_config(image_root), rng)
        try:
            cfg = load_config(config, overrides)
            channels, size = resolve_input(cfg)
            trace_layers(cfg.model.layers, (channels, *size), 2)
            outcomes["ok"] += 1
        except UserError as exc:
            assert "\n" not in str(exc).strip(), (case, config, overrides, str(exc))
            outcomes["user error"] += 1
        except Exception as exc:  # noqa: BLE001 - the point: nothing else may escape
            pytest.fail(f"case {case}: {type(exc).__name__}: {exc}\nconfig {config}\noverrides {overrides}")
    print(f"fuzz: {cases} cases: {outcomes}")
    assert outcomes["user error"] > cases // 4 and outcomes["ok"] > 0


def test_fuzzed_checkpoints_load_or_are_refused_in_words(trained, tmp_path):
    cases = int(os.environ.get("CNNZOO_FUZZ_CASES", "300")) // 3
    rng = random.Random(7)
    original = torch.load(trained / "best.pt", weights_only=True)
    fields = (
        [("meta", k) for k in original["meta"]]
        + [("layers", i) for i in range(len(original["layers"]))]
        + [(k, None) for k in original]
    )
    refused = 0
    for case in range(cases):
        ckpt = pickle.loads(pickle.dumps(original))
        section, key = rng.choice(fields)
        value = rng.choice(FUZZ_VALUES)
        if key is None:
            ckpt[section] = value
        elif isinstance(ckpt[section], list):
            ckpt[section][key] = rng.choice([value, {"type": rng.choice(["Linear", "os", "Conv2d"]), "kwargs": {}}])
        else:
            ckpt[section][key] = value
        path = tmp_path / f"case{case}.pt"
        torch.save(ckpt, path)
        try:
            cnnzoo.load(path)
        except UserError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc).strip()
            refused += 1
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"case {case}: {section}.{key} = {value!r}: {type(exc).__name__}: {exc}")
    print(f"fuzz: {cases} checkpoints: {refused} refused in one line, {cases - refused} loaded")
    assert refused > cases // 3


def test_checkpoint_refusal_reaches_the_checkpoint_module(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"format": FORMAT, "version": VERSION}, path)
    with pytest.raises(UserError, match="meta is missing"):
        load_checkpoint(path)


def test_out_under_proc_is_one_line(image_root, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(image_root)))
    line = one_error_line(cli("train", "-c", str(config), "--runs", "/proc/cnnzoo-runs"))
    assert "--runs /proc/cnnzoo-runs: cannot make a run folder" in line


def broken_files(folder: Path, rng: random.Random, count: int) -> list[Path]:
    """Files named like images that are not: truncated, random, empty, text, a FIFO, links, a folder."""
    from PIL import Image

    good = folder / "good.png"
    Image.new("RGB", (20, 20), (200, 30, 30)).save(good)
    jpeg = folder / "source.jpg"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(jpeg)
    made = []
    for i in range(count):
        kind = rng.choice(["truncated", "random", "empty", "text", "fifo", "dangling", "loop", "folder", "png-as-jpg"])
        path = folder / f"bad_{i:03d}_{kind}.{rng.choice(['jpg', 'png', 'JPEG', 'webp'])}"
        if kind == "truncated":
            path.write_bytes(jpeg.read_bytes()[: rng.randrange(1, 200)])
        elif kind == "random":
            path.write_bytes(rng.randbytes(rng.randrange(1, 2000)))
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "text":
            path.write_text("not an image\n")
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "dangling":
            os.symlink(folder / "nowhere", path)
        elif kind == "loop":
            os.symlink(path.name, path)
        elif kind == "folder":
            path.mkdir()
            continue  # a folder is searched, not predicted
        else:  # a PNG under a JPEG name still decodes: it must be predicted
            path.write_bytes(good.read_bytes())
        made.append(path)
    return made


def test_fuzzed_broken_files_are_each_predicted_or_named(trained, tmp_path):
    rng = random.Random(11)
    files = broken_files(tmp_path, rng, int(os.environ.get("CNNZOO_FUZZ_CASES", "300")) // 5)
    model = cnnzoo.load(trained / "best.pt")
    paths, missing = expand_inputs([str(tmp_path)])
    errors: list = list(missing)
    records = model.predict(paths, errors=errors)
    accounted = {r["image"] for r in records} | {name for name, _ in errors}
    assert {str(p) for p in files} <= accounted
    assert all(reason for _, reason in errors)
    predicted = {r["image"] for r in records}
    print(f"fuzz: {len(files)} broken files: {len(records)} predicted, {len(errors)} named")
    assert {str(p) for p in files if "png-as-jpg" in p.name} | {str(tmp_path / "good.png")} <= predicted


def test_fuzzed_broken_files_in_a_data_folder_are_skipped_while_training_data_loads(tmp_path, capsys):
    rng = random.Random(12)
    root = write_class_folders(tmp_path / "data", {"a": 5, "b": 5})
    broken = broken_files(root / "a", rng, 40)
    cfg = load_config(tiny_config(root))
    spec = load_data(cfg)
    decoded = [
        decode_all(split, (16, 16), 3, kind="ram", cache_dir=None, workers=0) for split in (spec.train, spec.val)
    ]
    scanned = len(spec.train) + len(spec.val)
    unreadable = sum(len(d.failed) for d in decoded)
    readable = 10 + 2 + sum("png-as-jpg" in p.name for p in broken)  # good class images, good.png, source.jpg
    assert scanned - unreadable == readable
    err = capsys.readouterr().err
    fifos = [p for p in broken if "_fifo." in p.name]
    assert fifos and all(f"skipped {p}: not a regular file" in err for p in fifos)


# ============================================================================ model files that are not checkpoints


class _WritesOnLoad(torch.nn.Module):
    """A scripted module whose ``__setstate__`` (run by ``torch.jit.load``) overwrites 8 bytes of a file."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.written = 0

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, int]:
        return (self.target, self.written)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, int]) -> None:
        self.target = state[0]
        self.training = False
        mapped = torch.from_file(state[0], shared=True, size=8, dtype=torch.uint8)
        mapped.fill_(33)
        self.written = int(mapped.sum().item())  # kept, so the write is not optimised away


VICTIM = b"untouched-file-content\n"


@pytest.fixture
def scripted_attack(tmp_path):
    """A TorchScript archive named like a checkpoint, in a run folder that runs/latest points at."""
    import warnings

    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    run = tmp_path / "runs" / "evil" / "1"
    run.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated
        torch.jit.save(torch.jit.script(_WritesOnLoad(str(victim))), run / "best.pt")
    os.symlink("evil/1", tmp_path / "runs" / "latest")
    return run / "best.pt", victim


def test_a_torchscript_archive_is_refused_before_its_code_runs(scripted_attack, trained, tmp_path, monkeypatch):
    archive, victim = scripted_attack
    image = str(trained.parents[2] / "images" / "validation" / "a" / "a_000.png")
    commands = [
        ("predict", image, "-m", str(archive)),
        ("export", str(archive)),
        ("explain", image, "-m", str(archive)),
        ("evaluate", str(archive)),
        ("serve", str(archive)),
        ("train", "--resume", str(archive)),
    ]
    monkeypatch.chdir(tmp_path)  # runs/latest/best.pt is the archive: the default of every command
    commands += [("predict", image), ("export",), ("explain", image), ("evaluate",), ("serve",)]
    for command in commands:
        result = cli(*command)
        assert victim.read_bytes() == VICTIM, command
        assert result.exit_code == 2 and "Traceback" not in result.stderr, (command, result.output)
        line = result.stderr.strip().splitlines()[-1]  # predict says first which checkpoint it uses
        assert (
            line.startswith("cnnzoo: error: ")
            and "a TorchScript archive: it holds code that runs when it is loaded" in line
        ), (command, line)
    for api in (
        lambda: cnnzoo.load(archive),
        lambda: cnnzoo.load(),
        lambda: cnnzoo.evaluate(archive),
        lambda: cnnzoo.export(archive),
        lambda: cnnzoo.explain(archive, image),
    ):
        with pytest.raises(UserError, match="TorchScript archive"):
            api()
    assert victim.read_bytes() == VICTIM
    # the control: asked to trust the file, cnnzoo opens it, and its code does run
    with pytest.raises(UserError, match="without cnnzoo's metadata"):
        cnnzoo.load(archive, trust_torchscript=True)
    assert victim.read_bytes() == b"!" * 8 + VICTIM[8:]


def test_files_that_are_not_checkpoints_are_named_in_one_true_line(trained, tmp_path):
    truncated = tmp_path / "best.pt"
    truncated.write_bytes((trained / "best.pt").read_bytes()[:3000])
    cases = {
        trained / "metrics.csv": f"a run's metrics table (CSV), not a checkpoint; the run's checkpoint is "
        f"{trained / 'best.pt'}",
        trained / "config.yaml": f"a cnnzoo config (YAML), not a checkpoint; train it first (cnnzoo train "
        f"--config {trained / 'config.yaml'}) and use the best.pt of that run",
        truncated: "a truncated or damaged checkpoint: it starts as a torch archive but its end (the zip "
        "directory) is missing (3,000 bytes; a copy cut short?); copy it again, or use the run's last.pt",
    }
    for path, what in cases.items():
        for command in (("predict", str(trained), "-m", str(path)), ("evaluate", str(path))):
            assert one_error_line(cli(*command)) == f"cnnzoo: error: {path}: {what}"


# ============================================================================ fuzz: exports and served requests


FUZZ_META_VALUES = FUZZ_VALUES + [
    [20000, 20000],
    [100000, 16],
    [0, 16],
    [-5, -5],
    [16],
    ["a"],
    ["a", "b", "c"],
    [0.0],
    [1.0, 1.0, 1.0],
    [float("nan")] * 3,
    "x" * 1000,
]
FUZZ_DIMS = [1, 2, 0, 3, 16, 99, "batch", "h"]


def _fuzzed_onnx(proto, meta: dict, rng: random.Random):
    """A copy of an ONNX export with one random change to its metadata text or its graph's sizes."""
    import json

    from cnnzoo.inference.classifier import METADATA_KEY

    proto = type(proto).FromString(proto.SerializeToString())
    entry = next(e for e in proto.metadata_props if e.key == METADATA_KEY)
    choice = rng.random()
    if choice < 0.6:
        changed = dict(meta)
        changed[rng.choice(["classes", "image_size", "channels", "mean", "std", "epoch"])] = rng.choice(
            FUZZ_META_VALUES
        )
        entry.value = json.dumps(changed)
        return proto, f"metadata {entry.value[:80]}"
    if choice < 0.75:
        entry.value = rng.choice(["", "{", "null", "[]", "1e999", '"text"', "[" * 50000, '{"classes": 7}'])
        return proto, f"metadata text {entry.value[:20]!r}"
    value = rng.choice([proto.graph.input[0], proto.graph.output[0]])
    dims = value.type.tensor_type.shape.dim
    for _ in range(rng.randrange(1, 3)):
        if rng.random() < 0.2 and len(dims) > 1:
            del dims[rng.randrange(len(dims))]
            continue
        dim = dims[rng.randrange(len(dims))]
        new = rng.choice(FUZZ_DIMS)
        if isinstance(new, int):
            dim.dim_value = new
        else:
            dim.dim_param = new
    return proto, f"{value.name} dims {[d.dim_value or d.dim_param for d in dims]}"


def test_fuzzed_onnx_exports_load_or_are_refused_in_words(trained, tmp_path):
    import json

    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from cnnzoo.deploy.export import export
    from cnnzoo.inference import load
    from cnnzoo.inference.classifier import METADATA_KEY

    source = onnx.load(str(export(trained / "best.pt", "onnx", out=tmp_path / "source.onnx").path))
    meta = json.loads(next(e.value for e in source.metadata_props if e.key == METADATA_KEY))
    images = [str(p) for p in sorted((trained.parents[2] / "images" / "validation").rglob("*.png"))][:3]
    cases = int(os.environ.get("CNNZOO_FUZZ_CASES", "300")) // 3
    rng = random.Random(23)
    refused = 0
    for case in range(cases):
        proto, change = _fuzzed_onnx(source, meta, rng)
        path = tmp_path / f"case{case}.onnx"
        onnx.save(proto, str(path))
        try:
            records = load(path).predict(images, batch_size=2)
            assert len(records) == len(images) and all(0 <= r["probability"] <= 1 for r in records)
        except UserError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc).strip(), (case, change, str(exc))
            refused += 1
        except Exception as exc:  # noqa: BLE001 - the point: nothing else may escape
            pytest.fail(f"case {case}: {change}: {type(exc).__name__}: {exc}")
    print(f"fuzz: {cases} ONNX exports: {refused} refused in one line, {cases - refused} predicted")
    assert refused > cases // 3


def _fuzzed_request(rng: random.Random, image: bytes) -> tuple[str, str, bytes, dict]:
    """One random request: method, path and query, body, headers."""
    import io
    from urllib.parse import quote

    from PIL import Image

    deep = io.BytesIO()
    Image.fromarray(np_random(rng).integers(0, 65536, (40, 30), dtype="uint16")).save(deep, format="PNG")
    bodies = [
        image,
        image[: rng.randrange(1, len(image))],
        rng.randbytes(rng.randrange(0, 3000)),
        b"",
        png_claiming(rng.choice([9000, 60000, 2**31 - 1]), rng.choice([9000, 60000])),
        png_claiming(100, 100),
        deep.getvalue(),
        "é".encode() * 100,
    ]
    top_k = rng.choice(
        ["1", "3", "0", "-1", "²", "٣", "9" * 5000, "1e3", " 2", "", "%00", "abc", "99999999999", "3&top_k=x"]
    )
    path = rng.choice(["/predict"] * 8 + ["/info", "/", "/health", "/nothing", "/predict/"])
    name = rng.choice(["a.jpg", "é" * 300, "../../etc/passwd"])
    query = rng.choice(["", f"?top_k={quote(top_k, safe='%&=')}", f"?name={quote(name)}"])
    kind = rng.random()
    if kind < 0.45:
        return (
            rng.choice(["POST"] * 5 + ["GET", "PUT"]),
            path + query,
            rng.choice(bodies),
            {"Content-Type": rng.choice(["application/octet-stream", "image/png", "text/plain", "", "x/y; q=\x7f"])},
        )
    boundary = rng.choice(["b0undary", "", "x" * 80, "é"])
    parts = b""
    for n in range(rng.randrange(0, 4)):
        name = rng.choice(
            [
                f'name="file"; filename="f{n}.png"',
                'name="file"; filename=""',
                'name="note"',
                'filename="nameless.png"',
                'name="file"; filename="' + "ü" * 300 + '"',
                "",
            ]
        )
        parts += (
            f"--{boundary}\r\nContent-Disposition: form-data; {name}\r\n\r\n".encode() + rng.choice(bodies) + b"\r\n"
        )
    body = parts + rng.choice([f"--{boundary}--\r\n".encode(), b"", b"--", rng.randbytes(20)])
    content_type = rng.choice(
        [f"multipart/form-data; boundary={boundary}", "multipart/form-data", "multipart/form-data; boundary=other"]
    )
    return "POST", path + query, body, {"Content-Type": content_type}


def np_random(rng: random.Random):
    import numpy as np

    return np.random.default_rng(rng.randrange(2**32))


def test_fuzzed_requests_get_an_answer_in_words_and_the_server_stays_up(trained, tmp_path):
    pytest.importorskip("starlette")
    pytest.importorskip("onnxruntime")
    from cnnzoo.deploy.export import export

    from servelib import Server

    model = export(trained / "best.pt", "onnx", out=tmp_path / "served.onnx").path
    image = (trained.parents[2] / "images" / "validation" / "a" / "a_000.png").read_bytes()
    server = Server(model, tmp_path, "--max-bytes", "100000")
    cases = int(os.environ.get("CNNZOO_FUZZ_CASES", "300")) // 3
    rng = random.Random(424242)
    statuses: dict[int, int] = {}
    try:
        for case in range(cases):
            method, path, body, headers = _fuzzed_request(rng, image)
            status, answer = server.request(path, body if method != "GET" else None, headers, method)
            statuses[status] = statuses.get(status, 0) + 1
            where = (case, method, path[:80], headers, body[:60])
            assert status in (200, 307, 400, 404, 405, 413, 415), (where, status, answer)  # 307: /predict/
            if path.startswith("/predict") and status >= 400:
                assert isinstance(answer, dict) and isinstance(answer.get("error"), str), (where, answer)
            assert server.process.poll() is None, where
        assert server.get("/health") == (200, {"status": "ok"})
    finally:
        server.stop()
    print(f"fuzz: {cases} requests: {dict(sorted(statuses.items()))}")
    assert statuses.get(200, 0) > 0 and len(statuses) >= 4


def _mutate_file(path: Path, pristine: bytes, rng: random.Random) -> str:
    """One random way a file goes wrong; returns its name."""
    kind = rng.choice(
        ["truncate", "overwrite", "append", "replace", "empty", "fifo", "dev-zero link", "delete", "flip one byte"]
    )
    if path.is_symlink() or path.exists():
        path.unlink()
    data = bytearray(pristine)
    if kind == "truncate":
        data = data[: rng.randrange(len(data))]
    elif kind == "overwrite":
        at = rng.randrange(len(data))
        data[at : at + rng.randrange(1, 64)] = rng.randbytes(rng.randrange(1, 64))
    elif kind == "append":
        data += rng.randbytes(rng.randrange(1, 4096))
    elif kind == "replace":
        data = bytearray(rng.randbytes(rng.randrange(0, 2 * len(pristine))))
    elif kind == "empty":
        data = bytearray()
    elif kind == "flip one byte":
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero link":
        os.symlink("/dev/zero", path)
    elif kind != "delete":
        path.write_bytes(bytes(data))
    return kind


def test_fuzzed_cache_files_are_reused_whole_or_rebuilt(image_root, tmp_path, capsys):
    """Issue 23, item 5: whatever happens to a cache file or its record, the pixels that come back
    are the images' own (reused when still whole, else rebuilt with one line), and nothing hangs."""
    import signal

    cases = int(os.environ.get("CNNZOO_FUZZ_CASES", "300")) // 3
    rng = random.Random(23)
    spec = load_data(load_config(tiny_config(image_root)))
    first = decode_all(spec.val, (16, 16), 3, kind="disk", cache_dir=tmp_path, workers=0)
    reference, npy = first.pixels.clone(), Path(first.location)
    del first
    files = {npy: npy.read_bytes(), npy.with_suffix(".json"): npy.with_suffix(".json").read_bytes()}
    capsys.readouterr()
    outcomes: dict[str, int] = {}

    def stop(*_):
        raise TimeoutError("decode_all blocked")

    previous = signal.signal(signal.SIGALRM, stop)
    try:
        for case in range(cases):
            for path, pristine in files.items():  # each case starts from a whole cache
                if path.is_symlink() or path.exists():
                    path.unlink()
                path.write_bytes(pristine)
            target = rng.choice(list(files))
            kind = _mutate_file(target, files[target], rng)
            signal.alarm(30)
            decoded = decode_all(spec.val, (16, 16), 3, kind="disk", cache_dir=tmp_path, workers=0)
            signal.alarm(0)
            err = capsys.readouterr().err.strip().splitlines()
            assert torch.equal(decoded.pixels, reference), (case, target.name, kind)
            assert len(err) <= 1 and all(line.startswith("warning: data.cache: ") for line in err), (case, kind, err)
            outcome = "reused" if decoded.seconds == 0 else "rebuilt"
            assert outcome == "rebuilt" or not err, (case, kind, err)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            del decoded
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    print(f"fuzz: {cases} damaged caches: {outcomes}")
    assert outcomes.get("rebuilt", 0) > cases // 2


def test_fuzzed_sweep_states_are_read_or_refused_in_one_line(tmp_path):
    """Issue 23, item 13: a sweep's state file, damaged at random, is either a state the sweep can
    run from or one line that names it and offers --restart."""
    import json

    from cnnzoo.training.sweep import _combinations, read_state

    cases = int(os.environ.get("CNNZOO_FUZZ_CASES", "300"))
    rng = random.Random(13)
    folder = tmp_path / "tiny-sweep"
    combos = _combinations({"train.lr": [0.1, 0.01], "train.optimizer": ["sgd", "adam"]}, None, 0)
    runs = []
    for number, combo in enumerate(combos, 1):
        (folder / str(number)).mkdir(parents=True)
        (folder / str(number) / "metrics.csv").write_text("epoch,val_acc\n1,0.5\n")
        runs.append({"values": combo, "run": str(folder / str(number)), "done": number < 3, "seconds": 1.5})
    pristine = {"config": "tiny.yaml", "grid": {}, "trials": None, "overrides": [], "runs": runs}
    path = folder / "sweep-0.json"
    outcomes = {"read": 0, "refused": 0}
    for case in range(cases):
        state = json.loads(json.dumps(pristine))
        if rng.random() < 0.6:  # a JSON-level change
            entry = rng.choice(state["runs"])
            key = rng.choice(["values", "run", "done", "seconds", "extra"])
            value = rng.choice(FUZZ_VALUES + ["/etc", str(tmp_path), str(folder / "9"), "../x", {"train.lr": 0.1}])
            if rng.random() < 0.2:
                entry.pop(key, None)
            elif rng.random() < 0.2:
                state["runs"] = rng.choice([None, [], state["runs"][:2], state["runs"] * 2, "runs", 5])
            else:
                entry[key] = value
            text = json.dumps(state, default=str)
            if path.is_symlink() or path.exists():
                path.unlink()
            path.write_text(text)
            kind = f"{key}={value!r}"
        else:
            kind = _mutate_file(path, json.dumps(pristine).encode(), rng)
        try:
            got = read_state(path, combos, folder)
        except UserError as exc:
            assert str(exc).startswith(f"{path}: damaged sweep state") and "--restart" in str(exc), (case, kind)
            assert "\n" not in str(exc), (case, kind)
            outcomes["refused"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - the point: nothing else may escape
            pytest.fail(f"case {case} ({kind}): {type(exc).__name__}: {exc}")
        if got is None:  # the file was deleted: a fresh sweep
            outcomes["read"] += 1
            continue
        for entry, combo in zip(got["runs"], combos):
            assert entry["values"] == combo and isinstance(entry["done"], bool), (case, kind)
            assert entry["run"] is None or str(entry["run"]).startswith(str(folder) + os.sep), (case, kind)
        outcomes["read"] += 1
    print(f"fuzz: {cases} damaged sweep states: {outcomes}")
    assert outcomes["refused"] > cases // 4 and outcomes["read"] > 0
