"""The client side of a worker: HTTP/1.1 requests read and answered without gunicorn's parser.

gunicorn stays the process manager (arbiter, worker lifecycle, signals,
graceful stop) and its gevent worker still accepts connections; each
connection is then served by `serve()` here instead of gunicorn's parser,
environ builder and Response. Profiled under load (bench/hotpath_profile.py),
gunicorn's per-request handling was the largest share of a plain request's
CPU; this loop does only what the proxy needs:

- the request line and header fields parsed in one pass over the head, with
  gunicorn's limits (request line, field count and size) and its status codes
  for what it rejects (400, 414, 431, 501);
- keep-alive (HTTP/1.1 by default, HTTP/1.0 on request), pipelined requests
  answered in order; `Connection: close` once the worker stops;
- Content-Length and chunked request bodies (read lazily by the app through
  `wsgi.input`, de-framed by llmlbd/wire.py), `Expect: 100-continue`;
- deadlines: the head (client_header_timeout_s, then keepalive_s on a kept-alive
  connection), each body read (client_body_timeout_s) and the whole body
  (client_body_total_s), each response write (client_write_timeout_s);
- responses whose head leaves with the first body bytes (one write for a
  plain answer), chunked when the app gives no Content-Length.

The app is still called as WSGI (`app(environ, start_response)`, an iterable
with `close()` called on every path), so it and its tests see the same
interface as before; environ carries `llmlbd.headers`, the request's header
fields as a dict of lower-case names, so the proxy does not rebuild them.
"""

from __future__ import annotations

import errno
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

import structlog

from llmlbd.sockets import send_all
from llmlbd.wire import FramingError, iter_chunked

__all__ = [
    "BodyClosed",
    "BodyFramingError",
    "BodyTimeout",
    "Refused",
    "Server",
    "write_json_error",
]

log = structlog.get_logger("llmlbd.proxy")

READ_SIZE = 65536
# Bytes of a head (request line and fields) beyond which the request gets 431.
MAX_HEAD_BYTES = 64 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
NO_BODY_STATUSES = frozenset({204, 304})

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# A request target: printable ASCII without spaces (raw non-ASCII bytes are refused, as
# gunicorn did; percent-encoded ones pass).
_TARGET = re.compile(rb"[!-~]+\Z")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# A control byte other than the CR LF pairs that end lines: a head without one (and whose
# CR and LF counts match its lines) needs no per-value check.
_CTL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Header names seen before (bytes -> lower-case str), so a repeated name skips its checks.
_NAMES: dict[bytes, str] = {}
_NAMES_MAX = 1024
# Response header names that passed _NAME (the same bound).
_GOOD_NAMES: set[str] = set()
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")

# Status -> (reason, code) for the requests this loop refuses itself.
_CODES = {
    400: ("Bad Request", "invalid_request"),
    408: ("Request Timeout", "request_timeout"),
    414: ("Request-URI Too Long", "uri_too_long"),
    417: ("Expectation Failed", "expectation_failed"),
    431: ("Request Header Fields Too Large", "headers_too_large"),
    500: ("Internal Server Error", "internal_error"),
    501: ("Not Implemented", "not_implemented"),
}


class Refused(Exception):
    """A request this loop answers itself (its head cannot be parsed); the connection ends."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BodyTimeout(TimeoutError):
    """The client sent no body bytes for client_body_timeout_s, or not the whole body
    within client_body_total_s (`total`)."""

    def __init__(self, seconds: float, total: bool) -> None:
        super().__init__(seconds)
        self.seconds = seconds
        self.total = total


class BodyClosed(Exception):
    """The client closed the connection before the end of the body."""


class BodyFramingError(Exception):
    """A chunked request body whose framing is invalid."""


def write_json_error(sock: Any, status: int, message: str) -> None:
    """An answer to a request that never reached the app: OpenAI-shaped JSON with a
    request id, and its request-log line; the connection is closed after it."""
    request_id = _error_ids.next()
    reason, code = _CODES.get(status, ("Error", "internal_error"))
    kind = "invalid_request_error" if status < 500 else "internal_error"
    body = json.dumps(
        {"error": {"message": message or reason, "type": kind, "code": code, "param": None}}
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"x-llmlbd-request-id: {request_id}\r\n\r\n"
    )
    log.info("request_done", request_id=request_id, status=status, outcome=code)
    try:
        send_all(sock, head.encode("latin-1") + body)
    except OSError:
        pass


class _Ids:
    """Request ids for answers given before the app: 32 hex digits, like the app's."""

    def __init__(self) -> None:
        import secrets

        self.prefix = secrets.token_hex(8)
        self.count = 0

    def next(self) -> str:
        self.count += 1
        return f"{self.prefix}{self.count:016x}"


_error_ids = _Ids()


class Conn:
    """One client connection: its socket and the bytes read but not yet consumed.

    `fill()` is the `Source` of llmlbd/wire.py; while a deadline is set, each
    read waits at most until it (or `read_timeout`, whichever is sooner).
    """

    __slots__ = ("addr", "buf", "deadline", "read_timeout", "sock", "total_s")

    def __init__(self, sock: Any, addr: Any) -> None:
        self.sock = sock
        self.addr = addr
        self.buf = bytearray()
        self.deadline = 0.0  # monotonic time; 0: none
        self.read_timeout = 0.0
        self.total_s = 0.0

    def fill(self) -> bool:
        timeout = self.read_timeout
        if self.deadline:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise BodyTimeout(self.total_s, True)
            if left < timeout:
                timeout = left
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(READ_SIZE)
        except TimeoutError:
            if self.deadline and time.monotonic() >= self.deadline - 0.001:
                raise BodyTimeout(self.total_s, True) from None
            raise
        if not data:
            return False
        self.buf += data
        return True


class Body:
    """`wsgi.input`: the request body, read lazily with the client body deadlines."""

    def __init__(
        self,
        conn: Conn,
        length: int | None,
        send_continue: bool,
        read_timeout_s: float,
        total_s: float,
        after: float,
    ) -> None:
        self.conn = conn
        self.remaining = length  # None: chunked
        self.send_continue = send_continue
        self.read_timeout_s = read_timeout_s
        self.total_s = total_s
        self.after = after  # the socket timeout to put back (the write deadline)
        self.done = length == 0
        self._chunks: Iterator[bytes] | None = None
        self._left = b""

    def read(self, size: int = -1) -> bytes:
        if self.done:
            return b""
        conn = self.conn
        if self.send_continue:
            self.send_continue = False
            if not conn.buf:
                send_all(conn.sock, CONTINUE)
        conn.read_timeout = self.read_timeout_s
        conn.total_s = self.total_s
        conn.deadline = time.monotonic() + self.total_s
        try:
            if self.remaining is not None:
                return self._read_length(size)
            return self._read_chunked(size)
        except BodyTimeout:
            raise
        except TimeoutError:
            raise BodyTimeout(self.read_timeout_s, False) from None
        finally:
            conn.deadline = 0.0
            conn.sock.settimeout(self.after)

    def skip_buffered(self) -> bool:
        """Drop an unread Content-Length body that has arrived whole; False if it cannot."""
        remaining = self.remaining
        if remaining is None or self.send_continue or len(self.conn.buf) < remaining:
            return False
        del self.conn.buf[:remaining]
        self.remaining = 0
        self.done = True
        return True

    def _read_length(self, size: int) -> bytes:
        assert self.remaining is not None
        want = self.remaining if size < 0 else min(size, self.remaining)
        conn = self.conn
        buf = conn.buf
        while len(buf) < want:
            if not conn.fill():
                raise BodyClosed("the client closed the connection before the end of the body")
        data = bytes(buf[:want])
        del buf[:want]
        self.remaining -= want
        if not self.remaining:
            self.done = True
        return data

    def _read_chunked(self, size: int) -> bytes:
        if self._chunks is None:
            self._chunks = iter_chunked(self.conn)
        out = bytearray(self._left)
        self._left = b""
        try:
            while size < 0 or len(out) < size:
                piece = next(self._chunks, None)
                if piece is None:
                    self.done = True
                    break
                out += piece
        except FramingError as exc:
            if exc.kind == "truncated":
                raise BodyClosed(str(exc)) from None
            raise BodyFramingError(str(exc)) from None
        if size >= 0 and len(out) > size:
            self._left = bytes(out[size:])
            del out[size:]
        return bytes(out)


class Server:
    """One worker's request loop; `serve(sock, addr)` runs per connection (a greenlet)."""

    def __init__(self, worker: Any, app: Callable[..., Iterable[bytes]], server: Any) -> None:
        self.worker = worker
        self.app = app
        cfg = worker.cfg
        self.keepalive_s = float(cfg.keepalive)
        self.header_timeout_s: float = server.client_header_timeout_s
        self.body_timeout_s: float = server.client_body_timeout_s
        self.body_total_s: float = server.client_body_total_s
        self.write_timeout_s: float = server.client_write_timeout_s
        self.max_line = cfg.limit_request_line or MAX_HEAD_BYTES
        self.max_fields = cfg.limit_request_fields or 32768
        self.max_field_size = cfg.limit_request_field_size or MAX_HEAD_BYTES
        self.post_request = cfg.post_request
        self.date = _DateHeader()

    # the connection loop ------------------------------------------------------------------
    def serve(self, sock: Any, addr: Any) -> None:
        conn = Conn(sock, addr)
        remote = addr[0] if isinstance(addr, tuple) and addr else ""
        first = True
        try:
            while True:
                head_s = self.header_timeout_s if first else self.keepalive_s
                first = False
                try:
                    head = self._read_head(conn, head_s)
                    if head is None:
                        return
                    environ, keep_alive, body = self._environ(conn, head, remote)
                except Refused as refused:
                    write_json_error(sock, refused.status, str(refused))
                    return
                if not self._answer(conn, environ, keep_alive, body, remote):
                    return
                if not self.worker.alive or not self.keepalive_s:
                    return
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, None):
                log.warning("client_socket_error", error=str(exc))
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def _read_head(self, conn: Conn, seconds: float) -> bytes | None:
        """The next head (without its blank line), or None when the client is gone or silent."""
        buf = conn.buf
        end = buf.find(b"\r\n\r\n")
        if end == -1:
            deadline = time.monotonic() + seconds
            sock = conn.sock
            while end == -1:
                if len(buf) > MAX_HEAD_BYTES:
                    raise Refused(431, "the request headers are too large")
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                sock.settimeout(left)
                try:
                    data = sock.recv(READ_SIZE)
                except TimeoutError:
                    return None
                except OSError:
                    return None
                if not data:
                    if buf.strip():
                        log.debug("client_closed_inside_head")
                    return None
                buf += data
                # Empty lines before a request line are allowed (RFC 9112 2.2).
                while buf[:2] == b"\r\n":
                    del buf[:2]
                end = buf.find(b"\r\n\r\n")
        head = bytes(buf[:end])
        del buf[: end + 4]
        return head

    def _answer(
        self,
        conn: Conn,
        environ: dict[str, Any],
        keep_alive: bool,
        body: Body | None,
        remote: str,
    ) -> bool:
        """Serve one request; True when the connection may carry another."""
        sock = conn.sock
        sock.settimeout(self.write_timeout_s)
        worker = self.worker
        out = _Out(self, sock, environ, keep_alive and worker.alive, body)
        result: Iterable[bytes] | None = None
        try:
            result = self.app(environ, out.start_response)
            for piece in result:
                out.write(piece)
            out.finish()
        except TimeoutError:
            log.info("client_write_timeout", peer=remote)
            out.keep_alive = False
        except OSError:
            out.keep_alive = False  # the client went away mid-response
        except Exception:
            if out.head_sent:
                log.exception("response_failed")
            else:
                log.exception("unhandled_error", path=environ.get("PATH_INFO"))
                write_json_error(sock, 500, "internal error in llmlbd")
            out.keep_alive = False
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("response_close_failed")
            try:
                self.post_request(self.worker, None, environ, None)
            except Exception:
                log.exception("post_request_failed")
        worker.nr += 1
        if worker.nr >= worker.max_requests and worker.alive:
            log.info("worker_restarting", reason="max_requests reached")
            worker.alive = False
        return out.keep_alive

    def _environ(self, conn: Conn, raw: bytes, remote: str) -> tuple[dict[str, Any], bool, Any]:
        lines = raw.split(b"\r\n")
        line = lines[0]
        if len(line) > self.max_line:
            raise Refused(414, f"the request line is over {self.max_line} bytes")
        parts = line.split(b" ")
        if len(parts) != 3:
            raise Refused(400, f"malformed request line {line[:60]!r}")
        method_b, target_b, version_b = parts
        if not _TOKEN.match(method_b):
            raise Refused(400, f"invalid method {method_b[:20]!r}")
        if version_b == b"HTTP/1.1":
            http10 = False
        elif version_b == b"HTTP/1.0":
            http10 = True
        else:
            raise Refused(400, f"unsupported HTTP version {version_b[:20]!r}")
        if not _TARGET.match(target_b):
            raise Refused(400, "the request target has bytes that are not printable ASCII")
        if len(lines) - 1 > self.max_fields:
            raise Refused(431, f"more than {self.max_fields} header fields")
        headers: dict[str, str] = {}
        max_field = self.max_field_size
        separators = len(lines) - 1
        clean = (
            raw.count(b"\n") == separators
            and raw.count(b"\r") == separators
            and _CTL.search(raw) is None
        )
        names = _NAMES
        for field in lines[1:]:
            if len(field) > max_field:
                raise Refused(431, f"a header field is over {max_field} bytes")
            name_b, sep, value_b = field.partition(b":")
            name = names.get(name_b) if sep else None
            if name is None:
                if not sep or not _TOKEN.match(name_b):
                    if field[:1] in (b" ", b"\t"):
                        raise Refused(400, "obsolete line folding in the headers")
                    raise Refused(400, f"invalid header field {field[:40]!r}")
                name = name_b.decode("ascii").lower()
                if len(names) < _NAMES_MAX:
                    names[name_b] = name
            value = value_b.strip(b" \t").decode("latin-1")
            if not clean and _BAD_VALUE.search(value):
                raise Refused(400, f"invalid characters in header {name}")
            previous = headers.get(name)
            if previous is not None:
                if name == "content-length":
                    if previous != value:
                        raise Refused(400, "conflicting Content-Length headers")
                    continue
                value = f"{previous},{value}"
            headers[name] = value
        method = method_b.decode("ascii")
        target = target_b.decode("ascii")
        if target[0] != "/":
            if "://" in target:  # absolute-form: keep the path
                rest = target.split("://", 1)[1]
                slash = rest.find("/")
                target = rest[slash:] if slash != -1 else "/"
            elif target != "*":
                raise Refused(400, f"invalid request target {target[:60]!r}")
        path, _, query = target.partition("?")
        path, _, _ = path.partition("#")
        if "%" in path:
            path = unquote_to_bytes(path).decode("latin-1")

        connection = headers.get("connection", "").lower()
        keep_alive = "keep-alive" in connection if http10 else "close" not in connection

        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "RAW_URI": target,
            "SERVER_PROTOCOL": "HTTP/1.0" if http10 else "HTTP/1.1",
            "REMOTE_ADDR": remote,
            "wsgi.url_scheme": "http",
            "llmlbd.headers": headers,
            "gunicorn.socket": conn.sock,
        }
        host = headers.get("host")
        if host is not None:
            environ["HTTP_HOST"] = host
        auth = headers.get("authorization")
        if auth is not None:
            environ["HTTP_AUTHORIZATION"] = auth
        content_type = headers.get("content-type")
        if content_type is not None:
            environ["CONTENT_TYPE"] = content_type

        te = headers.get("transfer-encoding")
        length_text = headers.get("content-length")
        body: Body | None = None
        expect = headers.get("expect")
        send_continue = False
        if expect is not None:
            if expect.lower() != "100-continue":
                raise Refused(417, f"unsupported expectation {expect[:40]!r}")
            send_continue = not http10
        if te is not None:
            if length_text is not None:
                raise Refused(400, "both Transfer-Encoding and Content-Length")
            codings = [c.strip().lower() for c in te.split(",")]
            if codings[-1] != "chunked" or codings.count("chunked") != 1 or http10:
                raise Refused(501, f"unsupported Transfer-Encoding {te[:40]!r}")
            if len(codings) > 1:
                raise Refused(501, f"unsupported Transfer-Encoding {te[:40]!r}")
            body = Body(
                conn,
                None,
                send_continue,
                self.body_timeout_s,
                self.body_total_s,
                self.write_timeout_s,
            )
        elif length_text is not None:
            if not length_text.isdigit() or not length_text.isascii():
                raise Refused(400, f"invalid Content-Length {length_text[:20]!r}")
            environ["CONTENT_LENGTH"] = length_text
            length = int(length_text)
            if length:
                body = Body(
                    conn,
                    length,
                    send_continue,
                    self.body_timeout_s,
                    self.body_total_s,
                    self.write_timeout_s,
                )
        environ["wsgi.input"] = body if body is not None else _EMPTY
        return environ, keep_alive, body


class _Empty:
    done = True

    def read(self, size: int = -1) -> bytes:
        return b""


_EMPTY = _Empty()


class _Out:
    """One response: start_response, then the body pieces; the head leaves with the first."""

    __slots__ = (
        "body",
        "chunked",
        "head",
        "head_sent",
        "headers",
        "http10",
        "keep_alive",
        "no_body",
        "owner",
        "sock",
        "status",
    )

    def __init__(
        self,
        owner: Server,
        sock: Any,
        environ: dict[str, Any],
        keep_alive: bool,
        body: Body | None,
    ) -> None:
        self.owner = owner
        self.body = body
        self.sock = sock
        self.keep_alive = keep_alive
        self.no_body = environ["REQUEST_METHOD"] == "HEAD"
        self.http10 = environ["SERVER_PROTOCOL"] == "HTTP/1.0"
        self.head: bytes | None = None
        self.head_sent = False
        self.chunked = False
        self.status = ""
        self.headers: list[tuple[str, str]] = []

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            if self.head_sent:
                raise exc_info[1].with_traceback(exc_info[2])
        elif self.status:
            raise AssertionError("start_response() called twice without exc_info")
        if _BAD_VALUE.search(status) or not status[:3].isdigit():
            raise ValueError(f"invalid status line {status[:40]!r}")
        # One search over every value, and names checked once per worker; the loop below
        # names the culprit only when something is wrong.
        good = _GOOD_NAMES
        clean = _BAD_VALUE.search("".join([value for _, value in headers])) is None
        for name, value in headers:
            if name not in good:
                if not _NAME.match(name):
                    raise ValueError(f"invalid header name {name[:40]!r}")
                if len(good) < _NAMES_MAX:
                    good.add(name)
            if not clean and _BAD_VALUE.search(value):
                raise ValueError(f"invalid characters in the value of header {name}")
        self.status = status
        self.headers = headers
        return self.write

    def _render(self) -> bytes:
        body = self.body
        if body is not None and not body.done and not body.skip_buffered():
            # A body the app did not read, not all here yet: the connection cannot carry
            # another request (its next bytes are this body's).
            self.keep_alive = False
        code = int(self.status[:3])
        has_length = False
        date = True
        lines = [f"HTTP/1.1 {self.status}\r\n"]
        for name, value in self.headers:
            lower = name.lower()
            if lower == "content-length":
                has_length = True
            elif lower == "date":
                date = False
            lines.append(f"{name}: {value}\r\n")
        if not (has_length or self.no_body or code in NO_BODY_STATUSES or code < 200):
            if self.keep_alive and not self.http10:
                self.chunked = True
                lines.append("Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False  # the body ends when the connection does
        if date:
            lines.append(self.owner.date.get())
        lines.append(
            "Connection: keep-alive\r\n\r\n" if self.keep_alive else "Connection: close\r\n\r\n"
        )
        return "".join(lines).encode("latin-1")

    def write(self, data: bytes) -> None:
        if not self.head_sent:
            if not self.status:
                raise AssertionError("write() before start_response()")
            head = self._render()
            self.head_sent = True
            if not data or self.no_body:
                send_all(self.sock, head)  # an empty write asks for the head now (streams)
                return
            send_all(self.sock, head + (self._frame(data) if self.chunked else data))
            return
        if data and not self.no_body:
            send_all(self.sock, self._frame(data) if self.chunked else data)

    @staticmethod
    def _frame(data: bytes) -> bytes:
        return b"%X\r\n%s\r\n" % (len(data), data)

    def finish(self) -> None:
        if not self.head_sent:
            head = self._render()
            self.head_sent = True
            send_all(self.sock, head + b"0\r\n\r\n" if self.chunked else head)
        elif self.chunked:
            send_all(self.sock, b"0\r\n\r\n")


class _DateHeader:
    """The Date header line, rendered once a second."""

    def __init__(self) -> None:
        self.second = -1
        self.line = ""

    def get(self) -> str:
        now = int(time.time())
        if now != self.second:
            from email.utils import formatdate

            self.second = now
            self.line = f"Date: {formatdate(now, usegmt=True)}\r\n"
        return self.line
