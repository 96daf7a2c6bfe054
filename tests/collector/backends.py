"""Real HTTP backends for the collector tests: a thread serving pages on a free port.

Each `PageServer` behaves like a model server's /metrics, /health and
/v1/models, and its behaviour can be changed while it runs (serve another
page, answer 503, hang, cut the body short) to play a flapping or dying
backend. No mocks: the collector talks to it over real sockets.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DATA = Path(__file__).parent / "data"
TEXT_004 = "text/plain; version=0.0.4; charset=utf-8"
TEXT_100 = "text/plain; version=1.0.0; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def page(name: str) -> bytes:
    return (DATA / name).read_bytes()


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
    """One fake model server on 127.0.0.1:<free port>, stopped by `close()`."""

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
