#!/usr/bin/env python
"""``cnnzoo serve`` throughput and latency, ONNX against checkpoint, with in-process predict as the baseline.

    python scripts/bench_serve.py [--checkpoint runs/latest/best.pt] [--requests 300] [--clients 8]

For each backend (the checkpoint, and its ONNX export) a real server is started on a
free loopback port; then ``--requests`` single-image POST /predict requests are sent one
after another (latency p50 and p95, requests/s) and again from ``--clients`` threads at
once (requests/s). The baseline is ``model.predict(image)`` in this process, one image
at a time, for the same backend: the ratios say what HTTP and the server add.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, data: bytes) -> float:
    start = time.perf_counter()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
    return time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_server(model: Path, payloads: list[bytes], requests: int, clients: int) -> dict:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cnnzoo", "serve", str(model), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    url = f"http://127.0.0.1:{port}/predict"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                post(url, payloads[0])
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"the server for {model} did not start:\n{server.stderr.read().decode()[-2000:]}")
                time.sleep(0.1)
        for i in range(20):  # warm-up
            post(url, payloads[i % len(payloads)])
        start = time.perf_counter()
        latencies = [post(url, payloads[i % len(payloads)]) for i in range(requests)]
        sequential = requests / (time.perf_counter() - start)
        with ThreadPoolExecutor(max_workers=clients) as pool:
            start = time.perf_counter()
            list(pool.map(lambda i: post(url, payloads[i % len(payloads)]), range(requests)))
            concurrent = requests / (time.perf_counter() - start)
    finally:
        server.terminate()
        server.wait(timeout=15)
    return {
        "p50": statistics.median(latencies),
        "p95": percentile(latencies, 0.95),
        "rps": sequential,
        "rps_concurrent": concurrent,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="default: runs/latest's best.pt")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--images", help="folder of images (default: the checkpoint's validation images)")
    args = parser.parse_args()

    from benchlib import checkpoint_and_images

    from cnnzoo.deploy.export import export
    from cnnzoo.inference import load

    checkpoint, folder, images = checkpoint_and_images(args.checkpoint, args.images)
    images = images[:50]
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export(checkpoint, "onnx", out=Path(tmp) / "model.onnx").path
        payloads = [Path(p).read_bytes() for p in images]
        print(
            f"bench_serve: {checkpoint}, {len(images)} distinct images of {folder}, {args.requests} requests, "
            f"{args.clients} concurrent clients, {os.cpu_count()} cores"
        )
        for name, path in (("checkpoint", checkpoint), ("onnx", onnx_path)):
            model = load(path, device="cpu")
            for p in images[:10]:
                model.predict(p)
            baseline = []
            for i in range(min(args.requests, 200)):
                start = time.perf_counter()
                model.predict(images[i % len(images)])
                baseline.append(time.perf_counter() - start)
            base_p50 = statistics.median(baseline)
            r = bench_server(path, payloads, args.requests, args.clients)
            print(
                f"  {name:<10} server p50 {1000 * r['p50']:.1f} ms, p95 {1000 * r['p95']:.1f} ms, "
                f"{r['rps']:.0f} req/s one at a time, {r['rps_concurrent']:.0f} req/s from {args.clients} clients; "
                f"in-process predict p50 {1000 * base_p50:.1f} ms ({1 / base_p50:.0f}/s): "
                f"server p50 / in-process p50 = {r['p50'] / base_p50:.2f}"
            )


if __name__ == "__main__":
    main()
