"""Slow and greedy clients: a per-worker cap on concurrent requests, client I/O deadlines.

A gevent worker holds one greenlet per connection, up to worker_connections.
Without deadlines, clients that send half a body and stall (or stop reading a
stream) keep their greenlet, their backend slot and their in-flight count for
ever; a few hundred of them lock every other client out. The request head is
bounded by the worker class (llmlbd.server.gworker); the body and the
response are bounded here through the client socket's timeout, which gevent
applies to each recv and send.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from gunicorn.http.errors import NoMoreData, ParseException

from llmlbd.errors import BadRequest, Overloaded, RequestTimeout

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
        self.cap = concurrency_cap(server.max_concurrent_requests, server.worker_connections)
        self.body_timeout_s: float = server.client_body_timeout_s
        self.write_timeout_s: float = server.client_write_timeout_s
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
        """gunicorn's post_request: count the request out; the idle connection has no deadline."""
        if environ.pop(_ADMITTED, False):
            self.active -= 1
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            try:
                sock.settimeout(None)  # the keep-alive wait is bounded by the worker class
            except OSError:
                pass

    def read_body(self, environ: dict[str, Any], read: Callable[[], bytes]) -> bytes:
        """*read* the body with the body deadline; afterwards, the response's write deadline."""
        sock = environ.get("gunicorn.socket")
        _set_timeout(sock, self.body_timeout_s)
        try:
            return read()
        except TimeoutError:
            _stop_reading(sock)  # the rest of the body will not come: close after the 408
            raise RequestTimeout(
                f"the client sent no body bytes for {self.body_timeout_s:g} s "
                "(server.client_body_timeout_s)"
            ) from None
        except NoMoreData:
            raise BadRequest(
                "the client closed the connection before the end of the body"
            ) from None
        except ParseException as exc:
            # A chunked body whose framing lies (bad size line, missing CRLF...).
            _stop_reading(sock)
            raise BadRequest(f"the request body's framing is invalid: {exc}") from None
        finally:
            _set_timeout(sock, self.write_timeout_s)


def _set_timeout(sock: Any, seconds: float) -> None:
    if sock is not None:
        try:
            sock.settimeout(seconds)
        except OSError:
            pass


def _stop_reading(sock: Any) -> None:
    """After an unreadable body the connection cannot serve another request: end it once
    the error response is written (gunicorn then reads end-of-stream and closes)."""
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass
