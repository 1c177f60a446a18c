"""``cnnzoo serve``: an HTTP service and a web page over any model :func:`cnnzoo.inference.load` reads.

Built on Starlette (routing, requests) and served by uvicorn: a small, well-kept ASGI pair
with no framework beyond what three routes need; multipart uploads are parsed by
python-multipart as they stream in. With an ``.onnx`` model the service never imports torch.

* ``POST /predict``: an image as the request body, or one or more files as a multipart
  upload; ``?top_k=``. Answers the records of ``cnnzoo predict --json``.
* ``GET /health``, ``GET /info`` (classes, input size, model format, limits).
* ``GET /``: a page where a person drops or picks an image and sees the top classes as bars.

A bad request gets a 4xx with ``{"error": "..."}``: no image or a bad ``top_k`` (400), too
large (413), not an image (415); an unreadable multipart form, a boundary over python-multipart's
256 bytes included, is a 400. A client that leaves before its body is complete costs one line in
the server's log. What one request may cost is bounded before it is spent:
the body is counted as it arrives and held in memory only (never spooled to disk), up to
``--max-bytes``; an image's decoding memory is estimated from its header
(:func:`cnnzoo.data.preprocess.decode_bytes`) and refused past :data:`DECODE_MEMORY`, and all
decodes in flight share that budget, in a few threads. The network runs one batch at a
time, which keeps every core on one forward pass instead of splitting them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import logging
import os
import re
import socket
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .. import __version__, runs
from ..data import preprocess
from ..errors import UserError, short_reason
from ..inference import load
from ..inference.classifier import Classifier
from . import DEFAULT_MAX_BYTES

log = logging.getLogger("uvicorn.error")  # uvicorn's own server log: its format and --log-level

MAX_FILES = 32
MAX_FIELD_BYTES = 2**16  # a form's text fields; images come as files
FORM_OVERHEAD = 2**16  # a multipart body's boundaries and part headers, beyond --max-bytes of files
MAX_PIXELS = 64_000_000  # larger images are refused (413), not decoded: a decompression bomb costs GBs
DECODE_MEMORY = 2**30  # bytes that the decodes in flight may hold together (one image's estimate at most)
DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))


GIVE_BACK_AFTER = 64 * 2**20  # a decode estimated above this returns the freed memory to the system


def _give_back_memory() -> None:
    """Hand the heap pages a large decode freed back to the system. glibc keeps them in the
    decoding thread's arena otherwise, and the process stays at its peak size for good."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to call
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


class BadUpload(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class MemoryBudget:
    """Bytes that decodes in flight may hold together. A decode waits, first come first served,
    until its estimate fits; one larger than the whole budget is refused before it waits."""

    def __init__(self, total: int):
        self.total = self.free = total
        self._changed = threading.Condition()
        self._queue: deque = deque()

    @contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            self._changed.wait_for(lambda: self._queue[0] is ticket and self.free >= amount)
            self._queue.popleft()
            self.free -= amount
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self.free += amount
                self._changed.notify_all()


class Service:
    """The model and the limits behind the routes."""

    def __init__(
        self,
        model: Classifier,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        top_k: int = 5,
        decode_memory: int = DECODE_MEMORY,
    ):
        self.model, self.max_bytes, self.top_k = model, max_bytes, top_k
        self.budget = MemoryBudget(decode_memory)
        self._forward = threading.Lock()
        self.decode_threads: Any = None  # an anyio CapacityLimiter, made inside the event loop

    def decode(self, name: str, data: bytes):
        """Bytes -> the model's uint8 input; BadUpload for what is not a usable image. The pixels
        are decoded only once the header's size fits the limits and the shared budget has room."""
        if not data:
            raise BadUpload(400, f"{name}: empty upload; send an image file")
        try:
            img = preprocess.open_image(io.BytesIO(data), self.model.image_size, self.model.channels)  # header
        except Image.DecompressionBombError:  # PIL refuses to open it at all: its header says that many
            raise BadUpload(
                413,
                f"{name}: more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels (a decompression "
                f"bomb?); the limit is {MAX_PIXELS:,} pixels",
            ) from None
        except Exception as exc:  # PIL raises many types for what is not an image
            raise BadUpload(415, f"{name}: not an image cnnzoo can read ({type(exc).__name__})") from None
        need = 0
        try:
            need = self._decode_cost(name, img)
            with self.budget.hold(need):
                try:
                    return preprocess.load_image(img, self.model.image_size, self.model.channels)
                finally:
                    img.close()  # its pixels go before its share of the budget does
        except MemoryError:
            raise BadUpload(
                503, f"{name}: the server has not enough memory to decode it now; try again later"
            ) from None
        except BadUpload:
            raise
        except Exception as exc:
            raise BadUpload(415, f"{name}: not an image cnnzoo can read ({type(exc).__name__})") from None
        finally:
            img.close()
            if need >= GIVE_BACK_AFTER:
                _give_back_memory()

    def _decode_cost(self, name: str, img) -> int:
        """Bytes decoding ``img`` will take at its peak, from its header; 413 past the limits."""
        width, height = img.size
        if width * height > MAX_PIXELS:  # below PIL's bomb warning (89 MP); its error is caught at open
            raise BadUpload(413, f"{name}: {width}x{height} pixels; the limit is {MAX_PIXELS:,} pixels")
        need = preprocess.decode_bytes(img)
        if need > self.budget.total:
            raise BadUpload(
                413,
                f"{name}: {width}x{height} pixels of mode {img.mode} take about "
                f"{need / 2**20:,.0f} MiB to decode; the limit is "
                f"{self.budget.total / 2**20:,.0f} MiB; send it smaller",
            )
        return need

    def predict(self, names: list[str], arrays: list, top_k: int) -> list[dict[str, Any]]:
        with self._forward:
            try:
                return self.model.records(names, np.stack(arrays), top_k)
            except UserError as exc:  # a model that cannot answer: the server's fault, said in words
                raise BadUpload(500, str(exc)) from None


def _top_k(raw: str) -> int:
    """``?top_k=``: ASCII digits only (``int`` takes ``²``-free Unicode digits and refuses 5,000 of them)."""
    if not re.fullmatch(r"[0-9]{1,9}", raw) or int(raw) < 1:
        shown = raw if len(raw) <= 24 else raw[:24] + "..."
        raise BadUpload(400, f"top_k={shown!r}: expected a positive whole number, e.g. top_k=3")
    return int(raw)


def _too_large(name: str, service: Service) -> BadUpload:
    return BadUpload(
        413,
        f"{name}: more bytes than the limit; the limit is {service.max_bytes:,} per request "
        f"(serve --max-bytes), several files together",
    )


async def _uploads(request, service: Service) -> list[tuple[str, bytes]]:
    """(name, bytes) of every image in the request: the body, or the files of a multipart form.
    Bytes are counted as they arrive and the reading stops at the limit, whatever the headers say.
    A client that hangs up mid-body is one line in the server's log, not a traceback."""
    from starlette.requests import ClientDisconnect  # lazy: the serve extra

    try:
        return await _read_uploads(request, service)
    except ClientDisconnect:
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        log.warning(f"{client} disconnected before the body of its POST /predict was complete")
        raise BadUpload(400, "the client disconnected before the body was complete") from None  # to nobody


async def _read_uploads(request, service: Service) -> list[tuple[str, bytes]]:
    length = request.headers.get("content-length", "")
    if re.fullmatch(r"[0-9]{1,20}", length) and int(length) > service.max_bytes + FORM_OVERHEAD:
        raise BadUpload(
            413, f"request of {int(length):,} bytes; the limit is {service.max_bytes:,} (serve --max-bytes)"
        )
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await _multipart_files(request, service)
    name, body = request.query_params.get("name", "upload")[:200], bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > service.max_bytes:
            raise _too_large(name, service)
    return [(name, bytes(body))]


class _Form:
    """python-multipart callbacks that keep a form's files in memory, each checked as it grows."""

    def __init__(self, service: Service):
        self.service = service
        self.files: list[tuple[str, bytes]] = []
        self.file_bytes = 0  # of all files so far: --max-bytes bounds them together
        self.fields = 0
        self._header, self._value = b"", b""
        self._start_part()

    def _start_part(self) -> None:
        self.disposition, self.filename, self.data = b"", None, bytearray()

    @property
    def current(self) -> str:
        return self.filename or f"file {len(self.files) + 1}"

    def callbacks(self) -> dict[str, Any]:
        def header_field(data: bytes, start: int, end: int) -> None:
            self._header += data[start:end]

        def header_value(data: bytes, start: int, end: int) -> None:
            self._value += data[start:end]

        def header_end() -> None:
            if self._header.lower() == b"content-disposition":
                self.disposition = self._value
            self._header, self._value = b"", b""

        return {
            "on_part_begin": self._start_part,
            "on_header_field": header_field,
            "on_header_value": header_value,
            "on_header_end": header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header  # lazy: the serve extra

        _, options = parse_options_header(self.disposition)
        if b"filename" in options:
            if len(self.files) >= MAX_FILES:
                raise BadUpload(413, f"more than {MAX_FILES} files in one request")
            self.filename = options[b"filename"].decode("utf-8", "replace")[:200] or f"file {len(self.files) + 1}"
        else:
            self.fields += 1
            if self.fields > 64:
                raise BadUpload(400, "more than 64 form fields; send the image as a file field")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self.data.extend(data[start:end])
        if self.filename is not None:
            self.file_bytes += end - start
            if self.file_bytes > self.service.max_bytes:
                raise _too_large(self.current, self.service)
        if self.filename is None and len(self.data) > MAX_FIELD_BYTES:
            raise BadUpload(
                413,
                f"a form field of more than {MAX_FIELD_BYTES:,} bytes; send the image as a "
                f"file field (e.g. -F file=@photo.jpg)",
            )

    def _part_end(self) -> None:
        if self.filename is not None:
            self.files.append((self.filename, bytes(self.data)))
        self._start_part()


async def _multipart_files(request, service: Service) -> list[tuple[str, bytes]]:
    # lazy: the serve extra (cnnzoo[serve]) loads only when serving; without it serve() says what to install
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(request.headers.get("content-type"))
    if not options.get(b"boundary"):
        raise BadUpload(400, "unreadable multipart form (no boundary in its Content-Type)")
    form = _Form(service)
    received = 0
    try:  # the parser refuses a boundary over 256 bytes as it is made: a bad form, like the rest
        parser = MultipartParser(options[b"boundary"], form.callbacks())
        async for chunk in request.stream():
            received += len(chunk)
            if received > service.max_bytes + FORM_OVERHEAD:
                raise _too_large(form.current, service)
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise BadUpload(400, f"unreadable multipart form ({short_reason(exc, 120)})") from None
    if not form.files:
        raise BadUpload(400, "the form holds no file; send the image as a file field (e.g. -F file=@photo.jpg)")
    return form.files


def create_app(model: Classifier, max_bytes: int = DEFAULT_MAX_BYTES, top_k: int = 5):
    """The Starlette application for ``model``."""
    # lazy: the serve extra (cnnzoo[serve]) loads only when serving; without it serve() says what to install
    import anyio
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    service = Service(model, max_bytes=max_bytes, top_k=top_k)

    async def predict(request):
        if service.decode_threads is None:
            service.decode_threads = anyio.CapacityLimiter(DECODE_THREADS)
        try:
            k = _top_k(request.query_params.get("top_k", str(service.top_k)))
            uploads = await _uploads(request, service)
            arrays = [
                await anyio.to_thread.run_sync(service.decode, name, data, limiter=service.decode_threads)
                for name, data in uploads
            ]
            records = await run_in_threadpool(service.predict, [name for name, _ in uploads], arrays, k)
        except BadUpload as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return JSONResponse(records)

    async def health(request):
        return JSONResponse({"status": "ok"})

    async def info(request):
        return JSONResponse(
            {
                **model.info(),
                "cnnzoo_version": __version__,
                "max_bytes": service.max_bytes,
                "max_files": MAX_FILES,
                "max_pixels": MAX_PIXELS,
                "decode_memory": service.budget.total,
                "top_k": service.top_k,
            }
        )

    async def page(request):
        return HTMLResponse(PAGE)

    async def http_error(request, exc):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    return Starlette(
        routes=[
            Route("/", page),
            Route("/health", health),
            Route("/info", info),
            Route("/predict", predict, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error},
    )


def app_from_env():
    """The application for uvicorn's worker processes (``--workers N``), from CNNZOO_SERVE_* variables."""

    model = load(
        os.environ["CNNZOO_SERVE_MODEL"],
        os.environ.get("CNNZOO_SERVE_DEVICE") or None,
        trust_torchscript=os.environ.get("CNNZOO_SERVE_TRUST_TORCHSCRIPT") == "1",
    )
    return create_app(model, int(os.environ["CNNZOO_SERVE_MAX_BYTES"]), int(os.environ["CNNZOO_SERVE_TOP_K"]))


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(
                f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); choose another --port"
            ) from None


def serve(
    model_path: str | Path | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    max_bytes: int = DEFAULT_MAX_BYTES,
    top_k: int = 5,
    device: str | None = None,
    runs_root: str | Path = "runs",
    trust_torchscript: bool = False,
) -> None:
    """Serve until Ctrl-C. The model is loaded before the port opens, so a bad file is one error line.
    A TorchScript file is refused unopened unless ``trust_torchscript`` (its code runs when loaded)."""
    try:
        import uvicorn  # lazy: the serve extra, checked here first
    except ImportError:
        raise UserError(
            "cnnzoo serve needs starlette, uvicorn and python-multipart; pip install 'cnnzoo[serve]'"
        ) from None

    path = runs.resolve_checkpoint(model_path, runs_root)
    model = load(path, device, trust_torchscript=trust_torchscript)
    _check_port(host, port)
    print(
        f"cnnzoo serve: {path} ({model.format}, {len(model.classes)} classes) at http://{host}:{port}/ "
        f"(POST /predict, GET /info, GET /health); Ctrl-C stops",
        flush=True,
    )
    if workers == 1:
        uvicorn.run(create_app(model, max_bytes, top_k), host=host, port=port, log_level="warning")
        return
    os.environ.update(
        CNNZOO_SERVE_MODEL=str(path.resolve()),
        CNNZOO_SERVE_DEVICE=device or "",
        CNNZOO_SERVE_MAX_BYTES=str(max_bytes),
        CNNZOO_SERVE_TOP_K=str(top_k),
        CNNZOO_SERVE_TRUST_TORCHSCRIPT="1" if trust_torchscript else "0",
    )
    uvicorn.run(
        "cnnzoo.deploy.serve:app_from_env", factory=True, host=host, port=port, workers=workers, log_level="warning"
    )


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cnnzoo</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.4rem; margin-bottom: .2rem; }
  #about { color: #666; font-size: .9rem; margin-bottom: 1rem; }
  #drop { display: block; border: 2px dashed #999; border-radius: .6rem; padding: 1.5rem; text-align: center;
          cursor: pointer; }
  #drop.over { border-color: #2a6ad8; background: #eef4ff; }
  #result { display: flex; gap: 1.5rem; margin-top: 1.5rem; align-items: flex-start; }
  #preview { width: 12rem; height: auto; border-radius: .4rem; display: none; }
  #preview.small { image-rendering: pixelated; }
  #bars { flex: 1; }
  #label { font-size: 1.3rem; font-weight: 600; margin: 0 0 .6rem; }
  .row { display: grid; grid-template-columns: 8rem 1fr 4rem; align-items: center; gap: .5rem; margin: .3rem 0; }
  .track { background: #eee; border-radius: .3rem; height: 1rem; }
  .bar { background: #2a6ad8; border-radius: .3rem; height: 1rem; }
  .track { position: relative; }
  .bar.below { background: #a9c1ec; }
  .mark { position: absolute; top: -.25rem; bottom: -.25rem; width: 2px; background: #222; }
  .pct { text-align: right; font-variant-numeric: tabular-nums; }
  #error { color: #b00020; margin-top: 1rem; }
</style>
</head>
<body>
<h1>cnnzoo</h1>
<div id="about">loading model information ...</div>
<label id="drop" for="file">Drop an image here, or click to pick one
  <input id="file" type="file" accept="image/*" hidden>
</label>
<div id="error"></div>
<div id="result">
  <img id="preview" alt="the uploaded image">
  <div id="bars"><p id="label"></p><div id="rows"></div></div>
</div>
<script>
const $ = (id) => document.getElementById(id);
let thresholds = {};  // multi-label models: class -> the probability at which it is listed
fetch("info").then((r) => r.json()).then((info) => {
  (info.thresholds || []).forEach((t, i) => { thresholds[info.classes[i]] = t; });
  $("about").textContent = `${info.classes.length} classes (${info.classes.join(", ")}); input `
    + `${info.input.join("x")}; ${info.format} model`
    + (info.task === "multi" ? "; multi-label: each class on its own, listed at or above its threshold (|)" : "");
}).catch(() => { $("about").textContent = ""; });

function entriesOf(record) {
  if (record.labels === undefined) { return record.top_k; }
  // multi-label: every class as an independent bar, most probable first, its threshold marked
  $("label").textContent = record.labels.length ? record.labels.join(", ") : "none of the classes";
  return Object.entries(record.probabilities).map(([label, probability]) => ({ label, probability,
    threshold: thresholds[label] === undefined ? 0.5 : thresholds[label] }))
    .sort((a, b) => b.probability - a.probability);
}

async function classify(file) {
  $("error").textContent = "";
  $("rows").textContent = "";
  $("label").textContent = "...";
  $("preview").onload = () => $("preview").classList.toggle("small", $("preview").naturalWidth < 96);
  $("preview").src = URL.createObjectURL(file);
  $("preview").style.display = "block";
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const response = await fetch("predict?top_k=5", { method: "POST", body: form });
    const answer = await response.json();
    if (!response.ok) { throw new Error(answer.error || response.statusText); }
    const record = answer[0];
    $("label").textContent = record.label;
    for (const entry of entriesOf(record)) {
      const row = document.createElement("div");
      row.className = "row";
      const percent = (100 * entry.probability).toFixed(1);
      row.innerHTML = `<span class="name"></span><div class="track"><div class="bar"></div></div>`
        + `<span class="pct">${percent}%</span>`;
      row.querySelector(".name").textContent = entry.label;
      row.querySelector(".bar").style.width = `${percent}%`;
      if (entry.threshold !== undefined) {
        const mark = document.createElement("div");
        mark.className = "mark";
        mark.title = `threshold ${(100 * entry.threshold).toFixed(1)}%`;
        mark.style.left = `${100 * entry.threshold}%`;
        row.querySelector(".track").appendChild(mark);
        row.querySelector(".bar").classList.toggle("below", entry.probability < entry.threshold);
      }
      $("rows").appendChild(row);
    }
  } catch (error) {
    $("label").textContent = "";
    $("error").textContent = error.message;
  }
}

$("file").addEventListener("change", (event) => { if (event.target.files[0]) classify(event.target.files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files[0]) classify(event.dataTransfer.files[0]);
});
</script>
</body>
</html>
"""
