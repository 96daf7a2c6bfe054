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
before it read anything.
"""

from __future__ import annotations

import socket
import ssl
from collections import deque
from collections.abc import Iterator

from llmlbd.sockets import send_all

__all__ = ["Endpoint", "Response", "ConnectFailure", "UpstreamReadTimeout", "BodyError"]

MAX_HEAD_BYTES = 64 * 1024
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
            head = bytes(conn.buf[:end]).decode("latin-1")
            del conn.buf[: end + 4]
            lines = head.split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise ConnectFailure(f"{self.host_header} sent a malformed status line")
            status = int(parts[1])
            if 100 <= status < 200 and status != 101:
                continue  # interim response (103 Early Hints): the real one follows
            headers = []
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers.append((name.strip(), value.strip()))
            return status, (parts[2] if len(parts) > 2 else ""), headers, parts[0] == "HTTP/1.0"


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
                yield from self._chunked(conn)
            elif self.length is not None:
                remaining = self.length
                while remaining:
                    if not conn.buf and not conn.fill():
                        raise BodyError(
                            f"body cut short: {remaining} of {self.length} bytes missing"
                        )
                    piece = bytes(conn.buf[:remaining])
                    del conn.buf[: len(piece)]
                    remaining -= len(piece)
                    yield piece
            else:
                while True:
                    if conn.buf:
                        piece = bytes(conn.buf)
                        conn.buf.clear()
                        yield piece
                    if not conn.fill():
                        break
        except TimeoutError:
            raise BodyError(f"no body bytes for {self.endpoint.read_timeout_s:g} s") from None
        except BodyError:
            raise
        except OSError as exc:
            raise BodyError(str(exc.strerror or exc)) from None
        self.complete = True

    def _chunked(self, conn: _Connection) -> Iterator[bytes]:
        # Chunks that arrived together leave together (one write to the client instead
        # of one per chunk), but whatever is de-framed is handed on before any wait.
        ready = bytearray()
        while True:
            if ready and b"\r\n" not in conn.buf:
                yield bytes(ready)
                ready.clear()
            line = self._line(conn)
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                if ready:
                    yield bytes(ready)
                raise BodyError(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                if ready:
                    yield bytes(ready)
                while self._line(conn):  # trailers, then the empty line
                    pass
                return
            remaining = size
            while remaining:
                if not conn.buf:
                    if ready:
                        yield bytes(ready)
                        ready.clear()
                    if not conn.fill():
                        raise BodyError("connection closed inside a chunk")
                piece = conn.buf[:remaining]
                del conn.buf[: len(piece)]
                remaining -= len(piece)
                ready += piece
            if ready and len(conn.buf) < 2:
                yield bytes(ready)
                ready.clear()
            if self._line(conn):
                raise BodyError("chunk not followed by CRLF")

    @staticmethod
    def _line(conn: _Connection) -> bytes:
        while True:
            end = conn.buf.find(b"\r\n")
            if end != -1:
                line = bytes(conn.buf[:end])
                del conn.buf[: end + 2]
                return line
            if len(conn.buf) > MAX_HEAD_BYTES:
                raise BodyError("chunk framing line too long")
            if not conn.fill():
                raise BodyError("connection closed inside chunk framing")

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
