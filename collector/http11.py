"""A small HTTP/1.1 GET client: one keep-alive connection per backend.

Why not requests/urllib3: the collector makes thousands of GETs a second
and each costs requests ~0.5 ms of CPU, more than parsing the page. This
client does only what scraping needs: GET, keep-alive, Content-Length and
chunked bodies, a hard byte cap enforced while reading (an oversized page
is never buffered whole), one deadline for the whole exchange, and gzip
if a server sends it anyway. It uses the ``socket`` module, so under a
gevent-patched process it is cooperative without any change. The status line,
headers and body framing are read by llmlbd/wire.py, shared with the proxy.
"""

from __future__ import annotations

import socket
import ssl
import time
import zlib
from typing import NamedTuple
from urllib.parse import urlsplit

from llmlbd.wire import MAX_HEAD_BYTES, FramingError, iter_chunked, iter_length, parse_head

__all__ = ["HTTPConnection", "Response", "FetchError"]


class FetchError(Exception):
    """A GET that produced no usable response; ``kind`` is a short stable word for metrics."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Response(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class HTTPConnection:
    """GETs against one base URL, reusing one socket while the server keeps it open."""

    def __init__(self, base_url: str, user_agent: str = "llmlbd-collector") -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme in {base_url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/")
        default = 443 if self.tls else 80
        host_header = self.host if ":" not in self.host else f"[{self.host}]"
        self.host_header = host_header if self.port == default else f"{host_header}:{self.port}"
        self.user_agent = user_agent
        self._sock: socket.socket | None = None
        self._ssl: ssl.SSLContext | None = None

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def get(
        self, path: str, timeout: float, max_bytes: int, headers: dict[str, str] | None = None
    ) -> Response:
        """GET *path*; raises FetchError (and drops the connection) on any failure."""
        deadline = time.monotonic() + timeout
        request = self._request(path, headers)
        reused = self._sock is not None
        try:
            return self._exchange(request, deadline, max_bytes)
        except FetchError as exc:
            self.close()
            # A kept-alive socket the server closed while idle fails at once
            # with no byte read: that is not the backend failing, retry fresh.
            if reused and exc.kind == "stale_connection" and time.monotonic() < deadline:
                try:
                    return self._exchange(request, deadline, max_bytes)
                except FetchError:
                    self.close()
                    raise
            raise
        except BaseException:
            self.close()
            raise

    # internals ---------------------------------------------------------------
    def _request(self, path: str, headers: dict[str, str] | None) -> bytes:
        lines = [
            f"GET {self.prefix}{path} HTTP/1.1",
            f"Host: {self.host_header}",
            f"User-Agent: {self.user_agent}",
            "Connection: keep-alive",
        ]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _connect(self, deadline: float) -> socket.socket:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError("timeout", "timed out before connecting")
        try:
            sock = socket.create_connection((self.host, self.port), timeout=remaining)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls:
                if self._ssl is None:
                    self._ssl = ssl.create_default_context()
                sock = self._ssl.wrap_socket(sock, server_hostname=self.host)
        except TimeoutError:
            raise FetchError("timeout", "connect timed out") from None
        except ConnectionRefusedError:
            raise FetchError("refused", "connection refused") from None
        except OSError as exc:
            raise FetchError("connect", f"cannot connect: {exc}") from None
        return sock

    def _exchange(self, request: bytes, deadline: float, max_bytes: int) -> Response:
        fresh = self._sock is None
        if fresh:
            self._sock = self._connect(deadline)
        sock = self._sock
        assert sock is not None
        reader = _Reader(sock, deadline)
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.sendall(request)
            head = reader.until(b"\r\n\r\n", MAX_HEAD_BYTES)
        except FetchError as exc:
            if exc.kind == "closed" and not reader.got_any and not fresh:
                raise FetchError("stale_connection", "kept-alive connection was closed") from None
            raise
        except (BrokenPipeError, ConnectionResetError) as exc:
            if not fresh and not reader.got_any:
                raise FetchError("stale_connection", str(exc)) from None
            raise FetchError("reset", f"connection reset: {exc}") from None
        except OSError as exc:
            raise FetchError("io", str(exc)) from None
        status, version, headers = _parse_head(head)
        try:
            body = self._body(reader, headers, max_bytes)
        except OSError as exc:
            raise FetchError("io", str(exc)) from None
        if headers.get("content-encoding", "").lower() == "gzip":
            body = _gunzip(body, max_bytes)
        keep = headers.get("connection", "").lower()
        if keep == "close" or (version == "HTTP/1.0" and keep != "keep-alive"):
            self.close()
        return Response(status, headers, body)

    def _body(self, reader: _Reader, headers: dict[str, str], max_bytes: int) -> bytes:
        try:
            if "chunked" in headers.get("transfer-encoding", "").lower():
                return b"".join(iter_chunked(reader, max_bytes))
            length = headers.get("content-length")
            if length is not None:
                if not length.isdigit():
                    raise FetchError("bad_response", "bad Content-Length")
                if int(length) > max_bytes:
                    raise FetchError(
                        "too_large", f"page of {length} bytes is larger than {max_bytes}"
                    )
                return b"".join(iter_length(reader, int(length)))
        except FramingError as exc:
            raise FetchError(exc.kind, str(exc)) from None
        # No length: the body runs to the end of the connection.
        body = reader.to_close(max_bytes)
        self.close()
        return body


class _Reader:
    """Buffered reads from a socket against one deadline (a llmlbd.wire Source)."""

    __slots__ = ("buf", "deadline", "got_any", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = bytearray()
        self.got_any = False

    def fill(self) -> bool:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError("timeout", "timed out reading the response")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(262144)
        except TimeoutError:
            raise FetchError("timeout", "timed out reading the response") from None
        if not data:
            return False
        self.got_any = True
        self.buf += data
        return True

    def until(self, marker: bytes, cap: int) -> bytes:
        while True:
            at = self.buf.find(marker)
            if at != -1:
                out = bytes(self.buf[:at])
                del self.buf[: at + len(marker)]
                return out
            if len(self.buf) > cap:
                raise FetchError("bad_response", "response header too long")
            if not self.fill():
                raise FetchError(
                    "closed" if not self.got_any else "truncated", "connection closed mid-response"
                )

    def to_close(self, cap: int) -> bytes:
        while len(self.buf) <= cap and self.fill():
            pass
        if len(self.buf) > cap:
            raise FetchError("too_large", f"page larger than {cap} bytes")
        out = bytes(self.buf)
        self.buf.clear()
        return out


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    try:
        version, status, _, fields = parse_head(head)
    except FramingError as exc:
        raise FetchError(exc.kind, str(exc)) from None
    return status, version, {name.lower(): value for name, value in fields}


def _gunzip(body: bytes, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise FetchError("bad_response", f"bad gzip body: {exc}") from None
    if len(out) > max_bytes:
        raise FetchError("too_large", f"page larger than {max_bytes} bytes once unzipped")
    return out
