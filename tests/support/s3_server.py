"""Real servers for the remote-data tests: moto's S3 server (``moto_server``) and a fault-injecting
HTTP proxy in front of it, each a separate process on 127.0.0.1.

moto runs with its IAM checks on (``INITIAL_NO_AUTH_ACTION_COUNT``: the first few requests create a
user and its access key; every request after them must be signed with that key), so wrong
credentials are refused as AWS refuses them. :func:`start_s3` returns the endpoint and the
environment (``AWS_ENDPOINT_URL``, the key, the region) a cnnzoo subprocess reads them from.

The proxy (``python tests/support/s3_server.py proxy PORT UPSTREAM_PORT STATE_FILE``) forwards every
request to moto, except that for a key named in its state file it answers the first GET with a 503
(``"503"``) or cuts the connection half-way through the body (``"cut"``), once each.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_SETUP_REQUESTS = 3  # create_user, put_user_policy, create_access_key: unsigned; all later ones are checked
_ADMIN = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'


def moto_server() -> str | None:
    """The moto_server command beside this Python, or on PATH; None when moto is not installed."""
    beside = Path(sys.executable).with_name("moto_server")
    return str(beside) if beside.is_file() else shutil.which("moto_server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited ({process.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start in {timeout:.0f} s")


@dataclass
class S3:
    endpoint: str
    process: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)  # what a cnnzoo subprocess needs to reach it

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_s3() -> S3:
    """moto's S3 server on a free port of 127.0.0.1 with one IAM user whose key the env holds."""
    import boto3

    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_SETUP_REQUESTS)}
    process = subprocess.Popen(
        [moto_server(), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for(port, process)
        iam = boto3.client(
            "iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="x"
        )
        iam.create_user(UserName="cnnzoo-tests")
        iam.put_user_policy(UserName="cnnzoo-tests", PolicyName="all", PolicyDocument=_ADMIN)
        key = iam.create_access_key(UserName="cnnzoo-tests")["AccessKey"]
    except BaseException:
        process.kill()
        raise
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return S3(endpoint=endpoint, process=process, env=env)


def start_proxy(upstream: str, state: Path) -> tuple[str, subprocess.Popen]:
    """The fault-injecting proxy (this file run as a script) in front of ``upstream``."""
    port = free_port()
    up_port = upstream.rsplit(":", 1)[1]
    process = subprocess.Popen(
        [sys.executable, __file__, "proxy", str(port), up_port, str(state)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(port, process)
    return f"http://127.0.0.1:{port}", process


# ------------------------------------------------------------------------------------- the proxy


class _Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream_port = 0
    state_file = Path()

    def log_message(self, *args) -> None:  # quiet
        pass

    def _fault(self) -> str | None:
        """The fault to inject for this request, consumed (each happens once per key)."""
        if self.command != "GET":
            return None
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        path = self.path.split("?", 1)[0]
        for key, fault in list(state.items()):
            if path.endswith("/" + key) and fault:
                state[key] = None
                self.state_file.write_text(json.dumps(state))
                with open(str(self.state_file) + ".log", "a") as log:
                    log.write(f"{fault} {path}\n")
                return fault
        return None

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        fault = self._fault()
        if fault == "503":
            payload = b"<Error><Code>ServiceUnavailable</Code><Message>try again</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
        answer = upstream.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        # a HEAD's answer has no body but says the object's length
        self.send_header(
            "Content-Length", answer.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
        )
        self.end_headers()
        if fault == "cut" and len(data) > 2:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


def _serve_proxy(port: int, upstream_port: int, state: str) -> None:
    _Proxy.upstream_port, _Proxy.state_file = upstream_port, Path(state)
    server = ThreadingHTTPServer(("127.0.0.1", port), _Proxy)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "proxy":
        _serve_proxy(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
