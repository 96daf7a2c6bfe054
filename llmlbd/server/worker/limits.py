"""Slow and greedy clients: a per-worker cap on concurrent requests, client I/O deadlines.

A gevent worker holds one greenlet per connection, up to worker_connections.
Without deadlines, clients that send half a body and stall (or stop reading a
stream) keep their greenlet, their backend slot and their in-flight count for
ever; a few hundred of them lock every other client out. The request head is
bounded by the request loop (llmlbd.server.worker.front), and so are the
body (each read, and the whole body) and each response write; this module
caps concurrent requests and names a body deadline in the client's 408.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from llmlbd.config import sizing
from llmlbd.errors import BadRequest, Overloaded, RequestTimeout
from llmlbd.server.worker.front import BodyClosed, BodyFramingError, BodyTimeout

__all__ = ["ClientLimits", "concurrency_cap"]

_ADMITTED = "llmlbd.admitted"


def concurrency_cap(max_concurrent_requests: int, worker_connections: int) -> int:
    """The configured cap, or nine tenths of worker_connections (at least 1) when 0."""
    if max_concurrent_requests:
        return max_concurrent_requests
    return max(1, worker_connections - max(1, worker_connections // 10))


class ClientLimits:
    """One worker's count of requests being served, and the deadlines on its clients."""

    def __init__(self, server: Any) -> None:
        self.cap = concurrency_cap(
            server.max_concurrent_requests, sizing.worker_connections(server)
        )
        self.active = 0

    def admit(self, environ: dict[str, Any]) -> None:
        """Count this request in, or raise Overloaded (503) when the worker is full."""
        if self.active >= self.cap:
            raise Overloaded(
                f"this llmlbd worker is serving {self.active} requests, its limit "
                "(server.max_concurrent_requests); retry shortly"
            )
        self.active += 1
        environ[_ADMITTED] = True

    def finished(self, environ: dict[str, Any]) -> None:
        """After each response (the post_request hook): count the request out."""
        if environ.pop(_ADMITTED, False):
            self.active -= 1

    def read_body(self, environ: dict[str, Any], read: Callable[[], bytes]) -> bytes:
        """*read* the body; its deadlines (per read and in total) are the request loop's
        (llmlbd.server.worker.front), named here in the client's answer."""
        sock = environ.get("gunicorn.socket")
        try:
            return read()
        except BodyTimeout as exc:
            _stop_reading(sock)  # the rest of the body will not come: close after the 408
            if exc.total:
                raise RequestTimeout(
                    f"the client did not send the whole body within {exc.seconds:g} s "
                    "(server.client_body_total_s)"
                ) from None
            raise RequestTimeout(
                f"the client sent no body bytes for {exc.seconds:g} s "
                "(server.client_body_timeout_s)"
            ) from None
        except BodyClosed:
            raise BadRequest(
                "the client closed the connection before the end of the body"
            ) from None
        except BodyFramingError as exc:
            # A chunked body whose framing lies (bad size line, missing CRLF...).
            _stop_reading(sock)
            raise BadRequest(f"the request body's framing is invalid: {exc}") from None


def _stop_reading(sock: Any) -> None:
    """After an unreadable body the connection cannot serve another request: end it once
    the error response is written (the request loop then closes it)."""
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass
