"""The one fake HTTP server of the tests: real sockets, scripted behaviour.

`llmlbd sim` is the realistic backend; this is for wire-level and failure scripting.
Three faces, one module:

* `ScriptedServer(*replies, then=...)`: a thread answering each request with the next
  scripted raw reply (bytes, pieces sent with pauses, a hang-up, silence), for
  framing and retry tests of llmlbd's own HTTP clients.
* `PageServer`: a thread playing a model server's /metrics, /health and /v1/models
  whose behaviour changes while it runs (another page, 503, hang, a cut body),
  for the collector.
* `Stub` (run as `python -m tests.fakeserver --port P [--name N] [--model M]`, or
  through tests.harness.StubBackends): a fast OpenAI-compatible process answering
  chat/completions (JSON or SSE), models, health, tokenize, and how many requests
  it serves right now (GET /stub/inflight). Behaviour per request comes from headers:
    x-stub-delay      seconds before the response headers
    x-stub-chunks     number of SSE chunks (default 8)
    x-stub-interval   seconds between SSE chunks (default 0)
    x-stub-status     answer with this status and an error body
    x-stub-abort-after  close the connection after this many SSE chunks
  and for the whole process, until changed: GET /stub/fail?status=503 makes every
  later inference request answer that status (health, models and /stub/* still
  answer 200), GET /stub/fail?status=0 ends it.
"""

from __future__ import annotations

from gevent import monkey

if __name__ == "__main__":
    monkey.patch_all()

import argparse
import json
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import gevent
from gevent.pywsgi import WSGIServer

TEXT_100 = "text/plain; version=1.0.0; charset=utf-8"

# A scripted reply's last piece: hang up after sending the pieces before it.
CLOSE = object()
# A whole scripted reply: hang up without answering.
HANG_UP = None


def http_response(
    status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    """One complete HTTP/1.1 response with a Content-Length body."""
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def closed_port() -> int:
    """A port nothing listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ScriptedServer:
    """Answers each request, on any connection, with the next scripted reply.

    A reply is bytes (sent whole); a list of byte pieces sent *pause* apart (an
    empty list: read the request, answer nothing; a last element CLOSE hangs up
    after the pieces); or HANG_UP (None): close without answering. Once the script
    is spent, *then* answers every request; without it, the connection that sent
    the last reply closes after it.
    *close_after_each* hangs up after every reply. Every connection has its own
    thread, so a client holding one idle connection never blocks another.
    """

    def __init__(
        self,
        *replies: object,
        then: bytes | None = None,
        close_after_each: bool = False,
        pause: float = 0.02,
    ) -> None:
        self.replies = list(replies)
        self.then = then
        self.close_after_each = close_after_each
        self.pause = pause
        self.requests: list[bytes] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with self._lock:
                self.connections += 1
                self._open.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _next_reply(self) -> object:
        with self._lock:
            if self.replies:
                return self.replies.pop(0)
            return self.then

    def _spent(self) -> bool:
        with self._lock:
            return not self.replies and self.then is None

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while True:
                request, buffer = _read_request(conn, buffer)
                if request is None:
                    return
                self.requests.append(request)
                reply = self._next_reply()
                if reply is None:
                    return
                pieces = [reply] if isinstance(reply, bytes) else list(reply)  # type: ignore[call-overload]
                try:
                    for index, piece in enumerate(pieces):
                        if piece is CLOSE:
                            return
                        if index:
                            time.sleep(self.pause)
                        conn.sendall(piece)
                except OSError:
                    return
                if self.close_after_each or self._spent():
                    return

    def close(self) -> None:
        self.replies, self.then = [], None
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() alone does not
        except OSError:
            pass
        self.sock.close()
        with self._lock:
            for conn in self._open:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._accepter.join(5)
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_request(conn: socket.socket, buffer: bytes) -> tuple[bytes | None, bytes]:
    """One whole request (head and Content-Length body) from *conn*; None at its end."""
    try:
        while b"\r\n\r\n" not in buffer:
            data = conn.recv(65536)
            if not data:
                return None, b""
            buffer += data
        end = buffer.index(b"\r\n\r\n") + 4
        length = 0
        for line in buffer[:end].split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip() or 0)
        while len(buffer) < end + length:
            data = conn.recv(65536)
            if not data:
                return None, b""
            buffer += data
    except OSError:
        return None, b""
    return buffer[: end + length], buffer[end + length :]


class Stub:
    def __init__(self, name: str, model: str) -> None:
        self.name = name
        self.model = model
        self.inflight = 0
        self.served = 0
        self.seen_bodies: list[bytes] = []
        self.fail_status = 0  # every inference request answers this status while non-zero

    def __call__(self, environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/stub/fail":
            query = dict(
                p.split("=", 1) for p in environ.get("QUERY_STRING", "").split("&") if "=" in p
            )
            self.fail_status = int(query.get("status", "0"))
            return self._json(start_response, 200, {"fail_status": self.fail_status})
        if path == "/health":
            start_response("200 OK", [("Content-Length", "0")])
            return [b""]
        if path == "/stub/inflight":
            return self._json(
                start_response, 200, {"inflight": self.inflight, "served": self.served}
            )
        if path == "/stub/last_body":
            body = self.seen_bodies[-1] if self.seen_bodies else b""
            start_response(
                "200 OK",
                [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))],
            )
            return [body]
        if path.endswith("/stub/headers"):
            headers = {
                k[5:].lower().replace("_", "-"): v
                for k, v in environ.items()
                if k.startswith("HTTP_")
            }
            return self._json(start_response, 200, headers)
        if path == "/v1/models":
            return self._json(
                start_response,
                200,
                {
                    "object": "list",
                    "data": [
                        {
                            "id": self.model,
                            "object": "model",
                            "owned_by": self.name,
                            "root": self.model,
                            "parent": None,
                        }
                    ],
                },
            )
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        self.seen_bodies = self.seen_bodies[-1:] + [raw]
        self.inflight += 1
        self.served += 1
        try:
            return self._generate(environ, start_response, raw)
        except BaseException:
            self.inflight -= 1
            raise

    def _json(self, start_response, status, payload):
        body = json.dumps(payload).encode()
        start_response(
            f"{status} X",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]

    def _generate(self, environ, start_response, raw):
        delay = float(environ.get("HTTP_X_STUB_DELAY", 0))
        if delay:
            gevent.sleep(delay)
        status = environ.get("HTTP_X_STUB_STATUS") or self.fail_status
        if status:
            self.inflight -= 1
            return self._json(
                start_response,
                int(status),
                {"error": {"message": f"stub error {status}", "type": "stub", "code": int(status)}},
            )
        try:
            request = json.loads(raw) if raw else {}
        except ValueError:
            request = {}
        if not isinstance(request, dict):  # valid JSON but not an object ("0", "[]")
            request = {}
        if environ["PATH_INFO"] == "/tokenize":
            self.inflight -= 1
            return self._json(start_response, 200, {"tokens": [1, 2, 3], "count": 3})
        if request.get("stream"):
            return self._stream(environ, start_response, request)
        self.inflight -= 1
        return self._json(
            start_response,
            200,
            {
                "id": "cmpl-stub",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.get("model", self.model),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hello"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            },
        )

    def _stream(self, environ, start_response, request):
        chunks = int(environ.get("HTTP_X_STUB_CHUNKS", 8))
        interval = float(environ.get("HTTP_X_STUB_INTERVAL", 0))
        abort_after = environ.get("HTTP_X_STUB_ABORT_AFTER")
        start_response(
            "200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
        )
        stub = self

        class Body:
            def __init__(self):
                self.done = False

            def __iter__(self):
                for index in range(chunks):
                    if abort_after is not None and index >= int(abort_after):
                        # Drop the connection mid-stream, as a crashing server would.
                        raise ConnectionAbortedError("stub abort")
                    event = {
                        "id": "chatcmpl-stub",
                        "object": "chat.completion.chunk",
                        "model": request.get("model", stub.model),
                        "choices": [
                            {"index": 0, "delta": {"content": f"t{index} "}, "finish_reason": None}
                        ],
                    }
                    yield b"data: " + json.dumps(event).encode() + b"\n\n"
                    if interval:
                        gevent.sleep(interval)
                final = {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion.chunk",
                    "model": request.get("model", stub.model),
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                }
                yield b"data: " + json.dumps(final).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"
                self.done = True

            def close(self):
                stub.inflight -= 1

        return Body()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        owner.requests.append(self.path)
        if owner.hang_s and self.path != "/v1/models":
            time.sleep(owner.hang_s)
        if self.path == "/metrics":
            body, ctype, status = owner.body, owner.content_type, owner.metrics_status
        elif self.path == "/health":
            body, ctype, status = b"", "text/plain", owner.health_status
        elif self.path == "/v1/models" and owner.models is not None:
            body, ctype, status = owner.models, "application/json", 200
        else:
            body, ctype, status = b'{"detail":"Not Found"}', "application/json", 404
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if owner.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 4096):
                piece = body[i : i + 4096]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        declared = len(body)
        if owner.truncate_at is not None and self.path == "/metrics":
            body = body[: owner.truncate_at]  # promise more than we send, then hang up
            self.close_connection = True
        self.send_header("Content-Length", str(declared))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: PageServer

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        pass  # the collector hanging up on a slow answer (its timeout) is the point of some tests


class PageServer:
    """One fake model server (/metrics, /health, /v1/models) on a free port; `close()` stops it."""

    def __init__(
        self, body: bytes = b"", content_type: str = TEXT_100, models: bytes | None = None
    ) -> None:
        self.body = body
        self.content_type = content_type
        self.models = models
        self.metrics_status = 200
        self.health_status = 200
        self.hang_s = 0.0
        self.truncate_at: int | None = None
        self.chunked = False
        self.requests: list[str] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.hang_s = 0.0
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="stub")
    parser.add_argument("--model", default="stub-model")
    args = parser.parse_args()
    # TCP_NODELAY on the listener (inherited by accepted sockets on Linux): without it,
    # Nagle and delayed ACKs add 40 ms to responses written in two parts.
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(1024)
    server = WSGIServer(listener, Stub(args.name, args.model), log=None, error_log=None)
    server.serve_forever()


if __name__ == "__main__":
    main()
