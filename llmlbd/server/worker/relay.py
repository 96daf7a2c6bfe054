"""The response body on its way from a backend to the client.

`ProxiedResponse` is the WSGI iterable the proxy returns: it relays the body
as it arrives and, in `close()` (which gunicorn calls on every path: end of
body, client gone, error, worker stop), releases the request's lease exactly
once and writes the request's log line.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import structlog

from llmlbd import metrics
from llmlbd.policy.framework import Decision
from llmlbd.request import RoutingRequest
from llmlbd.server.responses import sse_error_event
from llmlbd.server.worker.forward import BodyError, Response, response_headers
from llmlbd.state.outlier import backend_outcome

if TYPE_CHECKING:
    from llmlbd.server.worker.wsgi import ProxyApp

__all__ = ["ProxiedResponse", "BACKEND_HEADER", "REQUEST_ID_HEADER"]

log = structlog.get_logger("llmlbd.proxy")

BACKEND_HEADER = "x-llmlbd-backend"
# The id in llmlbd's log line and in `llmlbctl inspect request ID`.
REQUEST_ID_HEADER = "x-llmlbd-request-id"


class ProxiedResponse:
    """The response body as a WSGI iterable; `close()` releases the lease exactly once.

    gunicorn calls close() on every path: after the last chunk, when writing
    to a disconnected client fails, and when the worker stops.
    """

    def __init__(
        self,
        app: ProxyApp,
        request: RoutingRequest,
        decision: Decision,
        upstream: Response,
        sent_at: float,
    ) -> None:
        self.app = app
        self.request = request
        self.decision = decision
        self.upstream = upstream
        self.sent_at = sent_at
        self.size = 0
        self.ttfb: float | None = None
        self.outcome = "client_disconnect"
        self.closed = False
        content_type = upstream.header("content-type") or ""
        self.is_sse = content_type.startswith("text/event-stream")
        metrics.inflight.inc()
        app.active += 1

    def headers(self) -> list[tuple[str, str]]:
        headers = response_headers(self.upstream)
        if self.app.backend_header:
            headers.append((BACKEND_HEADER, self.decision.backend.name))
            headers.append((REQUEST_ID_HEADER, self.request.request_id))
        return headers

    def __iter__(self) -> Iterator[bytes]:
        if (self.is_sse or self.upstream.length is None) and not self.upstream.body_arrived():
            # Send the status line and headers now, before the first token. When body
            # bytes came with them, they leave together instead (one write, see onewrite.py).
            yield b""
        try:
            for chunk in self.upstream.iter_body():
                if self.ttfb is None:
                    self.ttfb = time.perf_counter() - self.sent_at
                    metrics.upstream_ttfb_by(self.decision.backend.name).observe(self.ttfb)
                self.size += len(chunk)
                yield chunk
        except BodyError as exc:
            # Bytes already reached the client: no retry is possible now.
            self.outcome = "upstream_error"
            log.warning(
                "upstream_broke_mid_response",
                request_id=self.request.request_id,
                backend=self.decision.backend.name,
                error=str(exc),
                bytes=self.size,
            )
            if self.is_sse:
                yield sse_error_event(
                    f"backend {self.decision.backend.name} failed "
                    "mid-stream; the response is incomplete"
                )
            return
        self.outcome = "complete"

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            # Pools the connection after a whole body; otherwise closing it tells
            # the backend to stop generating.
            self.upstream.release()
        finally:
            metrics.inflight.dec()
            self.app.active -= 1
            assert self.app.runtime is not None
            self.app.runtime.router.release(
                self.decision, backend_outcome(self.upstream.status, self.outcome)
            )
            metrics.upstream_seconds_by(self.decision.backend.name).observe(
                time.perf_counter() - self.sent_at
            )
            self.app._log_request(
                self.request,
                self.decision,
                self.upstream.status,
                self.size,
                self.sent_at,
                self.ttfb,
                self.outcome,
            )
