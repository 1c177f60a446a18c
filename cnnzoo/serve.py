"""``cnnzoo serve``: an HTTP service and a web page over any model :func:`cnnzoo.inference.load` reads.

Built on Starlette (routing, requests, multipart uploads through python-multipart) and
served by uvicorn: a small, well-kept ASGI pair with no framework beyond what three
routes need. With an ``.onnx`` model the service never imports torch.

* ``POST /predict``: an image as the request body, or one or more files as a multipart
  upload; ``?top_k=``. Answers the records of ``cnnzoo predict --json``.
* ``GET /health``, ``GET /info`` (classes, input size, model format, limits).
* ``GET /``: a page where a person drops or picks an image and sees the top classes as bars.

A bad request gets a 4xx with ``{"error": "..."}``: no image (400), too large (413), not an
image (415). Images are decoded in threads, in parallel; the network runs one batch at
a time, which keeps every core on one forward pass instead of splitting them.
"""

from __future__ import annotations

import io
import os
import socket
import threading
from pathlib import Path
from typing import Any, Optional

from .errors import UserError
from .inference import Classifier

DEFAULT_MAX_BYTES = 10 * 2**20
MAX_FILES = 32
MAX_PIXELS = 64_000_000  # larger images are refused (413), not decoded: a decompression bomb costs GBs


class BadUpload(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Service:
    """The model and the limits behind the routes."""

    def __init__(self, model: Classifier, max_bytes: int = DEFAULT_MAX_BYTES, top_k: int = 5):
        self.model, self.max_bytes, self.top_k = model, max_bytes, top_k
        self._forward = threading.Lock()

    def decode(self, name: str, data: bytes):
        """Bytes -> the model's uint8 input; BadUpload for what is not a usable image."""
        from PIL import Image

        if not data:
            raise BadUpload(400, f"{name}: empty upload; send an image file")
        if len(data) > self.max_bytes:
            raise BadUpload(413, f"{name}: {len(data):,} bytes; the limit is {self.max_bytes:,} (serve --max-bytes)")
        try:
            with Image.open(io.BytesIO(data)) as probe:  # reads the header only
                width, height = probe.size
            if width * height > MAX_PIXELS:  # below PIL's own bomb limits, so they never fire
                raise BadUpload(413, f"{name}: {width}x{height} pixels; the limit is {MAX_PIXELS:,} pixels")
            return self.model.preprocess(io.BytesIO(data))
        except BadUpload:
            raise
        except Exception as exc:  # PIL raises many types for what is not an image
            raise BadUpload(415, f"{name}: not an image cnnzoo can read ({type(exc).__name__})") from None

    def predict(self, names: list[str], arrays: list, top_k: int) -> list[dict[str, Any]]:
        import numpy as np

        with self._forward:
            return self.model.records(names, np.stack(arrays), top_k)


async def _uploads(request, service: Service) -> list[tuple[str, bytes]]:
    """(name, bytes) of every image in the request: the body, or the files of a multipart form."""
    from starlette.datastructures import UploadFile

    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > service.max_bytes * MAX_FILES + 2**16:
        raise BadUpload(413, f"request of {int(length):,} bytes; the limit is {service.max_bytes:,} per image")
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=MAX_FILES, max_fields=64)
        except Exception as exc:  # a malformed body or too many parts
            raise BadUpload(400, f"unreadable multipart form ({str(exc)[:120] or type(exc).__name__})") from None
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise BadUpload(400, "the form holds no file; send the image as a file field (e.g. -F file=@photo.jpg)")
        out = []
        for n, upload in enumerate(files):
            name = upload.filename or f"file {n + 1}"
            if upload.size is not None and upload.size > service.max_bytes:
                raise BadUpload(413, f"{name}: {upload.size:,} bytes; the limit is {service.max_bytes:,} "
                                     f"(serve --max-bytes)")
            out.append((name, await upload.read()))
        await form.close()
        return out
    name, body = request.query_params.get("name", "upload"), bytearray()
    async for chunk in request.stream():  # counted as it arrives: a huge body is never held whole
        body.extend(chunk)
        if len(body) > service.max_bytes:
            raise BadUpload(413, f"{name}: more bytes than the limit; the limit is {service.max_bytes:,} "
                                 f"(serve --max-bytes)")
    return [(name, bytes(body))]


def create_app(model: Classifier, max_bytes: int = DEFAULT_MAX_BYTES, top_k: int = 5):
    """The Starlette application for ``model``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    from . import __version__

    service = Service(model, max_bytes, top_k)

    async def predict(request):
        try:
            raw_k = request.query_params.get("top_k", str(service.top_k))
            if not raw_k.isdigit() or int(raw_k) < 1:
                raise BadUpload(400, f"top_k={raw_k!r}: expected a positive integer")
            uploads = await _uploads(request, service)
            arrays = [await run_in_threadpool(service.decode, name, data) for name, data in uploads]
        except BadUpload as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        records = await run_in_threadpool(service.predict, [name for name, _ in uploads], arrays, int(raw_k))
        return JSONResponse(records)

    async def health(request):
        return JSONResponse({"status": "ok"})

    async def info(request):
        return JSONResponse({**model.info(), "cnnzoo_version": __version__, "max_bytes": service.max_bytes,
                             "max_files": MAX_FILES, "top_k": service.top_k})

    async def page(request):
        return HTMLResponse(PAGE)

    async def http_error(request, exc):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    return Starlette(routes=[Route("/", page), Route("/health", health), Route("/info", info),
                             Route("/predict", predict, methods=["POST"])],
                     exception_handlers={HTTPException: http_error})


def app_from_env():
    """The application for uvicorn's worker processes (``--workers N``), from CNNZOO_SERVE_* variables."""
    from .inference import load

    return create_app(load(os.environ["CNNZOO_SERVE_MODEL"], os.environ.get("CNNZOO_SERVE_DEVICE") or None),
                      int(os.environ["CNNZOO_SERVE_MAX_BYTES"]), int(os.environ["CNNZOO_SERVE_TOP_K"]))


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
                            f"choose another --port") from None


def serve(model_path: Optional[str | Path], host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          max_bytes: int = DEFAULT_MAX_BYTES, top_k: int = 5, device: Optional[str] = None,
          runs_root: str | Path = "runs") -> None:
    """Serve until Ctrl-C. The model is loaded before the port opens, so a bad file is one error line."""
    try:
        import uvicorn
    except ImportError:
        raise UserError("cnnzoo serve needs starlette, uvicorn and python-multipart; "
                        "pip install 'cnnzoo[serve]'") from None
    from . import checkpoint as ckpt_io
    from .inference import load

    path = Path(model_path) if model_path else ckpt_io.default_checkpoint(runs_root)
    model = load(path, device)
    _check_port(host, port)
    print(f"cnnzoo serve: {path} ({model.format}, {len(model.classes)} classes) at http://{host}:{port}/ "
          f"(POST /predict, GET /info, GET /health); Ctrl-C stops", flush=True)
    if workers == 1:
        uvicorn.run(create_app(model, max_bytes, top_k), host=host, port=port, log_level="warning")
        return
    os.environ.update(CNNZOO_SERVE_MODEL=str(path.resolve()), CNNZOO_SERVE_DEVICE=device or "",
                      CNNZOO_SERVE_MAX_BYTES=str(max_bytes), CNNZOO_SERVE_TOP_K=str(top_k))
    uvicorn.run("cnnzoo.serve:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level="warning")


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
fetch("info").then((r) => r.json()).then((info) => {
  $("about").textContent = `${info.classes.length} classes (${info.classes.join(", ")}); input `
    + `${info.input.join("x")}; ${info.format} model`;
}).catch(() => { $("about").textContent = ""; });

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
    for (const entry of record.top_k) {
      const row = document.createElement("div");
      row.className = "row";
      const percent = (100 * entry.probability).toFixed(1);
      row.innerHTML = `<span class="name"></span><div class="track"><div class="bar"></div></div>`
        + `<span class="pct">${percent}%</span>`;
      row.querySelector(".name").textContent = entry.label;
      row.querySelector(".bar").style.width = `${percent}%`;
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
