"""Helpers shared by test_predict.py, test_evaluate.py, test_cli.py, test_serve.py and test_hostile.py.

* :func:`train_run` trains ``conftest.tiny_config`` for real (about a second) into its own
  folder, with CNNZOO_HOME pointed into that folder (module-scoped fixtures run before
  conftest's function-scoped ``isolated_home``).
* :func:`run_cnnzoo` runs the installed ``cnnzoo`` script as a real subprocess.
* :func:`one_error_line` checks the CLI's contract for user errors: exactly one line on
  stderr, starting ``cnnzoo: error:``, and no traceback.
* :class:`Server` runs ``cnnzoo serve`` as a real subprocess on a free loopback port and
  talks to it over HTTP (test_serve.py, the request fuzz in test_hostile.py, and
  scripts/bench_serve_hostile.py); :func:`png_claiming` makes a decompression bomb's header.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_config

_BIN = Path(sys.executable).with_name("cnnzoo")
CNNZOO = str(_BIN) if _BIN.exists() else (shutil.which("cnnzoo") or "cnnzoo")
PROJECT = Path(__file__).resolve().parents[1]
CONFIGS = PROJECT / "configs"


@dataclass
class TrainedRun:
    base: Path  # holds runs/ (so cwd=base makes runs/latest the default checkpoint)
    root: Path  # the data the model was trained on
    run_dir: Path

    @property
    def best(self) -> Path:
        return self.run_dir / "best.pt"


def train_run(
    base: Path, make_data: Callable[[Path], Path], edit: Callable[[dict], None] | None = None, **train: Any
) -> TrainedRun:
    """Write data with ``make_data(base)``, train tiny_config on it into ``base/runs``."""
    from cnnzoo.training.run import train as run_training

    root = make_data(base)
    cfg = tiny_config(root, **train)
    if edit is not None:
        edit(cfg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNZOO_HOME", str(base / "home"))
        run_dir = run_training(cfg, out=base / "runs", quiet=True)
    return TrainedRun(base, root, Path(run_dir))


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)  # CNNZOO_HOME is the test's isolated one (conftest's autouse fixture)
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "120", "PYTHONWARNINGS": "ignore"})
    return env


def run_cnnzoo(args: Sequence[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CNNZOO, *map(str, args)], cwd=str(cwd), env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )


def one_error_line(result: subprocess.CompletedProcess | Any, code: int = 2) -> str:
    """The CLI's user-error contract; returns the one line."""
    stderr = result.stderr
    returned = result.returncode if hasattr(result, "returncode") else result.exit_code  # CliRunner
    assert returned == code, f"exit code {returned}, stderr was:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip("\n").splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("cnnzoo: error:"), lines[0]
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path, cwd: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cnnzoo", "serve", str(model), "--port", str(self.port), *extra],
            cwd=cwd,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {self.process.communicate()}")
            time.sleep(0.1)

    def request(
        self, path: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None
    ) -> tuple[int, object]:
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def get(self, path: str):
        return self.request(path)

    def post_image(self, path: str, data: bytes, query: str = ""):
        return self.request(f"/predict{query}", data, {"Content-Type": "application/octet-stream"})

    def post_files(self, files: list[tuple[str, bytes]], query: str = ""):
        boundary = uuid.uuid4().hex
        body = b""
        for name, data in files:
            body += (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                    f"Content-Type: image/jpeg\r\n\r\n"
                ).encode()
                + data
                + b"\r\n"
            )
        body += f"--{boundary}--\r\n".encode()
        return self.request(f"/predict{query}", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def proc(self, field: str) -> int:
        """A number from the server's /proc/<pid>/status (VmRSS, VmHWM: kB) or /proc/<pid>/io
        (wchar: bytes handed to write(), files and sockets alike)."""
        for name in ("status", "io"):
            for line in Path(f"/proc/{self.process.pid}/{name}").read_text().splitlines():
                key, _, value = line.partition(":")
                if key == field:
                    return int(value.split()[0])
        raise KeyError(field)

    def stream(
        self, head: bytes, chunks: int, content_type: str, chunk: bytes = b"\0" * 2**20
    ) -> tuple[int, tuple[int, Any]]:
        """POST /predict with a chunked body (no Content-Length): ``head``, then up to ``chunks``
        chunks, stopping as soon as the server answers or closes. Returns (bytes sent, (status, JSON))."""
        sent, answer = 0, b""
        with socket.create_connection(("127.0.0.1", self.port), timeout=60) as conn:
            conn.sendall(
                f"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
                f"Transfer-Encoding: chunked\r\n\r\n".encode()
            )
            try:
                for data in ([head] if head else []) + [chunk] * chunks:  # an empty chunk would end the body
                    conn.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    sent += len(data)
                    conn.settimeout(0)
                    try:
                        answer = conn.recv(65536)
                    except BlockingIOError:
                        pass
                    conn.settimeout(60)
                    if answer:
                        break
                else:
                    conn.sendall(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            conn.settimeout(60)
            return sent, _read_response(conn, answer)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _read_response(conn: socket.socket, answer: bytes) -> tuple[int, Any]:
    """Read an HTTP response to its Content-Length; returns (status, parsed JSON body)."""
    while b"\r\n\r\n" not in answer:
        more = conn.recv(65536)
        if not more:
            raise ConnectionError(f"no complete answer: {answer[:200]!r}")
        answer += more
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        more = conn.recv(65536)
        if not more:
            break
        body += more
    return int(head.split()[1]), json.loads(body)


def png_claiming(width: int, height: int, mode: str = "L") -> bytes:
    """A 4x4 PNG whose header claims ``width`` x ``height``: what a decompression bomb's header says."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (4, 4)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)
