"""A seeded fuzz of WebDataset shard sets as cnnzoo reads them (issue #28): a small valid set whose
``dataset.json`` fields, label and image members, or tar bytes are changed at random, then loaded
(:func:`cnnzoo.data.sources.load_data`), streamed for training and validation, and checked
(``data check``). Each case must end as a result or a :class:`cnnzoo.errors.UserError` of one
line, never another exception, within a time bound, and nothing named in it may run.
``CNNZOO_FUZZ_CASES`` sets the count (150 by default)."""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from cnnzoo.config import load_config
from cnnzoo.data import shards
from cnnzoo.data.check import check_data
from cnnzoo.data.sources import load_data
from cnnzoo.errors import UserError

from support.shard_sets import png, replace_members, write_shard_set

pytest.importorskip("webdataset")

CASE_SECONDS = 120  # a case that takes longer is a hang (a guard, not a speed figure: generous under load)
MARKER = "FUZZ_RAN"  # what a location that ran as a command would create
VALUES: list[Any] = [
    -1, 0, 1, 2, 3, 2**31, 10**9, 1e300, 1.5, float("nan"), True, False, None, "", "a", "a\x1b[2J",
    [], [1], ["a"], ["a", "a"], {}, {"a": 1}, "x" * 300, f"pipe:touch {MARKER}", "../outside.tar",
    "/etc/passwd", "http://example.com/x.tar", "train/train-000000.tar", "s:1/x.tar",
]  # fmt: skip
LABEL_BYTES = [
    b"", b"abc", b"1.0", b"-1", b"300000000", b"1" * 5000, b"\xff\xfe", b" 1 ", b"2", b"{", b"[" * 50000,
    b'{"label": "b"}', b'{"label": 1.5}', b'{"class": null}', b"null", b"a\x00b", b"0",
]  # fmt: skip


def mutate_index(root: Path, rng: random.Random) -> str:
    path = root / "dataset.json"
    split = rng.choice(["train", "validation"])
    value = rng.choice(VALUES)
    try:
        index = json.loads(path.read_text())
        target, key = rng.choice(
            [
                (index, "format"),
                (index, "classes"),
                (index["classes"], rng.randrange(2)),
                (index["splits"], split),
                (index["splits"], "test"),
                (index["splits"][split], "shards"),
                (index["splits"][split]["shards"], 0),
                (index["splits"][split], "counts"),
                (index["splits"][split]["counts"], 0),
                (index["splits"][split], "class_counts"),
                (index["splits"][split]["class_counts"], rng.randrange(2)),
            ]
        )
        target[key] = value
    except Exception:  # noqa: BLE001 - no index, or one an earlier change reshaped: nothing to change
        return "index: unchanged"
    path.write_text(json.dumps(index))
    return f"index {key!r} = {value!r}"


def mutate_index_bytes(root: Path, rng: random.Random) -> str:
    path = root / "dataset.json"
    data = path.read_bytes() if path.exists() else b""
    if not data:
        return "index bytes: none"
    how = rng.choice(["cut", "flip", "deep", "garbage"])
    if how == "cut":
        data = data[: rng.randrange(len(data))]
    elif how == "flip":
        at = rng.randrange(len(data))
        data = data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :]
    elif how == "deep":
        data = b"[" * 100_000 + b"]" * 100_000
    else:
        data = os.urandom(rng.randrange(1, 2000))
    path.write_bytes(data)
    return f"index bytes: {how}"


def mutate_member(root: Path, rng: random.Random) -> str:
    tar = rng.choice(sorted(root.glob("*/*.tar")))
    victim = f"s{rng.randrange(24):04d}"
    kind = rng.choice(["cls", "png", "txt", "json"])
    new = rng.choice(LABEL_BYTES) if kind != "png" else rng.choice([b"", b"not an image", png("a", 0)[:40]])
    name = f"{victim}.{'cls' if kind in ('txt', 'json') else kind}"  # .txt and .json: the .cls renamed
    try:
        replace_members(tar, lambda member, data: new if member == name else data, rename={name: f"{victim}.{kind}"})
    except (tarfile.TarError, EOFError, OSError):  # an earlier change broke this tar: nothing to change
        return f"{tar.name}: unchanged"
    return f"{tar.name}: {victim}.{kind} = {new[:20]!r}"


def mutate_tar(root: Path, rng: random.Random) -> str:
    tar = rng.choice(sorted(root.glob("*/*.tar")))
    data = tar.read_bytes()
    if not data:
        return f"{tar.name}: unchanged"
    how = rng.choice(["cut", "garbage", "empty", "zeros", "gzip", "overwrite"])
    if how == "cut":
        data = data[: rng.randrange(len(data))]
    elif how == "garbage":
        data = os.urandom(len(data))
    elif how == "empty":
        data = b""
    elif how == "zeros":
        data = b"\0" * 1024
    elif how == "gzip":
        data = gzip.compress(data)
    else:
        at = rng.randrange(len(data))
        data = data[:at] + os.urandom(min(600, len(data) - at)) + data[at + 600 :]
    tar.write_bytes(data)
    return f"{tar.parent.name}/{tar.name}: {how}"


MUTATIONS = [mutate_index, mutate_index_bytes, mutate_member, mutate_member, mutate_tar]


def stream_all(spec: Any) -> int:
    """Every batch of one training epoch and one validation pass; how many images came."""
    got = 0
    for samples, train in ((spec.train, True), (spec.val, False)):
        settings = shards.StreamSettings(size=(16, 16), channels=3, batch_size=4)
        stream = shards.ShardStream(samples, spec.classes, settings, train=train)
        got += sum(len(y) for _, y in shards.StreamLoader(stream, workers=0, pin_memory=False))
    return got


def run_case(root: Path) -> str:
    cfg = load_config({"data": {"root": str(root), "image_size": 16}})
    try:
        spec = load_data(cfg)
    except UserError as exc:
        assert "\n" not in str(exc).strip(), str(exc)
        return "refused at load"
    try:
        stream_all(spec)
        outcome = "streamed"
    except UserError as exc:
        assert "\n" not in str(exc).strip(), str(exc)
        outcome = "refused while streaming"
    report = check_data(cfg)  # whatever streaming refused, the check names (and exits 1 for)
    assert outcome == "streamed" or report["unreadable"], report
    return outcome + (", data check: problems" if report["unreadable"] else ", data check: clean")


def test_fuzzed_shard_sets_load_stream_or_are_refused_in_one_line(tmp_path, capsys):
    cases = int(os.environ.get("CNNZOO_FUZZ_CASES", "150"))
    template = write_shard_set(tmp_path / "template")
    rng = random.Random(20261207)
    outcomes: dict[str, int] = {}
    for case in range(cases):
        root = tmp_path / f"case{case}" / "set"
        shutil.copytree(template, root)
        if rng.random() < 0.25:
            (root / "dataset.json").unlink()  # the tars scanned instead
        changes = [rng.choice(MUTATIONS)(root, rng) for _ in range(rng.choice([1, 1, 2, 3]))]
        os.chdir(root)  # a location that ran would run here
        start = time.perf_counter()
        try:
            outcome = run_case(root)
        except Exception as exc:  # noqa: BLE001 - the point: nothing else may escape
            pytest.fail(f"case {case} {changes}: {type(exc).__name__}: {exc}")
        finally:
            os.chdir(tmp_path)
        assert time.perf_counter() - start < CASE_SECONDS, (case, changes)
        assert not list(tmp_path.rglob(MARKER)), (case, changes)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        shutil.rmtree(root.parent)
    capsys.readouterr()
    with capsys.disabled():
        print(f"\nshard fuzz: {cases} cases: {dict(sorted(outcomes.items()))}")
    assert sum(n for k, n in outcomes.items() if k.startswith("refused")) > cases // 5
    assert sum(n for k, n in outcomes.items() if k.startswith("streamed")) > cases // 10
