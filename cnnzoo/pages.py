"""Self-contained HTML pages (``explain``'s page, ``evaluate``'s report.html): pictures as PNG bytes
and embedded in the page as data URIs, so that a page is one file that opens offline.

Torch-free; imports only plots (floor 1, beside it): every page-writing floor may use it.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np
from PIL import Image

from .plots import pyplot

# what a page may load: its own inline style and script and data: pictures, nothing from anywhere
# else; the browser refuses the rest, so a page cannot reach the network even by mistake
OFFLINE_POLICY = (
    '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
)

# a click enlarges a picture, another click shrinks it back (the page's style says how large)
ZOOM_SCRIPT = """\
document.querySelectorAll("img").forEach((img) => img.addEventListener("click", () => img.classList.toggle("big")));
"""


def array_png(rgb: np.ndarray, min_side: int = 64, scale: int | None = None) -> bytes:
    """uint8 HxWx3 (or HxW) -> PNG bytes, enlarged with square pixels to at least ``min_side``
    (or by ``scale``)."""

    image = Image.fromarray(rgb)
    scale = scale or max(1, -(-min_side // max(1, min(image.size))))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def figure_png(figure, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    pyplot().close(figure)
    return buffer.getvalue()


def embedded_img(png: bytes, *, alt: str, caption: str = "", css_class: str = "") -> str:
    """A ``<figure>`` holding the picture as a data URI, with its caption."""
    data = base64.b64encode(png).decode()
    caption_html = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    class_attr = f' class="{css_class}"' if css_class else ""
    return (
        f'<figure{class_attr}><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">{caption_html}</figure>'
    )
