"""The images of one ``POST /predict``: the request body, or the files of a multipart form,
read as they stream in and counted against the limits before they are kept.

Owns the body reading (:func:`read_uploads`) and the multipart parsing: python-multipart's
parser driven by hand with callbacks (:class:`_Form`) that keep every file in memory (never
spooled to disk) and refuse a request as soon as it passes ``--max-bytes``, :data:`MAX_FILES`
or the form-field limits. Starlette and python-multipart (the serve extra) are imported when a
request is read; this module imports :mod:`.limits` and :mod:`.service` of its own package.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from ...errors import short_reason
from .limits import FORM_OVERHEAD, MAX_FIELD_BYTES, MAX_FILES, BadUpload
from .service import Service

log = logging.getLogger("uvicorn.error")  # uvicorn's own server log: its format and --log-level


def _too_large(name: str, service: Service) -> BadUpload:
    return BadUpload(
        413,
        f"{name}: more bytes than the limit; the limit is {service.max_bytes:,} per request "
        f"(serve --max-bytes), several files together",
    )


async def read_uploads(request, service: Service) -> list[tuple[str, bytes]]:
    """(name, bytes) of every image in the request: the body, or the files of a multipart form.
    Bytes are counted as they arrive and the reading stops at the limit, whatever the headers say.
    A client that hangs up mid-body is one line in the server's log, not a traceback."""
    from starlette.requests import ClientDisconnect  # lazy: the serve extra

    try:
        return await _read_body(request, service)
    except ClientDisconnect:
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        log.warning(f"{client} disconnected before the body of its POST /predict was complete")
        raise BadUpload(400, "the client disconnected before the body was complete") from None  # to nobody


async def _read_body(request, service: Service) -> list[tuple[str, bytes]]:
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
