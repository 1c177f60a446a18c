"""Remote data through fsspec, against real servers on 127.0.0.1 (``tests/s3_server.py``): moto's
S3 server with IAM checks on, a fault-injecting proxy in front of it, and Python's HTTP server.

Shards stream from ``s3://`` and train to the same metrics as the same shards on disk (two
processes through torchrun); a 503 and a connection cut mid-shard are retried with one warning
each; a missing key, a bucket that does not exist, a wrong secret, an unknown scheme and a missing
extra are one line each; manifests name their images by key or by http URL; ``data shards``
writes to a bucket; ``runs sync`` keeps a run off the node and brings it back to resume; the
credentials never reach the run folder or the output.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import cnnzoo as cnnzoo_api
from cnnzoo.config import load_config
from cnnzoo.data import remote, remote_images, shard_export
from cnnzoo.data.sources import load_data

from support.cli import invoke_cnnzoo, one_error_line, run_cnnzoo
from support.images import make_image_tree
from support.runs import metric_rows, tiny_config
from support.s3_server import S3, free_port, moto_server, start_proxy, start_s3, wait_for

pytest.importorskip("s3fs")
pytest.importorskip("boto3")
pytest.importorskip("webdataset")
if moto_server() is None:
    pytest.skip("moto's server is not installed (pip install 'moto[server]')", allow_module_level=True)

BUCKET = "data"


@pytest.fixture(scope="module")
def s3() -> S3:
    server = start_s3()
    try:
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.stop()


def upload(s3: S3, folder: Path, prefix: str) -> None:
    client = s3.client()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")


@pytest.fixture(scope="module")
def shard_set(s3, tmp_path_factory) -> Path:
    """34 training and 11 validation images in shards of 5, on disk and at s3://data/set."""
    base = tmp_path_factory.mktemp("remote")
    make_image_tree(base / "images", train={"a": 21, "b": 13}, validation={"a": 7, "b": 4})
    cfg = load_config({"data": {"root": str(base / "images"), "image_size": 16}})
    shard_export.write_source(cfg, base / "shards", shard_size=5)
    upload(s3, base / "shards", "set")
    return base / "shards"


def cnnzoo(s3: S3, args: list, cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return run_cnnzoo(args, cwd, timeout=timeout, **{**s3.env, **env})


def secrets_absent(s3: S3, *texts: str, folder: Path | None = None) -> None:
    """Neither the access key nor the secret is in ``texts`` or any file under ``folder``."""
    secrets = [s3.env["AWS_ACCESS_KEY_ID"], s3.env["AWS_SECRET_ACCESS_KEY"]]
    for text in texts:
        assert not any(s in text for s in secrets)
    for path in folder.rglob("*") if folder else []:
        if path.is_file():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in secrets), path


# ------------------------------------------------------------------------------------ shards


def test_data_check_streams_the_shards_from_the_bucket(s3, shard_set, tmp_path):
    done = cnnzoo(s3, ["data", "check", "--data", f"s3://{BUCKET}/set", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["data"] == f"s3://{BUCKET}/set"
    assert report["counts"] == {"train": [21, 13], "validation": [7, 4]}
    secrets_absent(s3, done.stdout, done.stderr)


def test_the_python_api_reads_the_bucket_through_the_standard_variables(s3, shard_set, monkeypatch):
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    spec = load_data(load_config({"data": {"root": f"s3://{BUCKET}/set", "image_size": 16}}))
    assert spec.classes == ["a", "b"] and spec.root == f"s3://{BUCKET}/set"
    assert spec.train.shards[0] == f"s3://{BUCKET}/set/train/train-000000.tar" and len(spec.train) == 34
    assert remote.exists(f"s3://{BUCKET}/set/dataset.json")
    assert not remote.exists(f"s3://{BUCKET}/set/nothing.json")


def test_the_python_api_writes_shards_to_the_bucket_and_syncs_a_folder_both_ways(s3, shard_set, tmp_path, monkeypatch):
    import cnnzoo

    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    cfg = cnnzoo.load_config({"data": {"root": str(shard_set.parent / "images"), "image_size": 16}})
    index = cnnzoo.write_shards(cfg, f"s3://{BUCKET}/api-set", shard_size=20)
    assert load_data(load_config({"data": {"root": f"s3://{BUCKET}/api-set", "image_size": 16}})).classes == ["a", "b"]
    assert sum(index["splits"]["train"]["counts"]) == 34
    folder = tmp_path / "run"
    (folder / "sub").mkdir(parents=True)
    (folder / "last.pt").write_bytes(b"weights")
    (folder / "sub" / "metrics.csv").write_text("epoch\n1\n")
    assert cnnzoo.sync_run(folder, f"s3://{BUCKET}/api-run") == 2
    assert cnnzoo.sync_run(f"s3://{BUCKET}/api-run", tmp_path / "back") == 2
    assert (tmp_path / "back" / "sub" / "metrics.csv").read_text() == "epoch\n1\n"


@pytest.mark.slow
def test_two_processes_train_from_s3_to_the_metrics_of_the_same_shards_on_disk(s3, shard_set, tmp_path, monkeypatch):
    """torchrun, 2 gloo processes, 2 loader workers each: the same steps per rank, and the same
    metrics, epoch by epoch, as the run that reads the shards from disk."""
    runs = {}
    for name, root in (("disk", str(shard_set)), ("s3", f"s3://{BUCKET}/set")):
        raw = tiny_config(Path("."), batch_size=4)
        raw["data"].update({"root": root, "workers": 2})
        del raw["data"]["cache"]
        raw["train"]["ddp_timeout"] = 60
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({**raw, "name": name}))
        done = cnnzoo(s3, ["train", "-c", f"{name}.yaml", "--nproc", "2", "--runs", "runs"], tmp_path, timeout=400)
        assert done.returncode == 0, done.stderr
        assert "4 steps of 4 per epoch on each of 2 processes" in done.stdout  # 34 // (2 * 4)
        runs[name] = (tmp_path / "runs" / name / "1", done)
    rows = {
        name: [(r["epoch"], r["val_acc"], r["val_loss"]) for r in metric_rows(run)] for name, (run, _) in runs.items()
    }
    assert rows["s3"] == rows["disk"]
    run, done = runs["s3"]
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["root"] == f"s3://{BUCKET}/set"
    for key, value in s3.env.items():  # the Python API reads the bucket from the same variables
        monkeypatch.setenv(key, value)
    report = cnnzoo_api.evaluate(run / "last.pt", split="validation", progress=False, html_report=False)
    assert report["accuracy"] == pytest.approx(float(metric_rows(run)[-1]["val_acc"]), abs=1e-6)
    secrets_absent(s3, done.stdout, done.stderr, folder=run)


def test_a_503_and_a_cut_connection_mid_shard_are_retried_with_one_warning_each(s3, shard_set, tmp_path):
    state = tmp_path / "faults.json"
    state.write_text(json.dumps({"train-000001.tar": "503", "train-000002.tar": "cut"}))
    proxy, process = start_proxy(s3.endpoint, state)
    try:
        args = ["data", "check", "--data", f"s3://{BUCKET}/set", "--json"]
        done = cnnzoo(s3, args, tmp_path, AWS_ENDPOINT_URL=proxy)
    finally:
        process.terminate()
        process.wait(10)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"] == {"train": [21, 13], "validation": [7, 4]}  # nothing lost
    injected = (tmp_path / "faults.json.log").read_text().split()
    assert injected[::2] == ["503", "cut"]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, done.stderr
    assert "train-000001.tar" in warnings[0] and "train-000002.tar" in warnings[1]
    assert "Traceback" not in done.stderr


def test_a_shard_missing_from_the_bucket_is_one_line(s3, shard_set, tmp_path):
    upload(s3, shard_set, "gap")
    s3.client().delete_object(Bucket=BUCKET, Key="gap/train/train-000003.tar")
    line = one_error_line(cnnzoo(s3, ["data", "check", "--data", f"s3://{BUCKET}/gap"], tmp_path))
    assert f"s3://{BUCKET}/gap/train/train-000003.tar: not found" in line


@pytest.mark.parametrize(
    "data, env, expected",
    [
        ("s3://no-such-bucket/set", {}, "the bucket 'no-such-bucket' does not exist"),
        (f"s3://{BUCKET}/set", {"AWS_SECRET_ACCESS_KEY": "wrong"}, "access denied"),
        (f"s3://{BUCKET}/set", {"AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY0000000"}, "access denied"),
        ("ftp://host/set", {}, "unknown URL scheme 'ftp'"),
        ("gs://bucket/set", {}, "needs gcsfs: pip install 'cnnzoo[gcs]'"),
        (f"s3://{BUCKET}/nothing-here", {}, "holds no WebDataset shard set"),
    ],
)
def test_a_url_that_cannot_be_read_is_one_line(s3, shard_set, tmp_path, data, env, expected):
    if data.startswith("gs://"):
        try:
            import gcsfs  # noqa: F401
        except ImportError:
            pass
        else:
            pytest.skip("gcsfs is installed: the missing-extra line cannot be seen")
    line = one_error_line(cnnzoo(s3, ["data", "check", "--data", data], tmp_path, **env))
    assert expected in line, line
    assert "botocore" not in line and "aiohttp" not in line
    secrets_absent(s3, line)


def test_a_brace_pattern_of_shard_urls_over_http(s3, shard_set, tmp_path):
    """https://host/train-{...}.tar: the shards from a web server (here Python's), validation beside them."""
    served = tmp_path / "www"
    for split in ("train", "validation"):
        for tar in (shard_set / split).glob("*.tar"):
            (served / "shards").mkdir(parents=True, exist_ok=True)
            (served / "shards" / tar.name).write_bytes(tar.read_bytes())
    with http_server(served) as base:
        pattern = f"{base}/shards/train-{{000000..000006}}.tar"
        done = cnnzoo(s3, ["data", "check", "--data", pattern, "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"] == {"train": [21, 13], "validation": [7, 4]}


# ------------------------------------------------------------------------------------ manifests


class http_server:
    """``python -m http.server`` on a free port of 127.0.0.1, serving ``folder``."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()

    def __enter__(self) -> str:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1", "-d", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.port, self.process)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def image_manifest(s3, tmp_path_factory) -> Path:
    """train.csv naming images by key under images/ (one by its full s3:// URL), validation.csv
    beside it: the folder as uploaded to s3://data/man/."""
    base = tmp_path_factory.mktemp("manifest")
    make_image_tree(base / "images", train={"a": 9, "b": 7}, validation={"a": 3, "b": 3})
    for split in ("train", "validation"):
        rows = [
            (p.relative_to(base).as_posix(), p.parent.name) for p in sorted((base / "images" / split).rglob("*.png"))
        ]
        if split == "train":
            rows[0] = (f"s3://{BUCKET}/man/{rows[0][0]}", rows[0][1])
        with open(base / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("image", "label"), *rows])
    upload(s3, base, "man")
    return base


def test_a_manifest_in_the_bucket_names_its_images_by_key(s3, image_manifest, tmp_path):
    done = cnnzoo(s3, ["data", "check", "--data", f"s3://{BUCKET}/man/train.csv", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["counts"] == {"train": [9, 7], "validation": [3, 3]}
    assert report["missing"] == [] and report["unreadable"] == []


def test_a_manifest_row_whose_key_is_missing_is_named(s3, image_manifest, tmp_path):
    """data check lists it; train stops in one line naming it (one listing of the bucket found it)."""
    rows = (image_manifest / "train.csv").read_text().splitlines()
    (tmp_path / "gap.csv").write_text("\n".join([*rows, "images/train/a/nowhere.png,a"]) + "\n")
    s3.client().upload_file(str(tmp_path / "gap.csv"), BUCKET, "man/gap.csv")
    url = f"s3://{BUCKET}/man/gap.csv"
    done = cnnzoo(s3, ["data", "check", "--data", url, "--json"], tmp_path)
    assert done.returncode == 1, done.stderr  # 1: the check found a problem
    assert json.loads(done.stdout)["missing"] == [f"{url} row 18 (images/train/a/nowhere.png)"]
    raw = tiny_config(Path("."))
    raw["data"]["root"] = url
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    line = one_error_line(invoke_cnnzoo(["train", "-c", "c.yaml", "--runs", "runs"], tmp_path, **s3.env))
    assert f"{url}: 1 of 17 images not found: row 18 (images/train/a/nowhere.png)" in line, line
    assert f"looked in s3://{BUCKET}/man/ and s3://{BUCKET}/man/images/" in line


def test_a_manifest_of_http_urls(s3, image_manifest, tmp_path):
    """A manifest served over http whose cells are relative names (resolved against its URL) and
    one absolute http URL."""
    with http_server(image_manifest) as base:
        rows = list(csv.reader(open(image_manifest / "train.csv")))
        rows[1][0] = rows[1][0].replace(f"s3://{BUCKET}/man", base)  # the s3 row as an http URL
        rows[2][0] = f"{base}/{rows[2][0]}"
        with open(image_manifest / "http.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
        done = cnnzoo(
            s3, ["data", "check", "--data", f"{base}/http.csv", "--set", "data.val_fraction=0.25", "--json"], tmp_path
        )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert sum(report["counts"]["train"]) + sum(report["counts"]["validation"]) == 16
    assert report["unreadable"] == []


@pytest.mark.slow
def test_training_on_a_bucket_manifest_fetches_in_the_workers_through_a_capped_cache(s3, image_manifest, tmp_path):
    raw = tiny_config(Path("."), epochs=1)
    raw["data"].update({"root": f"s3://{BUCKET}/man/train.csv", "workers": 2, "cache": "none", "remote_cache": 1e-5})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    home = tmp_path / "home"
    done = cnnzoo(s3, ["train", "-c", "c.yaml", "--runs", "runs"], tmp_path, CNNZOO_HOME=str(home))
    assert done.returncode == 0, done.stderr
    cached = [p for p in (home / "cache" / "remote" / "images").rglob("*") if p.is_file()]
    assert cached and sum(p.stat().st_size for p in cached) <= 1e-5 * 2**30  # ~10 KiB: trimmed as it filled
    secrets_absent(s3, done.stdout, done.stderr, folder=tmp_path / "runs")


def test_the_image_cache_keeps_under_its_cap_removing_the_least_recently_used(tmp_path):
    cache = remote_images.ImageCache(tmp_path, cap=1000)
    for i in range(4):
        cache.put(f"s3://b/{i}", bytes(300))
        os.utime(cache.path(f"s3://b/{i}"), (time.time() - 100 + i, time.time() - 100 + i))
    assert cache.get("s3://b/0") is None  # the oldest went when the fourth passed 1000 bytes
    assert all(cache.get(f"s3://b/{i}") == bytes(300) for i in (1, 2, 3))
    cache.put("s3://b/4", bytes(300))  # 1 was used least recently (2, 3 read after it... all read now: 1 first)
    kept = sorted(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert sum(kept) <= 1000 and cache.get("s3://b/4") == bytes(300)
    cache.put("s3://b/big", bytes(2000))  # larger than the cap: fetched, never kept
    assert cache.get("s3://b/big") is None


# ------------------------------------------------------------------------------------ writing


def test_data_shards_writes_to_a_bucket_and_force_replaces_only_a_set_cnnzoo_wrote(s3, shard_set, tmp_path):
    images = shard_set.parent / "images"
    out = f"s3://{BUCKET}/written"
    args = ["data", "shards", str(images), out, "--shard-size", "10", "--set", "data.image_size=16"]
    done = cnnzoo(s3, args, tmp_path)
    assert done.returncode == 0, done.stderr
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET, Prefix="written/")["Contents"]}
    assert {
        "written/dataset.json",
        "written/train/train-000003.tar",
        "written/validation/validation-000001.tar",
    } <= keys
    check = cnnzoo(s3, ["data", "check", "--data", out, "--json"], tmp_path)
    assert json.loads(check.stdout)["counts"] == {"train": [21, 13], "validation": [7, 4]}
    assert "already holds" in one_error_line(cnnzoo(s3, args, tmp_path))
    smaller = [*args[:-4], "--shard-size", "40", *args[-2:], "--force"]
    assert cnnzoo(s3, smaller, tmp_path).returncode == 0
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET, Prefix="written/")["Contents"]}
    assert "written/train/train-000003.tar" not in keys and "written/train/train-000000.tar" in keys  # old ones gone
    s3.client().put_object(Bucket=BUCKET, Key="written/notes.txt", Body=b"mine")
    assert "not replaced, even with --force" in one_error_line(cnnzoo(s3, [*args, "--force"], tmp_path))


@pytest.mark.slow
def test_a_run_synced_to_the_bucket_resumes_on_another_node(s3, shard_set, tmp_path):
    raw = tiny_config(shard_set, epochs=1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    trained = invoke_cnnzoo(["train", "-c", "c.yaml", "--runs", "runs"], tmp_path)  # on this node, from disk
    assert trained.exit_code == 0, trained.output
    url = f"s3://{BUCKET}/runs/tiny/1"
    up = cnnzoo(s3, ["runs", "sync", "runs/tiny/1", url], tmp_path)
    assert up.returncode == 0 and "copied" in up.stdout, up.stderr
    node = tmp_path / "other-node"
    node.mkdir()
    down = cnnzoo(s3, ["runs", "sync", url, "runs/tiny/1"], node)
    assert down.returncode == 0, down.stderr
    assert (node / "runs/tiny/1/last.pt").read_bytes() == (tmp_path / "runs/tiny/1/last.pt").read_bytes()
    resumed = cnnzoo(s3, ["train", "--resume", "runs/tiny/1/last.pt", "--set", "train.epochs=2"], node)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["epoch"] for r in metric_rows(node / "runs/tiny/1")] == ["1", "2"]
    assert "give one local folder and one URL" in one_error_line(invoke_cnnzoo(["runs", "sync", "a", "b"], tmp_path))
