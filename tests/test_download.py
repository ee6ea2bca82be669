"""keras_clmr.download against a real HTTP server on 127.0.0.1 (started here, in a thread)."""

import hashlib
import http.server
import os
import socket
import threading

import pytest

from keras_clmr import download as dl

BODY = bytes(range(256)) * 4096  # 1 MiB of binary data that does not start with "<"
SHA = hashlib.sha256(BODY).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status, body, content_type="application/octet-stream", headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_ranged(self, body):
        header = self.headers.get("Range")
        if header and header.startswith("bytes=") and header.endswith("-"):
            start = int(header[len("bytes=") : -1])
            if start >= len(body):
                return self._send(416, b"", headers={"Content-Range": f"bytes */{len(body)}"})
            return self._send(
                206,
                body[start:],
                headers={"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"},
            )
        return self._send(200, body)

    def _cut(self, body, keep):
        """Announce the (rest of the) body, send ``keep`` bytes of it, then drop the connection."""
        header = self.headers.get("Range")
        start = int(header[len("bytes=") : -1]) if header else 0
        self.send_response(206 if header else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) - start))
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        self.wfile.write(body[start : start + keep])
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        count = sum(1 for path, _ in server.requests if path == self.path)
        if self.path == "/asset.pt":
            return self._send_ranged(BODY)
        if self.path == "/no-range.pt":
            return self._send(200, BODY)
        if self.path == "/cut-once.pt":
            return self._cut(BODY, len(BODY) // 3) if count == 1 else self._send_ranged(BODY)
        if self.path == "/always-cut.pt":
            return self._cut(BODY, 1000)
        if self.path == "/flaky.pt":
            return self._send(503, b"busy") if count <= 2 else self._send_ranged(BODY)
        if self.path == "/always-500.pt":
            return self._send(500, b"oops")
        if self.path == "/html.pt":
            return self._send(
                200, b"<!DOCTYPE html><html>rate limited</html>", "text/html; charset=utf-8"
            )
        if self.path == "/html-as-binary.pt":
            return self._send(200, b"  <html><body>Sign in</body></html>")
        if self.path == "/forbidden.pt":
            return self._send(403, b"no")
        return self._send(404, b"not found", "text/plain")


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.requests = []
    httpd.daemon_threads = True  # do not wait for handlers blocked on a dropped client
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def online(monkeypatch):
    for name in dl.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _get(server, path, dest, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("backoff", 0.0)
    kwargs.setdefault("timeout", 20)
    return dl.download(server.url + path, dest, **kwargs)


def _nothing_left(dest):
    return not os.path.exists(dest) and not os.path.exists(str(dest) + ".part")


def test_full_download(server, tmp_path):
    dest = tmp_path / "cache" / "asset.pt"
    info = _get(server, "/asset.pt", dest, expected_size=len(BODY), expected_sha256=SHA)
    assert dest.read_bytes() == BODY
    assert info["sha256"] == SHA and info["size"] == len(BODY) and info["attempts"] == 1
    assert not os.path.exists(str(dest) + ".part")
    assert server.requests == [("/asset.pt", None)]


def test_progress_bar_goes_to_stderr(server, tmp_path, capsys):
    _get(server, "/asset.pt", tmp_path / "asset.pt", progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "asset.pt" in captured.err


def test_resume_partial_download(server, tmp_path):
    dest = tmp_path / "asset.pt"
    (tmp_path / "asset.pt.part").write_bytes(BODY[:300_000])
    info = _get(server, "/asset.pt", dest, expected_sha256=SHA)
    assert dest.read_bytes() == BODY
    assert server.requests == [("/asset.pt", "bytes=300000-")]
    assert info["resumed_from"] == 300_000


def test_resume_when_server_ignores_range(server, tmp_path):
    dest = tmp_path / "asset.pt"
    (tmp_path / "asset.pt.part").write_bytes(b"\x00" * 5000)  # not even a prefix of the body
    _get(server, "/no-range.pt", dest, expected_sha256=SHA)
    assert dest.read_bytes() == BODY
    assert server.requests == [("/no-range.pt", "bytes=5000-")]


def test_part_at_full_size_is_not_trusted(server, tmp_path):
    """A .part as long as the file is never renamed unchecked: it is fetched again."""
    dest = tmp_path / "asset.pt"
    (tmp_path / "asset.pt.part").write_bytes(b"\x00" * len(BODY))
    _get(server, "/asset.pt", dest, expected_size=len(BODY), expected_sha256=SHA)
    assert dest.read_bytes() == BODY


def test_range_not_satisfiable_restarts(server, tmp_path):
    dest = tmp_path / "asset.pt"
    (tmp_path / "asset.pt.part").write_bytes(b"\x00" * (len(BODY) + 10))  # longer than the file
    _get(server, "/asset.pt", dest)
    assert dest.read_bytes() == BODY
    assert [r for _, r in server.requests] == [f"bytes={len(BODY) + 10}-", None]


def test_disconnect_mid_transfer_then_resume(server, tmp_path):
    dest = tmp_path / "asset.pt"
    slept = []
    info = _get(server, "/cut-once.pt", dest, expected_sha256=SHA, backoff=0.5, sleep=slept.append)
    assert dest.read_bytes() == BODY
    assert info["attempts"] == 2 and slept == [0.5]
    assert server.requests == [("/cut-once.pt", None), ("/cut-once.pt", f"bytes={len(BODY) // 3}-")]


def test_transient_5xx_is_retried_with_backoff(server, tmp_path):
    slept = []
    _get(server, "/flaky.pt", tmp_path / "asset.pt", backoff=1.0, sleep=slept.append)
    assert (tmp_path / "asset.pt").read_bytes() == BODY
    assert slept == [1.0, 2.0]


def test_retries_exhausted(server, tmp_path):
    dest = tmp_path / "asset.pt"
    slept = []
    with pytest.raises(dl.RetriesExhaustedError) as error:
        _get(server, "/always-500.pt", dest, retries=3, sleep=slept.append, backoff=1.0)
    assert len(server.requests) == 4 and slept == [1.0, 2.0, 4.0]
    message = str(error.value)
    assert "/always-500.pt" in message and "HTTP 500" in message and "keras-clmr convert" in message
    assert _nothing_left(dest)


def test_retries_exhausted_keeps_the_part_for_resume(server, tmp_path):
    dest = tmp_path / "asset.pt"
    with pytest.raises(dl.RetriesExhaustedError, match="connection"):
        _get(server, "/always-cut.pt", dest, retries=1)
    assert not dest.exists()
    part = tmp_path / "asset.pt.part"
    assert part.read_bytes() == BODY[:2000]  # two attempts of 1000 bytes, the second resumed
    assert [r for _, r in server.requests] == [None, "bytes=1000-"]


def test_connection_refused_is_transient(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(dl.RetriesExhaustedError, match="Refused|refused"):
        dl.download(
            f"http://127.0.0.1:{port}/x.pt", tmp_path / "x.pt", retries=1, backoff=0, progress=False
        )


@pytest.mark.parametrize("path,status", [("/missing.pt", 404), ("/forbidden.pt", 403)])
def test_client_errors_fail_at_once(server, tmp_path, path, status):
    dest = tmp_path / "asset.pt"
    (tmp_path / "asset.pt.part").write_bytes(BODY[:10])
    with pytest.raises(dl.HTTPStatusError) as error:
        _get(server, path, dest, retries=5)
    assert error.value.status == status and len(server.requests) == 1
    assert path in str(error.value) and "keras-clmr convert --input FILE" in str(error.value)
    assert _nothing_left(dest)


@pytest.mark.parametrize("path", ["/html.pt", "/html-as-binary.pt"])
def test_html_page_with_status_200_is_refused(server, tmp_path, path):
    dest = tmp_path / "asset.pt"
    with pytest.raises(dl.UnexpectedContentError, match="instead of the file"):
        _get(server, path, dest, preset="clmr-mtat")
    assert _nothing_left(dest)
    assert len(server.requests) == 1


def test_wrong_announced_size(server, tmp_path):
    dest = tmp_path / "asset.pt"
    with pytest.raises(dl.DownloadSizeError, match="expected"):
        _get(server, "/asset.pt", dest, expected_size=len(BODY) - 1)
    assert _nothing_left(dest)


def test_size_cap(server, tmp_path):
    dest = tmp_path / "asset.pt"
    with pytest.raises(dl.DownloadSizeError, match="limit"):
        _get(server, "/asset.pt", dest, max_bytes=len(BODY) // 2)
    assert _nothing_left(dest)


def test_checksum_mismatch(server, tmp_path):
    dest = tmp_path / "asset.pt"
    dest.write_bytes(b"previous good file")
    with pytest.raises(dl.ChecksumError, match="sha256"):
        _get(server, "/asset.pt", dest, expected_sha256="0" * 64)
    assert dest.read_bytes() == b"previous good file"  # never replaced by a bad download
    assert not os.path.exists(str(dest) + ".part")


@pytest.mark.parametrize("variable", ["KERAS_CLMR_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline(server, tmp_path, monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    with pytest.raises(dl.OfflineError) as error:
        _get(server, "/asset.pt", tmp_path / "asset.pt", preset="clmr-mtat")
    message = str(error.value)
    assert server.url + "/asset.pt" in message
    assert "keras-clmr convert --input FILE --preset clmr-mtat" in message
    assert server.requests == []


def test_only_http_urls(tmp_path):
    with pytest.raises(dl.DownloadError, match="http"):
        dl.download("file:///etc/passwd", tmp_path / "x", progress=False)
