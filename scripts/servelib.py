"""A real ``cnnzoo serve`` in a subprocess on a free loopback port, and the requests sent to it:
what scripts/bench_serve_hostile.py measures and what the tests of serve check (they import it
from here: scripts/ is on pytest's path; scripts never import from tests/).

The server is the ``cnnzoo`` of the checkout this file is in, run as ``python -m cnnzoo``.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def server_env() -> dict[str, str]:
    """This environment with plain output and the checkout's cnnzoo first on the path."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "PYTHONWARNINGS": "ignore", "PYTHONPATH": path}


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
            env=server_env(),
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
