"""The model behind ``cnnzoo serve``'s routes: an upload decoded within the limits, and one
forward pass at a time.

Owns :class:`Service`: a decode is refused from the image's header when its pixels or its
estimated memory (:func:`cnnzoo.data.preprocess.decode_bytes`) pass :mod:`.limits`, and waits for
room in the shared :class:`~cnnzoo.deploy.serve.limits.MemoryBudget` otherwise. Torch-free: imports
the inference layer's :class:`~cnnzoo.inference.classifier.Classifier`, data.preprocess and
:mod:`.limits`.
"""

from __future__ import annotations

import io
import threading
from typing import Any

import numpy as np
from PIL import Image

from ...data import preprocess
from ...errors import UserError
from ...inference.classifier import Classifier
from .. import DEFAULT_MAX_BYTES
from .limits import DECODE_MEMORY, GIVE_BACK_AFTER, MAX_PIXELS, BadUpload, MemoryBudget, give_back_memory


class Service:
    """The model and the limits behind the routes."""

    def __init__(
        self,
        model: Classifier,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        top_k: int = 5,
        decode_memory: int = DECODE_MEMORY,
        unknown: bool = True,
        unknown_threshold: float | None = None,
    ):
        self.model, self.max_bytes, self.top_k = model, max_bytes, top_k
        # the unknown answer (serve --no-unknown, --unknown-threshold), checked before the port opens
        self.unknown_threshold = model.unknown_threshold_for(enabled=unknown, threshold=unknown_threshold)
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
                    return self.model.preprocess(img)
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
                give_back_memory()

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
                records = self.model.records(names, np.stack(arrays), top_k, unknown_threshold=self.unknown_threshold)
            except UserError as exc:  # a model that cannot answer: the server's fault, said in words
                raise BadUpload(500, str(exc)) from None
        for record in records:  # what the page shows, and a client may too
            if record.get("unknown"):
                record["text"] = f"unknown (looks like none of the {len(self.model.classes)} classes)"
        return records
