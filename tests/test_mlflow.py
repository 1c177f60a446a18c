"""MLflow tracking (issue 21, part 3): ``train.loggers: [csv, mlflow]`` against a real ``mlflow server``
(started here on a free loopback port, SQLite backend store) and a file store, read back with
``MlflowClient``; a server killed mid-run costs one warning and no epoch of metrics.csv."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

import cnnzoo
from cnnzoo.errors import ConfigError
from cnnzoo.training import tracking

from servelib import free_port
from support.cli import run_cnnzoo, run_script
from support.runs import metric_rows, tiny_config

ROOT = Path(__file__).resolve().parents[1]
mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402  (after the skip)


def test_the_config_flattens_to_dotted_parameters():
    flat = tracking.flatten({"train": {"lr": 0.01, "loggers": ["csv", "mlflow"]}, "name": None, "seed": 3})
    assert flat == {"train.lr": "0.01", "train.loggers": '["csv", "mlflow"]', "name": "None", "seed": "3"}
    assert len(tracking.flatten({"long": "x" * 10_000})["long"]) == tracking.MAX_PARAM_LENGTH


def test_the_tracking_uri_is_mlflows_own_or_runs_mlruns(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path / "runs") == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert tracking.artifact_location(tmp_path / "runs") == (tmp_path / "runs" / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri(tmp_path / "runs") == "http://127.0.0.1:5999"
    assert tracking.artifact_location(tmp_path / "runs") is None


def test_mlflow_missing_is_one_config_error(monkeypatch, tmp_path, image_root):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` meets when not installed
    with pytest.raises(
        ConfigError, match=r"train.loggers: mlflow needs the mlflow package; pip install 'cnnzoo\[mlflow\]'"
    ):
        cnnzoo.train(tiny_config(image_root, loggers=["csv", "mlflow"]), out=tmp_path / "runs", quiet=True)
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made


def _read_back(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def _assert_run_matches(client: MlflowClient, mlrun, run_dir: Path) -> None:
    """Parameters, every metrics.csv column per epoch, the files, a finished status."""
    assert mlrun.info.status == "FINISHED"
    assert mlrun.info.run_name == f"{run_dir.parent.name}/{run_dir.name}"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert mlrun.data.params["train.lr"] == str(config["train"]["lr"])
    assert mlrun.data.params["model.layers"].startswith('[{"conv"')
    rows = metric_rows(run_dir, timing=True)
    for column in rows[0]:
        history = client.get_metric_history(mlrun.info.run_id, column)
        expected = [(int(r["epoch"]), float(r[column])) for r in rows if r[column] != ""]
        got = sorted((m.step, m.value) for m in history)
        assert [s for s, _ in got] == [s for s, _ in expected], column
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-5, abs=1e-6), column
    names = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert names == {"config.yaml", "history.png", "best.pt", "confusion_matrix.png"}


@pytest.mark.slow
def test_by_default_an_sqlite_store_beside_the_run_folders(monkeypatch, tmp_path, image_root):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = Path(cnnzoo.train(tiny_config(image_root, loggers=["csv", "mlflow"]), out=tmp_path / "runs", quiet=True))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (mlrun,) = _read_back(client, "tiny")
    _assert_run_matches(client, mlrun, run_dir)
    local = Path(client.download_artifacts(mlrun.info.run_id, "best.pt", str(tmp_path / "down")))
    assert local.read_bytes() == (run_dir / "best.pt").read_bytes()
    assert (tmp_path / "runs" / "mlartifacts").is_dir()


@pytest.mark.slow
def test_a_file_store_named_by_mlflow_tracking_uri(monkeypatch, tmp_path, image_root):
    store = tmp_path / "elsewhere" / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store for those who ask
    run_dir = Path(cnnzoo.train(tiny_config(image_root, loggers=["csv", "mlflow"]), out=tmp_path / "runs", quiet=True))
    client = MlflowClient(tracking_uri=store.as_uri())
    (mlrun,) = _read_back(client, "tiny")
    _assert_run_matches(client, mlrun, run_dir)
    assert not (tmp_path / "runs" / "mlflow.db").exists()


class MlflowServer:
    """``mlflow server`` on a free loopback port, SQLite backend store, artifacts served from a folder."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        folder.mkdir(parents=True, exist_ok=True)
        command = [
            *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port)),
            *("--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"),
            *("--artifacts-destination", str(folder / "artifacts"), "--workers", "1"),
        ]
        self.log = open(folder / "server.log", "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(folder / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("mlflow server did not answer /health within 120 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the server's own workers with it
            self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the tests that keep it (it takes ~30 s to start on this machine)."""
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    yield srv
    srv.stop()


@pytest.mark.slow
def test_a_tracking_server_with_sqlite_gets_the_run_and_registers_best_pt(server, monkeypatch, tmp_path, image_root):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    config = tiny_config(image_root, loggers=["csv", "mlflow"], mlflow_register="tiny-classifier")
    run_dir = Path(cnnzoo.train(config, out=tmp_path / "runs", quiet=True))
    client = MlflowClient(tracking_uri=server.url)
    (mlrun,) = _read_back(client, "tiny")
    _assert_run_matches(client, mlrun, run_dir)
    (version,) = client.search_model_versions("name='tiny-classifier'")
    assert version.run_id == mlrun.info.run_id and version.source.endswith("/best.pt")
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # the environment's URI, not the default


@pytest.mark.slow
def test_a_sweep_logs_every_run_into_one_experiment(server, monkeypatch, tmp_path, image_root):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(image_root, epochs=1, loggers=["csv", "mlflow"])))
    cnnzoo_sweep = __import__("cnnzoo.training.sweep", fromlist=["sweep"]).sweep
    cnnzoo_sweep(config, ["train.lr=0.02,0.005"], runs_root=tmp_path / "runs")
    runs = _read_back(MlflowClient(tracking_uri=server.url), "tiny-sweep")
    assert sorted(r.data.params["train.lr"] for r in runs) == ["0.005", "0.02"]
    assert sorted(r.info.run_name for r in runs) == ["tiny-sweep/1", "tiny-sweep/2"]


@pytest.mark.slow
def test_a_server_that_goes_away_mid_run_costs_one_warning_and_no_epoch(monkeypatch, tmp_path, image_root, capfd):
    server = MlflowServer(tmp_path / "server")  # its own: this test kills it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    real_epoch_end = tracking.MLflowLogger.epoch_end

    def epoch_end_then_kill(self, end):  # the real logger; the server dies for real after epoch 1
        real_epoch_end(self, end)
        if end.epoch == 1:
            server.stop()

    monkeypatch.setattr(tracking.MLflowLogger, "epoch_end", epoch_end_then_kill)
    try:
        config = tiny_config(image_root, epochs=4, loggers=["csv", "mlflow"])
        run_dir = Path(cnnzoo.train(config, out=tmp_path / "runs", quiet=True))
    finally:
        server.stop()
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning: mlflow")]
    assert len(warnings) == 1, warnings
    assert "logging epoch 2 failed" in warnings[0] and "training goes on" in warnings[0]
    assert [r["epoch"] for r in metric_rows(run_dir)] == ["1", "2", "3", "4"]
    assert (run_dir / "best.pt").is_file() and (run_dir / "last.pt").is_file()


@pytest.mark.slow
def test_two_processes_log_one_run_and_a_resume_continues_it(monkeypatch, tmp_path, image_root):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_config(image_root, loggers=["csv", "mlflow"])))
    done = run_cnnzoo(["train", "-c", "tiny.yaml", "--nproc", "2", "--runs", "runs"], tmp_path, timeout=400)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("mlflow: logging to") == 1  # rank 0 alone
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (mlrun,) = _read_back(client, "tiny")
    run_dir = tmp_path / "runs" / "tiny" / "1"
    _assert_run_matches(client, mlrun, run_dir)

    # the resume in this process (a process other than the two that trained): the same code as `cnnzoo train --resume`
    monkeypatch.chdir(tmp_path)
    cnnzoo.train(resume=run_dir / "last.pt", overrides=["train.epochs=3"], quiet=True)
    (resumed,) = _read_back(client, "tiny")
    assert resumed.info.run_id == mlrun.info.run_id and resumed.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(mlrun.info.run_id, "val_acc")) == [1, 2, 3]


@pytest.mark.slow
def test_bench_mlflow_replays_a_finished_run(monkeypatch, tmp_path, image_root):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = cnnzoo.train(tiny_config(image_root), out=tmp_path / "runs", quiet=True)
    out = run_script([ROOT / "scripts" / "bench_mlflow.py", "--run", run_dir, "--repeat", 1], tmp_path)
    assert "per epoch: mlflow" in out and "metrics.csv" in out and "close (four files uploaded)" in out
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # the replay writes to a scratch store only


@pytest.mark.slow
def test_a_tracking_uri_mlflow_cannot_use_is_one_warning_and_the_run_trains(monkeypatch, tmp_path, image_root, capfd):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://somewhere")
    run_dir = Path(cnnzoo.train(tiny_config(image_root, loggers=["csv", "mlflow"]), out=tmp_path / "runs", quiet=True))
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning: mlflow")]
    assert len(warnings) == 1 and "starting the run failed at nosuchscheme://somewhere" in warnings[0], warnings
    assert [r["epoch"] for r in metric_rows(run_dir)] == ["1", "2"]
    assert not (run_dir / "mlflow.json").exists()


def test_artifacts_go_beside_a_database_store_never_into_the_working_folder(monkeypatch, tmp_path):
    runs = tmp_path / "runs"
    for uri, where in [
        (f"sqlite:///{tmp_path / 'store' / 'x.db'}", (tmp_path / "store" / "mlartifacts").as_uri()),
        ("sqlite:///:memory:", (runs / "mlartifacts").as_uri()),
        ("postgresql+psycopg2://user@db.example/mlflow", (runs / "mlartifacts").as_uri()),
        ("http://127.0.0.1:5999", None),  # the server's own artifact root
        ((tmp_path / "mlruns").as_uri(), None),  # a file store keeps them in its own folder
    ]:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert tracking.artifact_location(runs) == where, uri


@pytest.mark.slow
def test_an_sqlite_store_named_by_mlflow_tracking_uri_keeps_the_files_beside_it(monkeypatch, tmp_path, image_root):
    """MLflow's SQLAlchemy stores default to ./mlruns of the working folder: best.pt, config.yaml
    and the PNGs landed wherever training was started from, outside --runs and the store."""
    store = tmp_path / "store" / "tracking.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    run_dir = Path(cnnzoo.train(tiny_config(image_root, loggers=["csv", "mlflow"]), out=tmp_path / "runs", quiet=True))
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    (mlrun,) = _read_back(client, "tiny")
    _assert_run_matches(client, mlrun, run_dir)
    assert not (tmp_path / "work" / "mlruns").exists()
    assert list(tmp_path.joinpath("work").iterdir()) == []
    files = tmp_path / "store" / "mlartifacts"
    assert mlrun.info.artifact_uri.startswith(files.as_uri())
    (best,) = files.rglob("best.pt")
    assert best.read_bytes() == (run_dir / "best.pt").read_bytes()


@pytest.mark.slow
def test_a_resume_logs_the_epochs_the_mlflow_run_missed(monkeypatch, tmp_path, image_root):
    """A kill -9 between a checkpoint and its MLflow call left the MLflow run without that epoch
    (steps 1, 3 while metrics.csv had 1-3); the resumed run logs it from metrics.csv."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    real_log_epoch = tracking.MLflowLogger._log_epoch

    def lose_epoch_2(self, end):  # what the kill left: epoch 2 checkpointed, never sent
        if end.epoch != 2:
            real_log_epoch(self, end)

    with monkeypatch.context() as patch:
        patch.setattr(tracking.MLflowLogger, "_log_epoch", lose_epoch_2)
        config = tiny_config(image_root, epochs=3, loggers=["csv", "mlflow"])
        run_dir = Path(cnnzoo.train(config, out=tmp_path / "runs", quiet=True))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (mlrun,) = _read_back(client, "tiny")
    assert sorted(m.step for m in client.get_metric_history(mlrun.info.run_id, "val_acc")) == [1, 3]

    cnnzoo.train(resume=run_dir / "last.pt", overrides=["train.epochs=4"], quiet=True)
    (resumed,) = _read_back(client, "tiny")
    assert resumed.info.run_id == mlrun.info.run_id
    _assert_run_matches(client, resumed, run_dir)  # every metrics.csv column at steps 1-4, values equal
