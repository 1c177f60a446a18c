"""Data in object storage and on web servers, through fsspec: the one place a URL (``s3://``,
``gs://``, ``az://``, ``https://``) becomes reads, listings, uploads and one-line errors.

:data:`SCHEMES` maps each URL scheme to fsspec's protocol, the package that implements it and the
cnnzoo extra that installs it (``cnnzoo[s3]``: s3fs; ``cnnzoo[gcs]``: gcsfs; ``cnnzoo[azure]``:
adlfs; ``cnnzoo[http]``: aiohttp). An unknown scheme or a missing package is one line naming
what to install.

Retries are this module's: a transient failure (a 5xx answer, a connection dropped mid-object, a
timeout) is tried again, up to :data:`ATTEMPTS` times with a growing pause, with one warning per
object; botocore's and s3fs's own silent retries are turned off so that each retry is seen once,
and a shard read again starts where the dropped read stopped (:class:`RetryingReader`). A permanent
failure (a missing key, a bucket that does not exist, refused or absent credentials) is one line
(:class:`RemoteError`, a :class:`~cnnzoo.errors.DataError`: exit 2, no traceback).

Credentials are found the libraries' standard way (s3fs/botocore: the environment, a profile in
``~/.aws``, an instance role; ``AWS_ENDPOINT_URL`` points at another S3-compatible server); cnnzoo
never reads, prints or stores them, and messages name the URL, never a request's headers.

Torch-free; imports floor 0 only. fsspec and the scheme's package are imported when a URL is used.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..console import warn
from ..errors import DataError, short_reason
from ..files import is_url, url_scheme

__all__ = ["ATTEMPTS", "SCHEMES", "RemoteError", "RetryingReader", "is_url", "url_scheme"]

ATTEMPTS = 4  # tries of one request or read before a transient failure stops the run
PAUSE_S = 0.5  # before the first retry; doubled each time
STREAM_BLOCK = 4 * 2**20  # bytes one ranged request of a streamed shard reads
T = TypeVar("T")


@dataclass(frozen=True)
class Scheme:
    protocol: str  # fsspec's name
    package: str  # imported to read it
    extra: str  # pip install 'cnnzoo[<extra>]'


SCHEMES = {
    "s3": Scheme("s3", "s3fs", "s3"),
    "gs": Scheme("gcs", "gcsfs", "gcs"),
    "gcs": Scheme("gcs", "gcsfs", "gcs"),
    "az": Scheme("az", "adlfs", "azure"),
    "abfs": Scheme("abfs", "adlfs", "azure"),
    "abfss": Scheme("abfs", "adlfs", "azure"),
    "http": Scheme("http", "aiohttp", "http"),
    "https": Scheme("https", "aiohttp", "http"),
}
_BUCKETED = {"s3", "gs", "gcs", "az", "abfs", "abfss"}  # the first part of the path is a bucket or container


class RemoteError(DataError):
    """A URL that cannot be read or written as asked (permanent, or transient past every retry)."""


def scheme_of(url: str) -> Scheme:
    """The registered scheme of ``url``; one line for one cnnzoo does not read."""
    name = url_scheme(url) or ""
    if name not in SCHEMES:
        known = ", ".join(f"{s}://" for s in ("s3", "gs", "az", "https"))
        hint = "give the path itself" if name == "file" else f"cnnzoo reads {known} (and http://)"
        raise RemoteError(f"{url}: unknown URL scheme {name!r}; {hint}")
    return SCHEMES[name]


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec file system, the path it names ``url`` by); one line when the package is missing."""
    scheme = scheme_of(url)
    try:
        __import__(scheme.package)  # lazy: each scheme's package is an optional extra
        import fsspec  # lazy: installed with every extra
    except ImportError:
        raise RemoteError(
            f"{url}: reading {url_scheme(url)}:// needs {scheme.package}: pip install 'cnnzoo[{scheme.extra}]'"
        ) from None
    options: dict[str, Any] = {}
    if scheme.protocol == "s3":  # botocore's silent retries off: this module retries, and says so once
        options["config_kwargs"] = {"retries": {"total_max_attempts": 1}}
    fs = fsspec.filesystem(scheme.protocol, **options)
    if hasattr(fs, "retries"):
        fs.retries = 1  # s3fs's own silent retries of a dropped read, likewise
    path = url if scheme.protocol in ("http", "https") else type(fs)._strip_protocol(url)
    return fs, path


def join(base: str, *parts: str) -> str:
    """``base`` (a URL) with ``parts`` added, one slash between each."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def bucket_of(url: str) -> str | None:
    """The bucket (or container) a store URL names; None for a web URL."""
    if url_scheme(url) not in _BUCKETED:
        return None
    return url.split("://", 1)[1].split("/", 1)[0]


# ------------------------------------------------------------------------------- errors and retries


def _chain(exc: BaseException) -> list[BaseException]:
    found, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        found.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return found


def _status(exc: BaseException) -> int | None:
    """The HTTP status an error carries (botocore's response, aiohttp's status), if any."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(code) if isinstance(code, int) else None
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def is_transient(exc: BaseException) -> bool:
    """A failure worth trying again: a 5xx answer, a dropped or refused connection, a timeout, a
    body that ended early. A missing object and refused credentials are not."""
    for link in _chain(exc):
        if isinstance(link, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return False
        status = _status(link)
        if status is not None:
            return status >= 500 or status == 429
        name = type(link).__name__
        if isinstance(link, (ConnectionError, TimeoutError, socket.timeout)) or name in _TRANSIENT_NAMES:
            return True
        if isinstance(link, OSError) and link.errno in (errno.EIO, errno.EREMOTEIO):
            return True
    return False


# aiohttp's and botocore's transport errors, by name: neither package is needed to tell them
_TRANSIENT_NAMES = {
    "ClientPayloadError", "ClientConnectionError", "ClientOSError", "ServerDisconnectedError",
    "ServerTimeoutError", "ClientConnectorError", "ContentLengthError", "TransferEncodingError",
    "EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
    "IncompleteRead", "ResponseStreamingError", "HTTPClientError", "FSTimeoutError",
}  # fmt: skip


def explain(url: str, exc: BaseException) -> str:
    """The one line for a failure at ``url``: what happened and what to do, no library internals."""
    chain = _chain(exc)
    names = {type(e).__name__ for e in chain}
    reason = short_reason(exc, 120)
    if names & {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}:
        return (
            f"{url}: no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
            f"or run where an instance role gives them"
        )
    statuses = {s for e in chain if (s := _status(e)) is not None}
    if any(isinstance(e, PermissionError) for e in chain) or statuses & {401, 403}:
        return (
            f"{url}: access denied ({reason}); check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            f"AWS_PROFILE or the instance role) and that they may read this bucket"
        )
    if any(isinstance(e, FileNotFoundError) for e in chain) or 404 in statuses:
        bucket = bucket_of(url)
        if bucket and "bucket" in reason.lower():
            return no_bucket(url, bucket)
        return f"{url}: not found; check the URL (a key is case-sensitive)"
    if is_transient(exc):
        return f"{url}: the store did not answer after {ATTEMPTS} tries ({reason}); try again later"
    return f"{url}: cannot be read ({type(exc).__name__}: {reason})"


def transient_reason(exc: BaseException) -> str:
    """A transient failure in a few words: the HTTP status the store answered, else the error."""
    status = next((s for e in _chain(exc) if (s := _status(e)) is not None), None)
    if status is not None:
        return f"the store answered HTTP {status}"
    return f"{type(exc).__name__}: {short_reason(exc, 80)}"


def no_bucket(url: str, bucket: str) -> str:
    return f"{url}: the bucket {bucket!r} does not exist; check its name (and AWS_ENDPOINT_URL, the server asked)"


def _pause(attempt: int) -> None:
    time.sleep(min(PAUSE_S * 2**attempt, 8.0))


def retrying(url: str, call: Callable[[], T], *, what: str = "reading") -> T:
    """``call()``, tried again on a transient failure (one warning, then quiet); any failure that
    remains is one line (:class:`RemoteError`)."""
    for attempt in range(ATTEMPTS):
        try:
            return call()
        except RemoteError:
            raise
        except Exception as exc:  # the stores' clients raise many types; sorted by is_transient
            if not is_transient(exc) or attempt == ATTEMPTS - 1:
                raise RemoteError(explain(url, exc)) from None
            if attempt == 0:
                warn(f"{url}: {transient_reason(exc)} while {what}; retrying (up to {ATTEMPTS - 1} more tries)")
            _pause(attempt)
    raise AssertionError("unreachable")


class RetryingReader:
    """A remote object read front to back (a tar shard streamed, never downloaded first): ``read(n)``
    over fsspec's ranged reads; a transient failure mid-object opens it again at the byte where the
    read stopped, with one warning for the object however often it happens."""

    def __init__(self, url: str):
        self.url, self.position, self.warned = url, 0, False
        self.fs, self.path = filesystem(url)
        self.file = retrying(url, self._open)

    def _open(self) -> Any:
        f = self.fs.open(self.path, "rb", block_size=STREAM_BLOCK, cache_type="readahead")
        if self.position:
            f.seek(self.position)
        return f

    def read(self, n: int = -1) -> bytes:
        for attempt in range(ATTEMPTS):
            try:
                data = self.file.read(n)
                self.position += len(data)
                return data
            except Exception as exc:  # as in retrying()
                if not is_transient(exc) or attempt == ATTEMPTS - 1:
                    raise RemoteError(explain(self.url, exc)) from None
                if not self.warned:
                    warn(f"{self.url}: {transient_reason(exc)} at byte {self.position:,}; reading on from there")
                    self.warned = True
                _pause(attempt)
                self._reopen()
        raise AssertionError("unreachable")

    def _reopen(self) -> None:
        try:
            self.file.close()
        except Exception:  # a broken connection may fail to close too; it is dropped either way
            pass
        self.file = retrying(self.url, self._open)

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = retrying(self.url, lambda: self.file.seek(offset, whence))
        return self.position

    def tell(self) -> int:
        return self.position

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> RetryingReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ------------------------------------------------------------------------------- whole objects


def read_bytes(url: str, *, limit: int | None = None) -> bytes:
    """A whole object (a shard index, a manifest, an image); one line when it is larger than ``limit``."""
    fs, path = filesystem(url)
    end = None if limit is None else limit + 1  # a ranged read: a huge object is not fetched to be refused
    data = retrying(url, lambda: fs.cat_file(path, start=0 if end else None, end=end))
    if limit is not None and len(data) > limit:
        raise RemoteError(f"{url}: larger than {limit:,} bytes")
    return data


def exists(url: str) -> bool:
    """Whether an object is at ``url`` (a missing one is False; no bucket, no access: one line)."""
    fs, path = filesystem(url)

    def probe() -> bool:
        try:
            return bool(fs.isfile(path)) if url_scheme(url) in _BUCKETED else fs.exists(path)
        except FileNotFoundError:
            return False

    return retrying(url, probe, what="looking for it")


def check_bucket(url: str) -> None:
    """One line when the bucket ``url`` names does not exist or may not be read with these credentials."""
    bucket = bucket_of(url)
    if bucket is None:
        return
    fs, _ = filesystem(url)
    if hasattr(fs, "call_s3"):  # one key listed: S3 says which of no bucket and no access it is
        probe = lambda: fs.call_s3("list_objects_v2", Bucket=bucket, MaxKeys=1)  # noqa: E731
    else:
        probe = lambda: fs.ls(bucket, detail=False, refresh=True)  # noqa: E731
    try:
        retrying(url, probe, what=f"listing the bucket {bucket!r}")
    except RemoteError as exc:
        if str(exc).startswith(f"{url}: not found"):  # the bucket was listed, not the URL
            raise RemoteError(no_bucket(url, bucket)) from None
        raise


def list_files(url: str, suffix: str) -> list[str]:
    """The objects directly under ``url`` whose names end with ``suffix``, as URLs, sorted (a web
    server cannot be listed: none)."""
    if bucket_of(url) is None:
        return []
    fs, path = filesystem(url)
    scheme = url.split("://", 1)[0]

    def listed() -> list[str]:
        try:
            return fs.ls(path, detail=False, refresh=True)
        except FileNotFoundError:
            return []

    names = retrying(url, listed, what="listing it")
    return sorted(f"{scheme}://{n}" for n in names if n.endswith(suffix))


def upload_folder(
    folder: str | os.PathLike, url: str, *, last: str | None = None, skip: Callable[[str], bool] | None = None
) -> int:
    """Copy every file under the local ``folder`` to ``url`` (same relative names) but those
    ``skip(name)`` leaves out, ``last`` (a relative name, e.g. the index that says the set is
    complete) after all the others; the count."""
    fs, path = filesystem(url)
    names = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)
    names = [n for n in names if not (skip and skip(n))]
    names.sort(key=lambda n: n == last)
    for name in names:
        target = join(url, name.replace(os.sep, "/"))
        _, key = filesystem(target)
        retrying(target, lambda: fs.put_file(os.path.join(folder, name), key), what="uploading it")  # noqa: B023
    return len(names)


def download_folder(url: str, folder: str | os.PathLike) -> int:
    """Copy every object under ``url`` into the local ``folder`` (same relative names); the count."""
    fs, path = filesystem(url)
    found = retrying(url, lambda: fs.find(path), what="listing it")
    if not found:
        raise RemoteError(f"{url}: holds no files; check the URL")
    for key in found:
        relative = key[len(path.rstrip("/")) + 1 :]
        if not relative or relative.startswith("/") or ".." in relative.split("/"):
            continue
        target = os.path.join(folder, *relative.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        retrying(join(url, relative), lambda: fs.get_file(key, target), what="downloading it")  # noqa: B023
    return len(found)


def sync(source: str | os.PathLike, target: str | os.PathLike) -> int:
    """Copy a run folder (or any folder) between this machine and a store, one way: a local
    ``source`` is uploaded to the ``target`` URL, a ``source`` URL downloaded into the local
    ``target``; every file, each replaced whole (a checkpoint rewritten in place keeps its size, so
    sizes and times are not trusted to tell). The number of files copied."""
    source, target = os.fspath(source), os.fspath(target)
    if is_url(source) == is_url(target):
        raise RemoteError(f"{source} -> {target}: give one local folder and one URL (s3://bucket/runs/NAME/N)")
    if is_url(target):
        if not os.path.isdir(source):
            raise RemoteError(f"{source}: not a folder; give a run folder (runs/NAME/N)")
        check_bucket(target)
        return upload_folder(source, target, skip=_temporary)
    check_bucket(source)
    os.makedirs(target, exist_ok=True)
    return download_folder(source, target)


def _temporary(name: str) -> bool:
    """A file a write in progress holds (``.<name>.<random>.tmp``): never copied."""
    base = os.path.basename(name)
    return base.startswith(".") and base.endswith(".tmp")
