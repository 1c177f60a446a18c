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

The package, one concern a module:

* :mod:`~cnnzoo.deploy.serve.limits`: the limits, the shared decoding budget, ``malloc_trim``;
* :mod:`~cnnzoo.deploy.serve.service`: the model behind the routes (a decode within the limits,
  one forward pass at a time);
* :mod:`~cnnzoo.deploy.serve.uploads`: the request body and the multipart form, read as they stream;
* :mod:`~cnnzoo.deploy.serve.app`: the Starlette routes, the port probe, uvicorn and its workers;
* ``page.html``: the page at ``GET /``, package data (``[tool.setuptools.package-data]``).

Floor 8, like the rest of deploy: imports inference, data.preprocess, runs and errors, never
torch at import (an ONNX or TFLite model is served without it).
"""

from .app import app_from_env, create_app, page_html, serve
from .limits import DECODE_MEMORY, MAX_FILES, MAX_PIXELS, BadUpload, MemoryBudget
from .service import Service

__all__ = [
    "DECODE_MEMORY",
    "MAX_FILES",
    "MAX_PIXELS",
    "BadUpload",
    "MemoryBudget",
    "Service",
    "app_from_env",
    "create_app",
    "page_html",
    "serve",
]
