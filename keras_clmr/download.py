"""Download one release asset robustly: resume, retries with backoff, size caps, checksums.

``download(url, dest)`` writes to ``dest + ".part"`` and renames onto ``dest`` only when the
whole body arrived and passed every check, so ``dest`` never holds a partial or wrong file.
A transfer cut short leaves the ``.part`` behind and the next call resumes it with an HTTP
Range request (restarting when the server ignores Range); connection errors, timeouts, 5xx,
408 and 429 are retried with exponential backoff; 404 and other 4xx, an HTML page where a
binary was expected, a size over the cap or different from the expected one, and a sha256
mismatch fail at once with a typed :class:`DownloadError` that names the URL and the fix.
``KERAS_CLMR_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` refuse any download (:class:`OfflineError`).
Only the standard library (urllib) and tqdm are used.
"""

import contextlib
import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request

from keras_clmr.io import fsync_directory, make_readable
from keras_clmr.progress import progress_bar

DEFAULT_MAX_BYTES = 2 * 1024**3
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 4
CHUNK = 1 << 16
OFFLINE_VARIABLES = ("KERAS_CLMR_OFFLINE", "HF_HUB_OFFLINE")
_TRUE = ("1", "ON", "YES", "TRUE")


class DownloadError(RuntimeError):
    """A download that failed; ``url`` names the source and the message says what to do."""

    def __init__(self, message, url=None):
        super().__init__(message)
        self.url = url


class OfflineError(DownloadError):
    """Offline mode is on (``KERAS_CLMR_OFFLINE`` / ``HF_HUB_OFFLINE``): nothing is downloaded."""


class HTTPStatusError(DownloadError):
    """The server answered with an error status that retrying will not fix (404, 403, ...)."""

    def __init__(self, message, url=None, status=None):
        super().__init__(message, url)
        self.status = status


class UnexpectedContentError(DownloadError):
    """The server sent a web page (HTML) where a binary file was expected."""


class DownloadSizeError(DownloadError):
    """The body is larger than the cap or differs from the expected size."""


class ChecksumError(DownloadError):
    """The downloaded file's sha256 differs from the expected one."""


class RetriesExhaustedError(DownloadError):
    """Transient failures (connection errors, timeouts, 5xx) persisted through every retry."""


class _Transient(Exception):
    """Internal: a failure worth retrying."""


def is_offline():
    """True when ``KERAS_CLMR_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to a true value."""
    return any(os.environ.get(name, "").strip().upper() in _TRUE for name in OFFLINE_VARIABLES)


def manual_fix(url, preset=None):
    """The sentence telling a user how to fetch ``url`` by hand and convert it into the cache."""
    name = preset or "NAME"
    return (
        f"download it by hand from {url} and run `keras-clmr convert --input FILE --preset {name}`"
    )


def _describe(error):
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        return f"{type(error.reason).__name__}: {error.reason}"
    return f"{type(error).__name__}: {error}"


def _content_range_start(value):
    match = re.match(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)", value or "")
    return int(match.group(1)) if match else None


def _remove(path):
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _attempt(url, part, *, offset, expected_size, max_bytes, timeout, progress, expect_binary, fix):
    """One request; appends to ``part``. Returns ``"done"`` or ``"restart"`` (416 at full size)."""
    headers = {"User-Agent": "keras-clmr (python urllib)", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and offset:
            return "restart"  # our .part is no prefix the server knows: start over
        if error.code >= 500 or error.code in (408, 429):
            raise _Transient(f"HTTP {error.code} {error.reason}") from error
        raise HTTPStatusError(
            f"Downloading {url} failed: HTTP {error.code} {error.reason}. The file may have moved; "
            f"check the URL, or {fix}.",
            url,
            status=error.code,
        ) from error
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise _Transient(_describe(error)) from error

    with response:
        status = response.status
        content_type = (response.headers.get("Content-Type") or "").lower()
        if expect_binary and content_type.startswith(("text/html", "application/xhtml")):
            raise UnexpectedContentError(
                f"{url} returned a web page ({content_type}, HTTP {status}) instead of the file: "
                f"a login, error or rate-limit page. Try again later, or {fix}.",
                url,
            )
        mode = "ab"
        if offset and status == 206:
            if _content_range_start(response.headers.get("Content-Range")) != offset:
                return "restart"  # a range we did not ask for
        elif offset:
            mode, offset = "wb", 0  # the server ignored Range and sends the whole file
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        total = offset + length if length is not None else None
        if total is not None and total > max_bytes:
            raise DownloadSizeError(
                f"{url} is {total:,} bytes, more than the limit of {max_bytes:,}; refused. "
                f"Raise max_bytes if this is expected, or {fix}.",
                url,
            )
        if total is not None and expected_size is not None and total != expected_size:
            raise DownloadSizeError(
                f"{url} is {total:,} bytes but {expected_size:,} were expected: the release asset "
                f"changed or the server sent something else. Check the URL, or {fix}.",
                url,
            )
        bar = progress_bar(
            total,
            progress=bool(progress),
            desc=os.path.basename(part)[: -len(".part")],
            unit="B",
            initial=offset,
            unit_scale=True,
            unit_divisor=1024,
        )
        received = 0
        try:
            with open(part, mode) as sink:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (OSError, http.client.HTTPException) as error:
                        raise _Transient(
                            f"connection lost after {offset + received:,} bytes "
                            f"({_describe(error)})"
                        ) from error
                    if not chunk:
                        break
                    if (
                        offset == 0
                        and received == 0
                        and expect_binary
                        and chunk.lstrip()[:1] == b"<"
                    ):
                        raise UnexpectedContentError(
                            f"{url} returned an HTML/XML document (HTTP {status}, "
                            f"{content_type or 'no content type'}) instead of the file. Try again "
                            f"later, or {fix}.",
                            url,
                        )
                    received += len(chunk)
                    if offset + received > max_bytes:
                        raise DownloadSizeError(
                            f"{url} sent more than the limit of {max_bytes:,} bytes; refused. "
                            f"Raise max_bytes if this is expected, or {fix}.",
                            url,
                        )
                    if expected_size is not None and offset + received > expected_size:
                        raise DownloadSizeError(
                            f"{url} sent more than the expected {expected_size:,} bytes: the "
                            f"release asset changed. Check the URL, or {fix}.",
                            url,
                        )
                    sink.write(chunk)
                    bar.update(len(chunk))
                sink.flush()
                os.fsync(sink.fileno())
        finally:
            bar.close()
        if length is not None and received < length:
            raise _Transient(f"connection closed after {offset + received:,} of {total:,} bytes")
    return "done"


def download(
    url,
    dest,
    *,
    expected_size=None,
    expected_sha256=None,
    max_bytes=DEFAULT_MAX_BYTES,
    timeout=DEFAULT_TIMEOUT,
    retries=DEFAULT_RETRIES,
    backoff=1.0,
    progress=True,
    expect_binary=True,
    preset=None,
    sleep=time.sleep,
):
    """Download ``url`` to ``dest`` atomically; returns ``{"url", "path", "size", "sha256", ...}``.

    Args:
        expected_size / expected_sha256: checked before the rename when known.
        max_bytes: refuse bodies larger than this (announced or received).
        timeout: seconds per connection/read; retries: extra attempts after transient
            failures, waiting ``backoff * 2**attempt`` seconds (capped at 60) in between.
        progress: a tqdm bar on stderr. expect_binary: refuse HTML bodies.
        preset: the preset name used in error messages' ``keras-clmr convert`` hint.
    """
    fix = manual_fix(url, preset)
    if is_offline():
        raise OfflineError(
            f"Offline mode is on (KERAS_CLMR_OFFLINE / HF_HUB_OFFLINE), so {url} is not "
            f"downloaded: {fix}, or unset the variable.",
            url,
        )
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise DownloadError(f"Only http(s) URLs are downloaded, got {url!r}.", url)
    dest = os.path.abspath(os.fspath(dest))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    part = dest + ".part"
    attempts, restarts, resumed_from, failures = 0, 0, 0, []
    while True:
        offset = os.path.getsize(part) if os.path.exists(part) else 0
        if offset and (
            (expected_size is not None and offset >= expected_size) or offset >= max_bytes
        ):
            _remove(part)  # cannot be a proper prefix of the file we want
            offset = 0
        if offset and not resumed_from:
            resumed_from = offset
        attempts += 1
        try:
            outcome = _attempt(
                url,
                part,
                offset=offset,
                expected_size=expected_size,
                max_bytes=max_bytes,
                timeout=timeout,
                progress=progress,
                expect_binary=expect_binary,
                fix=fix,
            )
        except _Transient as error:
            failures.append(str(error))
            if attempts > retries:
                raise RetriesExhaustedError(
                    f"Downloading {url} failed {attempts} times ({'; '.join(failures[-3:])}). "
                    f"Check the network and run again (the partial download is kept and resumed), "
                    f"or {fix}.",
                    url,
                ) from error
            sleep(min(60.0, backoff * 2 ** (attempts - 1)))
            continue
        except DownloadError:
            _remove(part)
            raise
        if outcome == "restart":
            _remove(part)
            restarts += 1
            if restarts > 2:
                raise DownloadError(f"{url} does not serve consistent byte ranges; {fix}.", url)
            continue
        break

    size = os.path.getsize(part)
    if expected_size is not None and size != expected_size:
        _remove(part)
        raise DownloadSizeError(
            f"{url} gave {size:,} bytes but {expected_size:,} were expected; {fix}.", url
        )
    digest = hashlib.sha256()
    with open(part, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    sha256 = digest.hexdigest()
    if expected_sha256 is not None and sha256 != expected_sha256.lower():
        _remove(part)
        raise ChecksumError(
            f"{url} has sha256 {sha256}, expected {expected_sha256}: the file changed or was "
            f"corrupted in transit. Nothing was kept; try again, or {fix} (only if you trust "
            f"the new file).",
            url,
        )
    make_readable(part)
    os.replace(part, dest)
    fsync_directory(os.path.dirname(dest))
    return {
        "url": url,
        "path": dest,
        "size": size,
        "sha256": sha256,
        "attempts": attempts,
        "resumed_from": resumed_from,
    }


__all__ = [
    "ChecksumError",
    "DownloadError",
    "DownloadSizeError",
    "HTTPStatusError",
    "OfflineError",
    "RetriesExhaustedError",
    "UnexpectedContentError",
    "download",
    "is_offline",
    "manual_fix",
]
