#!/usr/bin/env python
"""What hostile uploads cost ``cnnzoo serve``: memory and disk, against the same server's quiet state.

    python scripts/bench_serve_hostile.py [--checkpoint runs/latest/best.pt] [--max-bytes 1048576]

A real server (the checkpoint's ONNX export, one worker) is started on a free loopback port and
warmed up with ordinary images; its resident memory then is the baseline. Then, one after another:

1. a chunked multipart upload of 300 MB with no Content-Length: how much the server read before it
   answered, and how many bytes it wrote (``/proc/PID/io`` wchar: files, the temporary folder);
2. four 124 KB 16-bit 8000x8000 PNGs at once (each about 1.6 GB to decode the plain way): the answers,
   how far the peak (VmHWM) rose above the baseline, and the resident memory once they are answered;
3. a PNG whose header claims 20000x20000 pixels.

Every figure is printed with its ratio to the baseline RSS. Run it from another checkout (e.g. the
main branch) to compare code versions: the server is the ``cnnzoo`` of the tree this script is in.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def png(mode: str, size: tuple[int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="default: runs/latest's best.pt")
    parser.add_argument("--max-bytes", type=int, default=2**20, help="serve --max-bytes")
    args = parser.parse_args()

    from cnnzoo.deploy.export import export
    from cnnzoo.runs import resolve_checkpoint

    from servelib import Server, png_claiming

    checkpoint = resolve_checkpoint(args.checkpoint, "runs")
    with tempfile.TemporaryDirectory() as tmp:
        model = export(checkpoint, "onnx", out=Path(tmp) / "model.onnx").path
        ordinary = png("RGB", (64, 64))
        server = Server(model, ROOT, "--max-bytes", str(args.max_bytes))
        try:
            for _ in range(20):
                server.post_image("/predict", ordinary)
            base = server.proc("VmRSS")
            print(
                f"bench_serve_hostile: {ROOT}, {model.name} of {checkpoint}, --max-bytes {args.max_bytes:,}; "
                f"baseline RSS after 20 ordinary requests: {base / 1024:,.0f} MB"
            )

            def ratio(kb: int) -> str:
                return f"{kb / 1024:,.0f} MB ({kb / base:.2f}x baseline RSS)"

            written = server.proc("wchar")
            head = (
                b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="huge.png"\r\n'
                b"Content-Type: image/png\r\n\r\n"
            )
            start = time.perf_counter()
            sent, (status, answer) = server.stream(head, 300, "multipart/form-data; boundary=XyZ")
            print(
                f"1. chunked multipart, 300 MB offered: HTTP {status} after {sent / 2**20:,.1f} MB sent, "
                f"{time.perf_counter() - start:.1f} s; bytes the server wrote: "
                f"{(server.proc('wchar') - written) / 2**20:,.1f} MB; RSS {ratio(server.proc('VmRSS'))}"
            )

            deep, peak = png("I;16", (8000, 8000)), server.proc("VmHWM")
            with ThreadPoolExecutor(max_workers=4) as pool:
                answers = list(pool.map(lambda _: server.post_image("/predict", deep), range(4)))
            time.sleep(1)
            rose = max(0, server.proc("VmHWM") - max(peak, base))
            print(
                f"2. four {len(deep) / 1024:,.0f} KB 16-bit 8000x8000 PNGs at once: HTTP "
                f"{[s for s, _ in answers]}; peak rose {ratio(rose)}; RSS after {ratio(server.proc('VmRSS'))}"
            )

            status, answer = server.post_image("/predict", png_claiming(20000, 20000))
            error = answer.get("error") if isinstance(answer, dict) else answer
            print(f"3. header claiming 20000x20000: HTTP {status} {error!r}; RSS {ratio(server.proc('VmRSS'))}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
