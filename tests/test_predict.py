"""Prediction from a checkpoint (issue #4): ``cnnzoo.load(path).predict(...)`` and ``cnnzoo predict``.

Real models trained for two epochs on generated pictures; the probabilities are
recomputed here from the checkpoint's layers and weights with the NumPy preprocessing,
so a predict that resized, converted or normalised differently would fail.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import cnnzoo
from cnnzoo.cli import app
from cnnzoo.data.preprocess import load_image, normalize_array
from cnnzoo.errors import UserError
from cnnzoo.evaluation.evaluate import evaluate as run_evaluation
from cnnzoo.evaluation.scores import confusion_matrix
from cnnzoo.model.layers import build_from_records
from cnnzoo.runs import resolve_checkpoint
from cnnzoo.runtime.device import norm_tensors, to_model_input

from support.cli import one_error_line, run_cnnzoo
from support.images import make_image_tree, write_class_folders
from support.runs import train_run

# a model trained since issue 31 carries an unknown score: each record says whether the image is unknown
RECORD_KEYS = {"image", "label", "probability", "top_k", "unknown", "unknown_score"}


def _image_tree(base: Path) -> Path:
    return make_image_tree(base / "images")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A two-class, two-logit model trained for real; base/runs/latest points at it."""
    return train_run(tmp_path_factory.mktemp("predict-run"), _image_tree)


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """The homework's head: one output unit for two classes (loss auto -> bce)."""

    def one_logit(cfg):
        cfg["model"]["layers"][-1] = {"dense": {"out_features": 1}}
        cfg["name"] = "binary"

    return train_run(tmp_path_factory.mktemp("binary-run"), _image_tree, one_logit)


@pytest.fixture(scope="module")
def model(trained):
    return cnnzoo.load(trained.best)


def validation_images(run) -> list[Path]:
    return sorted((run.root / "validation").rglob("*.png"))


def reference_logits(checkpoint: Path, images: list) -> torch.Tensor:
    """The checkpoint's network rebuilt by hand, fed NumPy-preprocessed pixels."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    meta = ckpt["meta"]
    net = build_from_records(ckpt["layers"])
    net.load_state_dict(ckpt["model_state"])
    net.eval()
    pixels = np.stack([load_image(img, meta["image_size"], meta["channels"]) for img in images])
    x = torch.from_numpy(normalize_array(pixels, meta["mean"], meta["std"]))
    assert x.shape[1:] == (meta["channels"], *meta["image_size"])
    with torch.no_grad():
        return net(x)


def by_label(record: dict) -> dict[str, float]:
    return {t["label"]: t["probability"] for t in record["top_k"]}


# ----------------------------------------------------------------------------- the Python API


def test_predict_accepts_path_pil_and_tensors(model, trained):
    path = validation_images(trained)[0]
    pil = Image.open(path)
    pil.load()
    as_uint8 = torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1).contiguous()
    as_float = as_uint8.float() / 255.0
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape[0] == 3
    assert 0.0 <= float(as_float.min()) and float(as_float.max()) <= 1.0

    as_numpy = np.array(pil.convert("RGB"))  # H x W x C uint8, also accepted
    records = model.predict([str(path), pil, as_uint8, as_float, as_numpy], top_k=2)

    assert len(records) == 5
    assert records[0]["image"] == str(path)
    for r in records:
        assert set(r) == RECORD_KEYS
        assert len(r["top_k"]) == 2
        for entry in r["top_k"]:
            assert set(entry) == {"label", "probability"}
            assert entry["label"] in model.classes
        assert r["label"] == ("unknown" if r["unknown"] else r["top_k"][0]["label"])
        assert r["probability"] == r["top_k"][0]["probability"]
        assert r["top_k"][0]["probability"] >= r["top_k"][1]["probability"]
        assert isinstance(r["probability"], float)
    first = by_label(records[0])
    for r in records[1:]:
        assert r["label"] == records[0]["label"]
        for label, p in by_label(r).items():
            assert p == pytest.approx(first[label], abs=1e-6)


def test_grey_tensor_is_converted_like_a_grey_image(model, trained):
    grey = Image.open(validation_images(trained)[1]).convert("L")
    as_tensor = torch.from_numpy(np.array(grey))[None]  # [1, H, W] uint8
    from_image, from_tensor = model.predict([grey, as_tensor], top_k=2)
    assert from_tensor["label"] == from_image["label"]
    assert from_tensor["probability"] == pytest.approx(from_image["probability"], abs=1e-6)
    with pytest.raises(UserError):  # a batch is not one image
        model.predict(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_probabilities_over_all_classes_sum_to_one(model, trained):
    k = len(model.classes)
    records = model.predict([str(p) for p in validation_images(trained)], top_k=k)
    assert len(records) == len(validation_images(trained))
    for r in records:
        assert sorted(t["label"] for t in r["top_k"]) == sorted(model.classes)
        assert sum(t["probability"] for t in r["top_k"]) == pytest.approx(1.0, abs=1e-5)
        assert all(0.0 <= t["probability"] <= 1.0 for t in r["top_k"])
    # top_k larger than the number of classes is clipped, never an error
    assert len(model.predict(str(validation_images(trained)[0]), top_k=10)[0]["top_k"]) == k


def test_probability_is_softmax_of_independently_computed_logits(model, trained):
    images = validation_images(trained)
    logits = reference_logits(trained.best, images)
    expected = torch.softmax(logits / stored_temperature(trained.best), dim=1)  # calibrated as trained
    records = model.predict([str(p) for p in images], top_k=len(model.classes), unknown=False)  # the argmax, always
    for r, row in zip(records, expected):
        probs = by_label(r)
        for i, label in enumerate(model.classes):
            assert probs[label] == pytest.approx(float(row[i]), abs=1e-5)
        assert r["label"] == model.classes[int(row.argmax())]


def test_numpy_normalize_matches_the_torch_training_path():
    rng = np.random.default_rng(0)
    for channels, mean, std in ((3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), (1, [0.5], [0.5])):
        pixels = rng.integers(0, 256, size=(4, 10, 12, channels), dtype=np.uint8)
        ours = normalize_array(pixels, mean, std)
        assert ours.dtype == np.float32 and ours.shape == (4, channels, 10, 12)
        device = torch.device("cpu")
        theirs = to_model_input(
            torch.from_numpy(pixels).permute(0, 3, 1, 2), *norm_tensors(mean, std, device), device=device
        )
        torch.testing.assert_close(torch.from_numpy(ours), theirs, atol=1e-6, rtol=1e-6)
        # and both are (x / 255 - mean) / std, channel by channel
        c = channels - 1
        by_hand = (pixels[1, 3, 5, c] / 255.0 - mean[c]) / std[c]
        assert ours[1, c, 3, 5] == pytest.approx(by_hand, abs=1e-5)


def test_wide_grey_and_upright_images_decode_to_the_same_pixels_as_the_plain_rule(tmp_path):
    """16-bit grey is scaled by 255/65535 (32-bit too, unless it holds 8-bit values) in bands of rows now; an
    upright image is no longer copied first: the pixels must equal the one-piece rule."""
    rng = np.random.default_rng(3)
    deep = rng.integers(0, 65536, (600, 1900), dtype=np.uint16)  # more rows than one band
    wide = rng.integers(0, 1000, (300, 257)).astype(np.int32)
    for array, peak, fmt in ((deep, 65535.0, "PNG"), (wide, 65535.0, "TIFF"), (wide // 4, 255.0, "TIFF")):
        path = tmp_path / f"grey.{fmt.lower()}"
        Image.fromarray(array).save(path, format=fmt)
        rule = Image.fromarray(np.clip(array.astype(np.float64) * (255.0 / peak), 0, 255).astype(np.uint8), "L")
        for channels, size in ((1, (40, 50)), (3, (600, 1900))):
            expected = np.asarray(rule.convert("RGB" if channels == 3 else "L").resize(size[::-1], Image.BILINEAR))
            got = load_image(path, size, channels)
            assert np.array_equal(got.reshape(expected.shape), expected), (fmt, channels)
    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 270 on display
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(turned, exif=exif.tobytes())
    opened = Image.open(turned)
    assert load_image(turned, (40, 30), 3).shape == (40, 30, 3)  # turned upright: 40 high, 30 wide
    assert load_image(opened, (40, 30), 3).shape == (40, 30, 3) and opened.size == (40, 30)  # caller's untouched


def test_predictions_match_evaluate(model, trained, tmp_path):
    images = validation_images(trained)
    records = model.predict([str(p) for p in images])
    classes = model.classes
    truth = [classes.index(p.parent.name) for p in images]
    predicted = [classes.index(r["label"]) for r in records]
    report = run_evaluation(trained.best, out=tmp_path, progress=False)
    assert report["split"] == "validation" and report["num_images"] == len(images)
    assert confusion_matrix(truth, predicted, len(classes)) == report["confusion_matrix"]
    accuracy = sum(t == p for t, p in zip(truth, predicted)) / len(images)
    assert accuracy == report["accuracy"]


def stored_temperature(checkpoint: Path) -> float:
    """The temperature training fitted and stored (1 when the run was not calibrated)."""
    meta = torch.load(checkpoint, map_location="cpu", weights_only=True)["meta"]
    return float((meta.get("calibration") or {}).get("temperature", 1.0))


def test_binary_one_logit_model_gives_two_class_probabilities(binary, tmp_path):
    ckpt = torch.load(binary.best, map_location="cpu", weights_only=True)
    assert ckpt["meta"]["loss"] == "bce" and ckpt["meta"]["outputs"] == 1
    m = cnnzoo.load(binary.best)
    assert m.classes == ["a", "b"]
    images = validation_images(binary)
    records = m.predict([str(p) for p in images], top_k=2, unknown=False)  # the class the logit says, always
    logits = reference_logits(binary.best, images)
    assert logits.shape == (len(images), 1)
    for r, logit in zip(records, logits[:, 0]):
        probs = by_label(r)
        assert set(probs) == {"a", "b"}
        assert probs["a"] + probs["b"] == pytest.approx(1.0, abs=1e-6)
        assert probs["b"] == pytest.approx(float(torch.sigmoid(logit / stored_temperature(binary.best))), abs=1e-5)
        assert r["label"] == ("b" if float(logit) > 0 else "a")
    # the same labels evaluate counts
    truth = [m.classes.index(p.parent.name) for p in images]
    predicted = [m.classes.index(r["label"]) for r in records]
    report = run_evaluation(binary.best, out=tmp_path, progress=False)
    assert report["confusion_matrix"] == confusion_matrix(truth, predicted, 2)


def test_bad_items_are_reported_and_the_rest_keep_their_order(model, trained, tmp_path):
    images = [str(p) for p in validation_images(trained)]
    broken = tmp_path / "broken.png"
    broken.write_text("not a picture")
    mixed = images[:3] + [str(broken), str(tmp_path / "missing.png")] + images[3:]
    errors: list = []
    records = model.predict(mixed, batch_size=2, errors=errors)
    assert [r["image"] for r in records] == images
    assert [name for name, _ in errors] == [str(broken), str(tmp_path / "missing.png")]
    assert "not found" in errors[1][1]
    alone = model.predict(images, batch_size=len(images))
    for r, s in zip(records, alone):
        assert r["label"] == s["label"] and r["probability"] == pytest.approx(s["probability"], abs=1e-5)
    with pytest.raises(UserError, match="broken.png"):  # without an errors list, the first failure raises
        model.predict([images[0], str(broken)])


def test_many_images_in_batches_equal_one_at_a_time(model, trained, tmp_path, monkeypatch):
    folder = write_class_folders(tmp_path / "many", {"a": 75, "b": 75}, seed=7)
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    assert len(paths) == 150
    single = [model.predict(p, top_k=2)[0] for p in paths]

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["predict", "many", "--batch-size", "16", "--json", "-k", "2", "--checkpoint", str(trained.best)]
    )
    assert result.exit_code == 0, result.stderr
    batched = json.loads(result.stdout)
    assert len(batched) == 150
    assert [str(Path(tmp_path, r["image"])) for r in batched] == paths
    for b, s in zip(batched, single):
        assert b["label"] == s["label"]
        for label, p in by_label(s).items():
            assert by_label(b)[label] == pytest.approx(p, abs=1e-5)
    api = model.predict(paths, top_k=2, batch_size=16)
    assert [r["label"] for r in api] == [r["label"] for r in single]


def test_load_accepts_a_run_folder_and_defaults_to_runs_latest(trained, monkeypatch):
    by_folder = cnnzoo.load(trained.run_dir)
    assert Path(by_folder.path).name == "best.pt"
    monkeypatch.chdir(trained.base)
    default = cnnzoo.load()
    assert Path(default.path).resolve() == trained.best.resolve()
    assert resolve_checkpoint(None, "runs").resolve() == trained.best.resolve()


# ----------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def inputs(trained):
    """In base (which holds runs/): a folder tree, a globbable folder, a fake and a real image."""
    base = trained.base
    tree = base / "inputs"
    (tree / "deep" / "er").mkdir(parents=True)
    src = validation_images(trained)
    shutil.copy(src[0], tree / "x.png")
    Image.open(src[5]).convert("RGB").save(tree / "deep" / "er" / "y.jpg", quality=95)
    (tree / "notes.txt").write_text("not an image, and not named like one: skipped quietly")
    globbed = base / "globbed"
    globbed.mkdir()
    for i in (1, 2, 6):
        shutil.copy(src[i], globbed / f"g{i}.png")
    shutil.copy(src[3], globbed / "other.bmp")  # a .bmp name holding PNG bytes; not matched by *.png
    (base / "fake.png").write_text("this is text")
    shutil.copy(src[7], base / "good.png")
    return base


def test_cli_default_checkpoint_json_folders_and_globs(trained, inputs, model):
    result = run_cnnzoo(["predict", "inputs", "globbed/*.png", "--json"], cwd=inputs)
    assert result.returncode == 0, result.stderr
    used = [line for line in result.stderr.splitlines() if "using" in line]
    assert len(used) == 1, result.stderr
    assert Path(used[0].split("using", 1)[1].strip()).resolve() == trained.best.resolve()
    assert "Traceback" not in result.stderr

    records = json.loads(result.stdout)
    assert isinstance(records, list)
    assert sorted(r["image"] for r in records) == sorted(
        ["inputs/x.png", "inputs/deep/er/y.jpg", "globbed/g1.png", "globbed/g2.png", "globbed/g6.png"]
    )
    for r in records:
        assert set(r) == RECORD_KEYS
        assert all(set(t) == {"label", "probability"} for t in r["top_k"])
        assert len(r["top_k"]) == 2  # default --top-k 3, clipped to the 2 classes
        assert sum(t["probability"] for t in r["top_k"]) == pytest.approx(1.0, abs=1e-5)
        expected = model.predict(str(inputs / r["image"]))[0]  # the same best.pt
        assert r["label"] == expected["label"]
        assert r["probability"] == pytest.approx(expected["probability"], abs=1e-6)


def test_cli_csv_with_unreadable_and_missing_files_exits_1(trained, inputs, model):
    result = run_cnnzoo(
        ["predict", "good.png", "fake.png", "missing.png", "--csv", "--top-k", "2", "--checkpoint", trained.best],
        cwd=inputs,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("cnnzoo:") and "using" not in line]
    assert any("fake.png" in line for line in problems), result.stderr
    assert any("missing.png" in line for line in problems), result.stderr
    assert not any("good.png" in line for line in problems), result.stderr

    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == [
        "image",
        "label",
        "probability",
        "top1_label",
        "top1_probability",
        "top2_label",
        "top2_probability",
    ]
    assert len(rows) == 2
    row = dict(zip(rows[0], rows[1]))
    expected = model.predict(str(inputs / "good.png"), top_k=2)[0]
    assert row["image"] == "good.png"
    assert row["label"] == expected["label"] and row["top1_label"] == expected["top_k"][0]["label"]
    assert float(row["probability"]) == pytest.approx(expected["probability"], abs=1e-5)
    assert float(row["top1_probability"]) + float(row["top2_probability"]) == pytest.approx(1.0, abs=1e-5)


def test_cli_only_bad_files_exits_2(trained, inputs):
    result = run_cnnzoo(["predict", "fake.png", "missing.png", "nothing/*.png", "-m", trained.best], cwd=inputs)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for name in ("fake.png", "missing.png", "nothing/*.png"):
        assert name in result.stderr
    assert result.stdout.strip() == ""


def test_cli_without_any_runs_folder_is_one_line(tmp_path):
    result = run_cnnzoo(["predict", "whatever.png"], cwd=tmp_path)
    line = one_error_line(result)
    assert "runs" in line and "latest" in line


def test_cli_json_and_csv_together_is_refused(trained, inputs, monkeypatch):
    monkeypatch.chdir(inputs)
    result = CliRunner().invoke(app, ["predict", "good.png", "--json", "--csv", "-m", str(trained.best)])
    line = one_error_line(result)
    assert "--json" in line and "--csv" in line
    assert result.stdout == ""
