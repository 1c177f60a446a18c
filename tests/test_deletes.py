"""cnnzoo deletes, renames over and truncates only what it made (issue 28, item 0).

The generated ``shapes`` set goes only into an empty folder or one holding its own marker; a
shapes config given ``--data DIR`` with data of the user's own reads DIR as a folder instead;
``runs/latest`` is replaced only when it is cnnzoo's link; :func:`cnnzoo.files.remove_temporaries`
removes only :class:`cnnzoo.files.Replacement`'s own names; plots are written through it too.
The last test lists every call in the package that deletes, renames or writes a file, so that a
new one is audited (``docs/security.md``, "What cnnzoo deletes") the day it is written.
"""

from __future__ import annotations

import ast
import multiprocessing
import os
from collections import Counter
from pathlib import Path

import pytest
import yaml

from cnnzoo import runs
from cnnzoo.config import load_config
from cnnzoo.data import shapes
from cnnzoo.data.sources import class_names, load_data
from cnnzoo.errors import DataError
from cnnzoo.files import Replacement, remove_temporaries

from support.cli import CONFIGS, PROJECT, one_error_line, run_cnnzoo
from support.images import make_image_tree

NOT_OURS = "not a cnnzoo shapes data set"


@pytest.fixture
def few_shapes(monkeypatch):
    """A shapes set of 2 + 1 images per class: the generator's real code, generated in a blink."""
    monkeypatch.setattr(shapes, "PER_CLASS", {"train": 2, "validation": 1})


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ============================================================================ the shapes generator


def test_quickstart_with_data_on_a_folder_of_notes_keeps_it_and_says_one_line(tmp_path):
    """The issue's repro: the quickstart config (source: shapes) pointed at a folder of the user's."""
    (tmp_path / "mydata" / "keep").mkdir(parents=True)
    (tmp_path / "mydata" / "keep" / "notes.txt").write_text("precious\n")
    train = ["train", "-c", CONFIGS / "quickstart.yaml", "--data", "mydata", "--epochs", "1", "--runs", "runs"]
    line = one_error_line(run_cnnzoo(train, tmp_path))  # refused before anything trains
    assert "mydata" in line and NOT_OURS in line, line
    assert (tmp_path / "mydata" / "keep" / "notes.txt").read_text() == "precious\n"
    assert sorted(p.name for p in (tmp_path / "mydata").rglob("*")) == ["keep", "notes.txt"]


@pytest.mark.slow
def test_quickstart_with_data_on_an_image_folder_trains_on_it(tmp_path):
    """--data on a shapes config that names the user's images: trained on as a folder, said once."""
    photos = make_image_tree(tmp_path / "photos")
    before = _tree(photos)
    done = run_cnnzoo(
        ["train", "-c", CONFIGS / "quickstart.yaml", "--data", "photos", "--epochs", "1", "--runs", "runs"], tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "reading it as your own images (data.source: folder)" in done.stdout
    assert _tree(photos) == before
    saved = yaml.safe_load((tmp_path / "runs" / "quickstart" / "1" / "config.yaml").read_text())
    assert saved["data"]["source"] == "folder" and saved["data"]["root"] == str(photos.resolve())


def test_shapes_config_reads_its_class_names_from_a_user_folder(tmp_path):
    cfg = load_config({"data": {"source": "shapes", "root": str(make_image_tree(tmp_path / "photos"))}})
    assert class_names(cfg) == ["a", "b"] and cfg.data.source == "shapes"  # read as a folder, left as written


def test_shapes_are_generated_into_an_empty_folder_with_their_marker(tmp_path, few_shapes):
    empty = tmp_path / "empty"
    empty.mkdir()
    spec = load_data(load_config({"data": {"source": "shapes", "root": str(empty)}}))
    assert (empty / shapes.MARKER).read_text() == f"cnnzoo shapes v{shapes.VERSION}\n"
    assert len(spec.train) == 2 * len(shapes.CLASSES) and len(spec.val) == len(shapes.CLASSES)
    assert not list(tmp_path.glob(".shapes-*"))


def test_the_shapes_cache_folder_holding_other_files_is_refused_untouched(isolated_home, few_shapes):
    """The default place ($CNNZOO_HOME/shapes-vN) is no exception: a folder cnnzoo did not make stays."""
    root = isolated_home / f"shapes-v{shapes.VERSION}"
    (root / "train" / "circle").mkdir(parents=True)
    (root / "train" / "circle" / "mine.jpg").write_bytes(b"my own picture")
    with pytest.raises(DataError, match=NOT_OURS) as refused:
        load_data(load_config({"data": {"source": "shapes"}}))
    assert "\n" not in str(refused.value)
    assert _tree(root) == {"train/circle/mine.jpg": b"my own picture"}


@pytest.mark.parametrize(
    "marker, version, replaced",
    [(shapes.MARKER, shapes.VERSION - 1, True), (".complete", shapes.VERSION - 1, True), (".complete", None, False)],
)
def test_only_an_older_cnnzoo_shapes_set_is_replaced(tmp_path, few_shapes, marker, version, replaced):
    """An older version's set (its marker, or the ``.complete`` earlier versions wrote) is replaced;
    a ``.complete`` file that is not cnnzoo's marker does not make a folder cnnzoo's."""
    root = tmp_path / "shapes"
    (root / "train" / "circle").mkdir(parents=True)
    (root / "train" / "circle" / "old.jpg").write_bytes(b"old drawing")
    (root / marker).write_text(f"cnnzoo shapes v{version}\n" if version is not None else "my build finished\n")
    if not replaced:
        with pytest.raises(DataError, match=NOT_OURS):
            shapes.ensure_shapes(root)
        assert (root / "train" / "circle" / "old.jpg").read_bytes() == b"old drawing"
        return
    shapes.ensure_shapes(root)
    assert shapes.shapes_version(root) == shapes.VERSION
    assert not (root / "train" / "circle" / "old.jpg").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".shapes")]  # the old set and the temporary


def test_a_file_or_a_dangling_link_is_never_generated_over(tmp_path, few_shapes):
    (tmp_path / "notes.txt").write_text("precious\n")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    for root in (tmp_path / "notes.txt", tmp_path / "link"):
        with pytest.raises(DataError, match=NOT_OURS):
            shapes.ensure_shapes(root)
    assert (tmp_path / "notes.txt").read_text() == "precious\n" and (tmp_path / "link").is_symlink()


def _generate_and_report(root: str, start, results) -> None:
    start.wait()
    shapes.ensure_shapes(Path(root))
    results.put(os.stat(root).st_ino)  # the set this process was handed


def test_two_processes_generating_at_once_keep_one_set(tmp_path, monkeypatch):
    """Neither generator removes the set the other one made (and is reading from)."""
    monkeypatch.setattr(shapes, "PER_CLASS", {"train": 30, "validation": 10})  # long enough to overlap
    root = tmp_path / "shapes"
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_generate_and_report, args=(str(root), start, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    handed = {results.get(timeout=5), results.get(timeout=5)}
    assert handed == {os.stat(root).st_ino}
    assert shapes.shapes_version(root) == shapes.VERSION
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".shapes")]


# ============================================================================ run folders


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_latest_of_the_users_own_is_left_alone(tmp_path, kind, capsys):
    runs_root = tmp_path / "runs"
    run_dir = runs_root / "tiny" / "1"
    run_dir.mkdir(parents=True)
    latest = runs_root / "latest"
    if kind == "file":
        latest.write_text("my notes about the runs\n")
    else:
        latest.mkdir()
        (latest / "notes.txt").write_text("precious\n")
    runs.point_latest(runs_root, run_dir)
    if kind == "file":
        assert not latest.is_symlink() and latest.read_text() == "my notes about the runs\n"
    else:
        assert not latest.is_symlink() and (latest / "notes.txt").read_text() == "precious\n"
    assert "not a link cnnzoo made" in capsys.readouterr().err


def test_latest_made_by_cnnzoo_moves_on(tmp_path):
    runs_root = tmp_path / "runs"
    for n in (1, 2):
        (runs_root / "tiny" / str(n)).mkdir(parents=True)
    runs.point_latest(runs_root, runs_root / "tiny" / "1")
    runs.point_latest(runs_root, runs_root / "tiny" / "2")
    assert os.readlink(runs_root / "latest") == os.path.join("tiny", "2")
    (runs_root / "latest").unlink()
    (runs_root / "latest").write_text("tiny/1\n")  # the text file written where links cannot be made
    assert runs.is_latest_link(runs_root / "latest")


def test_resuming_a_checkpoint_outside_a_run_folder_makes_no_latest_above_it(tmp_path):
    """``--resume ~/Downloads/last.pt``: ~/Downloads is no run folder, and its parent no runs folder."""
    downloads = tmp_path / "home" / "Downloads"
    downloads.mkdir(parents=True)
    runs.point_latest(runs.runs_root_of(downloads), downloads)
    assert not os.path.lexists(tmp_path / "latest")


def test_only_replacements_own_temporaries_are_removed(tmp_path):
    """A killed write leaves ``.<name>.<8 random>.tmp``; a user's hidden ``.tmp`` files stay."""
    mine = {".notes.tmp": b"precious", ".config.yaml.tmp": b"mine too", ".a.b.tmp": b"and this"}
    for name, data in mine.items():
        (tmp_path / name).write_bytes(data)
    left = Replacement(tmp_path / "best.pt")  # as a kill leaves it: the temporary, never committed
    left.temporary.write_bytes(b"half a checkpoint")
    remove_temporaries(tmp_path)
    assert not left.temporary.exists()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == mine


def test_a_plot_replaces_a_link_at_its_name_and_leaves_the_target(tmp_path):
    """Pictures go through :func:`cnnzoo.files.write_bytes` as every other file: a link named
    history.png is replaced, the file it pointed at is not written through."""
    from cnnzoo.plots import plot_history

    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_bytes(b"the user's own picture")
    (tmp_path / "history.png").symlink_to(elsewhere)
    rows = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "train_acc": 0.5, "val_acc": 0.4}]
    plot_history(rows, tmp_path / "history.png", best_epoch=1)
    assert elsewhere.read_bytes() == b"the user's own picture"
    assert not (tmp_path / "history.png").is_symlink()
    assert (tmp_path / "history.png").read_bytes().startswith(b"\x89PNG")


# ============================================================================ every site, audited

_QUALIFIED = {
    *(f"os.{name}" for name in ("replace", "rename", "remove", "unlink", "rmdir", "removedirs", "symlink", "link")),
    *(f"os.{name}" for name in ("truncate", "ftruncate")),
    *(f"shutil.{name}" for name in ("rmtree", "move", "copy", "copy2", "copyfile", "copytree")),
}
_METHODS = {"unlink", "rmdir", "rename", "write_text", "write_bytes", "touch", "symlink_to", "hardlink_to"}
# libraries' writers: each given a path, or a buffer
_METHODS |= {"savefig", "save", "export", "write_model", "save_model"}

# (module, function, call) -> how many, each a row of the table in docs/security.md
AUDITED = {
    ("cnnzoo/files.py", "Replacement.commit", "os.replace"): 1,
    ("cnnzoo/files.py", "Replacement.discard", ".unlink"): 1,
    ("cnnzoo/files.py", "write_bytes", "open"): 1,
    ("cnnzoo/files.py", "remove_temporaries", ".unlink"): 1,
    ("cnnzoo/checkpoint.py", "save_atomic", ".save"): 1,
    ("cnnzoo/data/cache.py", "NpyWriter.__init__", "open"): 1,
    ("cnnzoo/data/shapes.py", "ensure_shapes", "shutil.rmtree"): 1,
    ("cnnzoo/data/shapes.py", "_generate", ".save"): 1,
    ("cnnzoo/data/shapes.py", "_generate", ".write_text"): 1,
    ("cnnzoo/data/shapes.py", "_put_in_place", "os.rename"): 4,
    ("cnnzoo/data/shapes.py", "_put_in_place", "shutil.rmtree"): 1,
    ("cnnzoo/data/shapes.py", "write_multi_label_shapes", ".save"): 1,
    ("cnnzoo/data/sources/samples.py", "FileSamples.encoded", ".save"): 1,
    ("cnnzoo/data/sources/samples.py", "ArraySamples.encoded", ".save"): 1,
    ("cnnzoo/data/shard_writer.py", "_write_split", "open"): 1,
    ("cnnzoo/data/shard_output.py", "remove_stale", ".unlink"): 1,
    ("cnnzoo/data/remote_images.py", "ImageCache.trim", ".unlink"): 1,
    ("cnnzoo/data/shard_output.py", "remove_stale", "shutil.rmtree"): 1,
    ("cnnzoo/data/shard_output.py", "StagedFolder.__init__", "shutil.rmtree"): 1,
    ("cnnzoo/data/shard_output.py", "StagedFolder.__exit__", "shutil.rmtree"): 1,
    ("cnnzoo/data/shard_output.py", "StagedFolder._put_in_place", "os.replace"): 3,
    ("cnnzoo/data/shard_output.py", "StagedFolder._put_in_place", "shutil.rmtree"): 1,
    ("cnnzoo/deploy/formats.py", "_write_onnx", ".export"): 1,
    ("cnnzoo/deploy/formats.py", "_write_onnx", ".save"): 1,
    ("cnnzoo/deploy/formats.py", "_write_tflite", ".export"): 1,
    ("cnnzoo/deploy/formats.py", "_write_tflite", ".write_model"): 1,
    ("cnnzoo/deploy/formats.py", "_write_torchscript", ".save"): 1,
    ("cnnzoo/deploy/openvino_export.py", "save_ir", ".save_model"): 1,
    ("cnnzoo/deploy/openvino_export.py", "save_ir", "shutil.copyfile"): 2,
    ("cnnzoo/deploy/quantize.py", "write_metadata", ".save"): 1,
    ("cnnzoo/inference/tflite.py", "native_output_hidden", "open"): 1,
    ("cnnzoo/pages.py", "array_png", ".save"): 1,
    ("cnnzoo/pages.py", "figure_png", ".savefig"): 1,
    ("cnnzoo/plots.py", "save_figure", ".savefig"): 1,
    ("cnnzoo/runs.py", "clean_stale_temporaries", ".unlink"): 1,
    ("cnnzoo/runs.py", "point_latest", ".unlink"): 3,
    ("cnnzoo/runs.py", "point_latest", ".write_text"): 1,
    ("cnnzoo/runs.py", "point_latest", "os.replace"): 1,
    ("cnnzoo/runs.py", "point_latest", "os.symlink"): 1,
    ("cnnzoo/runtime/distributed.py", "record_run_dir", ".write_text"): 1,
    ("cnnzoo/training/tracking.py", "MLflowLogger._finish", ".write_bytes"): 1,
}


def _open_for_writing(call: ast.Call) -> bool:
    mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
    return mode is not None and not (isinstance(mode, ast.Constant) and set(str(mode.value)) <= set("rbt"))


def _sites(path: Path) -> Counter:
    """(module, enclosing function, call) for each call in ``path`` that deletes, renames or writes."""
    found: Counter = Counter()
    module = path.relative_to(PROJECT).as_posix()

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = f"{scope}.{child.name}" if scope else child.name
            if isinstance(child, ast.Call):
                callee = ast.unparse(child.func)
                if callee in _QUALIFIED:
                    found[(module, scope, callee)] += 1
                elif isinstance(child.func, ast.Attribute) and child.func.attr in _METHODS:
                    if not callee.startswith(("os.", "shutil.")):
                        found[(module, scope, f".{child.func.attr}")] += 1
                elif callee == "open" and _open_for_writing(child):
                    found[(module, scope, "open")] += 1
            visit(child, inner)

    visit(ast.parse(path.read_text()), "")
    return found


def test_every_delete_rename_and_write_in_the_package_is_audited():
    """Each call that deletes, renames over or writes a file is one of the audited sites (each a
    row of the table in docs/security.md): a new one fails here until it is looked at."""
    found: Counter = Counter()
    for path in sorted((PROJECT / "cnnzoo").rglob("*.py")):
        found += _sites(path)
    unaudited = {site: n for site, n in found.items() if AUDITED.get(site) != n}
    gone = {site: n for site, n in AUDITED.items() if found.get(site) != n}
    assert not unaudited and not gone, f"new or changed sites: {unaudited}; audited sites no longer there: {gone}"
    table = (PROJECT / "docs" / "security.md").read_text()
    missing = {f"{module}: {function}" for module, function, _ in AUDITED if f"`{function}`" not in table}
    assert not missing, f"docs/security.md's table lacks {missing}"
