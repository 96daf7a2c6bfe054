"""A small HTTP/1.1 client for talking to backends, built for a proxy's hot path.

Why not urllib3: per request it costs about 330 µs of CPU here (two send
calls, and http.client parses headers with the email package), against about
40 µs for this client, which sends each request in one write, parses only the
status line and headers, and hands the body on as it arrives (chunked bodies
are de-framed on the fly, so SSE events pass through one by one). Measured
with bench/proxy_bench.py; see docs/benchmarks.md.

It does only what a reverse proxy needs: keep-alive pools per backend,
Content-Length, chunked and close-delimited bodies, HEAD/1xx/204/304,
connect and read timeouts, TLS through the ssl module, and one transparent
retry when a pooled connection turns out to have been closed by the backend
before it read anything. Status line, headers and body framing are read by
llmlbd/wire.py, shared with the collector's client.
"""

from __future__ import annotations

import socket
import ssl
from collections import deque
from collections.abc import Iterator

from llmlbd.sockets import send_all
from llmlbd.wire import MAX_HEAD_BYTES, FramingError, iter_chunked, iter_length, parse_head

__all__ = ["Endpoint", "Response", "ConnectFailure", "UpstreamReadTimeout", "BodyError"]

READ_SIZE = 65536
NO_BODY_STATUSES = frozenset({204, 304})


class ConnectFailure(Exception):
    """The backend could not be reached or dropped the connection before answering."""


class UpstreamReadTimeout(Exception):
    """The backend accepted the request but said nothing for read_timeout_s."""


class BodyError(OSError):
    """The response body broke off (connection lost, timeout, bad framing)."""


class _Connection:
    __slots__ = ("buf", "reused", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.reused = False

    def fill(self) -> bool:
        """Read what the socket has into the buffer; False at end of stream."""
        data = self.sock.recv(READ_SIZE)
        if not data:
            return False
        self.buf += data
        return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Endpoint:
    """One backend: where it is, and a pool of idle keep-alive connections to it."""

    def __init__(
        self,
        url_host: str,
        port: int,
        tls: bool,
        connect_timeout_s: float,
        read_timeout_s: float,
        pool_size: int,
    ) -> None:
        self.host = url_host
        self.port = port
        self.host_header = url_host if port in (80, 443) else f"{url_host}:{port}"
        if ":" in url_host and not url_host.startswith("["):  # IPv6 literal
            self.host_header = f"[{url_host}]:{port}"
        self.tls = ssl.create_default_context() if tls else None
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.pool_size = pool_size
        self.idle: deque[_Connection] = deque()

    def _connect(self) -> _Connection:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        except OSError as exc:
            raise ConnectFailure(
                f"cannot connect to {self.host_header}: {exc.strerror or exc}"
            ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            except OSError as exc:
                sock.close()
                raise ConnectFailure(
                    f"TLS handshake with {self.host_header} failed: {exc}"
                ) from None
        sock.settimeout(self.read_timeout_s)
        return _Connection(sock)

    def _checkout(self) -> _Connection:
        while self.idle:
            conn = self.idle.pop()  # most recently used: the least likely to be timed out
            conn.reused = True
            return conn
        return self._connect()

    def checkin(self, conn: _Connection) -> None:
        if len(self.idle) < self.pool_size and not conn.buf:
            self.idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()

    def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None
    ) -> Response:
        """Send the request and return once the status line and headers arrived."""
        head = [f"{method} {target} HTTP/1.1\r\nHost: {self.host_header}\r\n"]
        for name, value in headers.items():
            head.append(f"{name}: {value}\r\n")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body or b'')}\r\n")
        head.append("\r\n")
        payload = "".join(head).encode("latin-1") + (body or b"")
        for attempt in (1, 2):
            conn = self._checkout()
            try:
                send_all(conn.sock, payload)
                status, reason, response_headers, http10 = self._read_head(conn)
            except _StaleConnection:
                conn.close()
                if attempt == 1:
                    continue  # the backend had closed this idle connection: use a new one
                raise ConnectFailure(
                    f"{self.host_header} closed the connection without answering"
                ) from None
            except BaseException:
                conn.close()
                raise
            return Response(self, conn, method, status, reason, response_headers, http10)
        raise AssertionError("unreachable")

    def _read_head(self, conn: _Connection) -> tuple[int, str, list[tuple[str, str]], bool]:
        got_bytes = False
        while True:
            end = conn.buf.find(b"\r\n\r\n")
            while end == -1:
                if len(conn.buf) > MAX_HEAD_BYTES:
                    raise ConnectFailure(
                        f"{self.host_header} sent response headers over {MAX_HEAD_BYTES} bytes"
                    )
                try:
                    more = conn.fill()
                except TimeoutError:
                    raise UpstreamReadTimeout(
                        f"{self.host_header} sent no response within {self.read_timeout_s:g} s"
                    ) from None
                except OSError as exc:
                    if conn.reused and not got_bytes:
                        raise _StaleConnection() from None
                    raise ConnectFailure(f"{self.host_header}: {exc.strerror or exc}") from None
                if not more:
                    if conn.reused and not got_bytes:
                        raise _StaleConnection()
                    raise ConnectFailure(
                        f"{self.host_header} closed the connection before answering"
                    )
                got_bytes = True
                end = conn.buf.find(b"\r\n\r\n")
            head = bytes(conn.buf[:end])
            del conn.buf[: end + 4]
            try:
                version, status, reason, headers = parse_head(head)
            except FramingError:
                raise ConnectFailure(f"{self.host_header} sent a malformed status line") from None
            if 100 <= status < 200 and status != 101:
                continue  # interim response (103 Early Hints): the real one follows
            return status, reason, headers, version == "HTTP/1.0"


class _StaleConnection(Exception):
    """A pooled connection was closed by the backend before it read our request."""


class Response:
    """A backend's response whose body is read as it arrives."""

    def __init__(
        self,
        endpoint: Endpoint,
        conn: _Connection,
        method: str,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        http10: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.conn: _Connection | None = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        lowered = {name.lower(): value for name, value in self.headers}
        self.chunked = "chunked" in lowered.get("transfer-encoding", "").lower()
        length = lowered.get("content-length")
        self.length = int(length) if length and length.isdigit() else None
        connection = lowered.get("connection", "").lower()
        self.keep_alive = "close" not in connection and (not http10 or "keep-alive" in connection)
        if method == "HEAD" or status in NO_BODY_STATUSES:
            self.chunked, self.length = False, 0
        elif not self.chunked and self.length is None:
            self.keep_alive = False  # the body ends when the backend closes
        self.complete = False

    def body_arrived(self) -> bool:
        """True when body bytes came in with the head (reading on will not wait for long)."""
        return self.conn is not None and bool(self.conn.buf)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def iter_body(self) -> Iterator[bytes]:
        """Yield the body as it arrives; raise BodyError if it breaks off."""
        conn = self.conn
        assert conn is not None
        try:
            if self.chunked:
                yield from iter_chunked(conn)
            elif self.length is not None:
                yield from iter_length(conn, self.length)
            else:
                while True:
                    if conn.buf:
                        piece = bytes(conn.buf)
                        conn.buf.clear()
                        yield piece
                    if not conn.fill():
                        break
        except FramingError as exc:
            raise BodyError(str(exc)) from None
        except TimeoutError:
            raise BodyError(f"no body bytes for {self.endpoint.read_timeout_s:g} s") from None
        except OSError as exc:
            raise BodyError(str(exc.strerror or exc)) from None
        self.complete = True

    def release(self) -> None:
        """Done with the response: pool the connection if the body was read whole."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if self.complete and self.keep_alive:
            conn.reused = False
            self.endpoint.checkin(conn)
        else:
            conn.close()  # also tells the backend to stop generating

    def discard(self) -> None:
        """Read and drop a short body (an error answer) so the connection can be reused."""
        try:
            for _ in self.iter_body():
                pass
        except BodyError:
            pass
        self.release()
