"""``cnnzoo serve``'s application and server: the Starlette routes, the page, the port probed
before uvicorn starts, and the worker processes of ``--workers N``.

Owns :func:`create_app` (``POST /predict``, ``GET /health``, ``GET /info``, ``GET /`` with the
page shipped as package data, ``page.html``), :func:`app_from_env` (what each uvicorn worker
builds) and :func:`serve`. Starlette, anyio and uvicorn (the serve extra) are imported when the
application is made; at import this module is torch-free: it imports the inference layer's
:func:`~cnnzoo.inference.load`, runs, and the package's :mod:`.limits`, :mod:`.service` and
:mod:`.uploads`.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from importlib import resources
from pathlib import Path
from typing import Any

from ... import __version__, runs
from ...errors import UserError
from ...inference import load
from ...inference.classifier import Classifier
from .. import DEFAULT_MAX_BYTES
from .limits import DECODE_THREADS, MAX_FILES, MAX_PIXELS, BadUpload
from .service import Service
from .uploads import read_uploads


@functools.cache
def page_html() -> str:
    """The page at ``GET /``: drop or pick an image, see the top classes as bars (``page.html``)."""
    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


def _top_k(raw: str) -> int:
    """``?top_k=``: ASCII digits only (``int`` takes ``²``-free Unicode digits and refuses 5,000 of them)."""
    if not re.fullmatch(r"[0-9]{1,9}", raw) or int(raw) < 1:
        shown = raw if len(raw) <= 24 else raw[:24] + "..."
        raise BadUpload(400, f"top_k={shown!r}: expected a positive whole number, e.g. top_k=3")
    return int(raw)


def create_app(model: Classifier, max_bytes: int = DEFAULT_MAX_BYTES, top_k: int = 5, *, unknown: str = ""):
    """The Starlette application for ``model``; ``unknown``: "" (the model's threshold), "off" or a threshold."""
    # lazy: the serve extra (cnnzoo[serve]) loads only when serving; without it serve() says what to install
    import anyio
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    service = Service(model, max_bytes=max_bytes, top_k=top_k, **unknown_options(unknown))
    page_text = page_html()  # read here: an install without the page fails as it starts, not at GET /

    async def predict(request):
        if service.decode_threads is None:
            service.decode_threads = anyio.CapacityLimiter(DECODE_THREADS)
        try:
            k = _top_k(request.query_params.get("top_k", str(service.top_k)))
            uploads = await read_uploads(request, service)
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
                "unknown_threshold": service.unknown_threshold,
            }
        )

    async def page(request):
        return HTMLResponse(page_text)

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


def unknown_options(setting: str) -> dict[str, Any]:
    """serve's unknown setting as :class:`Service` takes it: "" the model's threshold, "off", or a number."""
    if setting == "off":
        return {"unknown": False}
    return {"unknown_threshold": float(setting)} if setting else {}


def app_from_env():
    """The application for uvicorn's worker processes (``--workers N``), from CNNZOO_SERVE_* variables."""

    model = load(
        os.environ["CNNZOO_SERVE_MODEL"],
        os.environ.get("CNNZOO_SERVE_DEVICE") or None,
        trust_torchscript=os.environ.get("CNNZOO_SERVE_TRUST_TORCHSCRIPT") == "1",
    )
    return create_app(
        model,
        int(os.environ["CNNZOO_SERVE_MAX_BYTES"]),
        int(os.environ["CNNZOO_SERVE_TOP_K"]),
        unknown=os.environ.get("CNNZOO_SERVE_UNKNOWN", ""),
    )


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
    unknown: str = "",
) -> None:
    """Serve until Ctrl-C. The model is loaded before the port opens, so a bad file is one error line.
    A TorchScript file is refused unopened unless ``trust_torchscript`` (its code runs when loaded).
    ``unknown``: "" answers unknown past the model's own threshold, "off" never, a number past it."""
    try:
        import uvicorn  # lazy: the serve extra, checked here first
    except ImportError:
        raise UserError(
            "cnnzoo serve needs starlette, uvicorn and python-multipart; pip install 'cnnzoo[serve]'"
        ) from None

    path = runs.resolve_checkpoint(model_path, runs_root)
    model = load(path, device, trust_torchscript=trust_torchscript)
    Service(model, **unknown_options(unknown))  # a threshold out of range, or for no score: refused here
    _check_port(host, port)
    print(
        f"cnnzoo serve: {path} ({model.format}, {len(model.classes)} classes) at http://{host}:{port}/ "
        f"(POST /predict, GET /info, GET /health); Ctrl-C stops",
        flush=True,
    )
    if workers == 1:
        uvicorn.run(create_app(model, max_bytes, top_k, unknown=unknown), host=host, port=port, log_level="warning")
        return
    os.environ.update(
        CNNZOO_SERVE_MODEL=str(path.resolve()),
        CNNZOO_SERVE_DEVICE=device or "",
        CNNZOO_SERVE_MAX_BYTES=str(max_bytes),
        CNNZOO_SERVE_TOP_K=str(top_k),
        CNNZOO_SERVE_TRUST_TORCHSCRIPT="1" if trust_torchscript else "0",
        CNNZOO_SERVE_UNKNOWN=unknown,
    )
    uvicorn.run(
        "cnnzoo.deploy.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers, log_level="warning"
    )
