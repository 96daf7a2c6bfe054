"""gunicorn's gevent worker with llmlbd's client deadlines (see llmlbd.server.worker.limits)
and responses whose head leaves with the first body bytes (llmlbd.server.worker.onewrite).

The master loads the worker class itself (gunicorn resolves it there), so this
module sits outside llmlbd.server.worker and imports only gunicorn and gevent,
as gunicorn's own gevent worker does.
"""

from __future__ import annotations

import json
import uuid
import weakref
from typing import Any

import gevent
import structlog
from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker

__all__ = ["LLMLBWorker", "write_json_error"]

log = structlog.get_logger("llmlbd.proxy")

# gunicorn's statuses for a request it cannot parse, and the code each gets here.
_CODES = {
    400: "invalid_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    501: "not_implemented",
}


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's answer to an unparseable request, in OpenAI's shape instead of HTML.

    These responses never reach the WSGI app, so the request-log line and the
    request id are written here.
    """
    request_id = uuid.uuid4().hex
    code = _CODES.get(status_int, "internal_error")
    kind = "invalid_request_error" if status_int < 500 else "internal_error"
    message = mesg or reason
    body = json.dumps(
        {"error": {"message": message, "type": kind, "code": code, "param": None}}
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"x-llmlbd-request-id: {request_id}\r\n\r\n"
    )
    log.info("request_done", request_id=request_id, status=status_int, outcome=code)
    util.write_nonblock(sock, head.encode("latin-1") + body)


class LLMLBWorker(GeventWorker):
    """Deadlines on the request head, and no traceback for a client that stops reading."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Connections (their greenlets) that have had a request: later heads follow the
        # keep-alive rule, not the first-request deadline.
        self._served: weakref.WeakSet[Any] = weakref.WeakSet()

    def init_process(self) -> None:
        # In the worker process only: gunicorn's own 400s (bad request line, header or
        # chunk framing) become JSON with a request id (util.write_error is looked up
        # at call time by gunicorn's handle_error).
        util.write_error = write_json_error
        # The response head leaves with the first body bytes (imported after fork: the
        # master, which loads this class, needs none of the worker package).
        from llmlbd.server.worker import onewrite

        onewrite.install()
        super().init_process()

    def timeout_ctx(self) -> Any:
        """The deadline for reading one request head (gunicorn's is keepalive for all)."""
        if gevent.getcurrent() in self._served:
            seconds = self.cfg.keepalive
        else:
            app: Any = self.app  # llmlbd's LLMLBApplication, which carries the config
            seconds = app.config.server.client_header_timeout_s
        # gevent documents False as "expire silently" (the connection just ends); its
        # stubs admit only exceptions.
        silently: Any = False
        return gevent.Timeout(seconds, silently)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        self._served.add(gevent.getcurrent())
        try:
            return super().handle_request(listener_name, req, sock, addr)
        except TimeoutError:
            # The client left response bytes unread for client_write_timeout_s; its
            # response (and backend slot) were released when gunicorn closed the iterator.
            self.log.info("client_write_timeout: closing the connection of %s", addr)
            raise StopIteration() from None
