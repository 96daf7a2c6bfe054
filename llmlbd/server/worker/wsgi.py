"""The proxy's WSGI app: parse -> pick -> forward -> release, in that one direction.

The app object is created in the gunicorn master and holds only the config;
each worker calls `init_worker()` after fork to build its Redis client,
policy and connection pools (WorkerRuntime). Routing decisions go through
`Router` only: this module knows no policy internals.
"""

from __future__ import annotations

import itertools
import secrets
import socket
import sys
import time
import weakref
from collections.abc import Iterable
from typing import Any

import gevent
import gevent.event
import structlog

from llmlbd import metrics
from llmlbd.config.loader import Config
from llmlbd.errors import (
    BadRequest,
    BodyTooLarge,
    LLMLBError,
    MethodNotAllowed,
    NoBackend,
    RouteNotFound,
    UpstreamFailed,
    UpstreamTimeout,
)
from llmlbd.policy.framework import Decision
from llmlbd.policy.router import REDIS_ERRORS
from llmlbd.request import RoutingRequest
from llmlbd.server.auth import ApiKeys
from llmlbd.server.endpoints import check_method, check_metrics_peer
from llmlbd.server.parse import parse_request
from llmlbd.server.responses import StartResponse, error_response, json_response
from llmlbd.server.worker import cpuprofile, models_union, requestlog
from llmlbd.server.worker.forward import ConnectFailure, UpstreamReadTimeout, request_headers
from llmlbd.server.worker.limits import ClientLimits
from llmlbd.server.worker.relay import BACKEND_HEADER, REQUEST_ID_HEADER, ProxiedResponse
from llmlbd.server.worker.runtime import WorkerRuntime

__all__ = ["ProxyApp", "BACKEND_HEADER"]


class HeadersRejected(UpstreamFailed):
    """The backend's status line or headers cannot be passed on (invalid characters)."""


log = structlog.get_logger("llmlbd.proxy")

# A backend answering one of these before any byte reached the client is
# overloaded or broken: another backend may serve the request.
RETRY_STATUSES = frozenset({502, 503})
# After a connection failure a worker avoids that backend for this long, so
# one dead backend costs one retry, not one per request.
COOLDOWN_S = 2.0
PROXIED_PREFIXES = ("/v1/",)
PROXIED_PATHS = frozenset({"/tokenize", "/detokenize", "/v1"})
# Set in the WSGI environ once known, so that llmlbd's own error answer names them.
REQUEST_ID_KEY = "llmlbd.request_id"
REQUEST_KEY = "llmlbd.request"


def _client_headers(environ: dict[str, Any]) -> dict[str, str]:
    """The request's header fields by lower-case name (the request loop parsed them)."""
    parsed: dict[str, str] | None = environ.get("llmlbd.headers")
    if parsed is not None:
        return parsed
    headers = {
        key[5:].replace("_", "-").lower(): value
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    if environ.get("CONTENT_TYPE"):
        headers["content-type"] = environ["CONTENT_TYPE"]
    return headers


class ProxyApp:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.runtime: WorkerRuntime | None = None
        self.cooldown: dict[str, float] = {}
        self.max_body = config.server.max_body_bytes
        self.backend_header = config.server.backend_header
        self.access_log = config.logging.access_log
        self.request_log: requestlog.RequestLog | None = None
        # Above zero while this worker forwards a request or relays a response: the
        # request log writes at once when it is zero and batches while it is not.
        self.active = 0
        # Request ids: 32 hex digits, a random prefix per worker (the app is built after
        # fork) and a counter: unique across workers and replicas without a getrandom()
        # system call and a UUID object per request.
        self._id_prefix = secrets.token_hex(8)
        self._id_counter = itertools.count()
        self._maintainer: gevent.Greenlet[[], None] | None = None
        self._release_sender: gevent.Greenlet[[], None] | None = None
        self._releases_queued = gevent.event.Event()
        self._idle_sockets: weakref.WeakSet[Any] = weakref.WeakSet()
        self.models = models_union.ModelsCache(config.all_backends())
        self.backends = config.all_backends()  # every pool's, each backend once
        self.limits = ClientLimits(config.server)
        # Read as each worker boots (load()); SIGHUP boots new workers: the file is re-read.
        self.api_keys = ApiKeys(config.server.api_keys_file)
        forward_key = config.server.forward_client_key
        self.forward_client_key = not self.api_keys.enabled if forward_key is None else forward_key

    # worker lifecycle ---------------------------------------------------------------------
    def init_worker(self, worker_id: str) -> None:
        self.runtime = WorkerRuntime.build(self.config, worker_id)
        if self.access_log:
            self.request_log = requestlog.for_config(self.config.logging.format)
        cpuprofile.start_if_enabled()  # benchmarks only: off unless its variable is set
        # Releases leave from their own greenlet: no response waits for a release's reply.
        self.runtime.router.defer_releases(self._releases_queued.set)
        self._release_sender = gevent.spawn(self._send_releases_forever)
        self._maintain()  # heartbeat and membership before the first request
        self._maintainer = gevent.spawn(self._maintain_forever)

    def _maintain(self) -> None:
        assert self.runtime is not None
        self.runtime.router.maintain()
        if self.runtime.router.breaker.state != "closed":
            return
        try:
            changed = self.runtime.refresh_membership()
        except REDIS_ERRORS:
            return  # keep the members we have; the breaker hears about it from maintain()
        if changed is not None:
            self.backends = changed
            self.models.backends = changed
            log.info("membership_changed", backends=[b.name for b in changed])

    def _maintain_forever(self) -> None:
        while True:
            gevent.sleep(1.0)
            try:
                metrics.flush()  # at most a second behind under load (see llmlbd/metrics.py)
                self._maintain()
            except Exception:
                log.exception("maintain_failed")

    def _send_releases_forever(self) -> None:
        assert self.runtime is not None
        router = self.runtime.router
        while True:
            self._releases_queued.wait()
            self._releases_queued.clear()
            try:
                router.send_releases()
            except Exception:
                log.exception("release_send_failed")  # maintain() sends what is left
            if not self.active:
                metrics.flush()  # idle: the release's round trip is counted now

    def shutdown_worker(self) -> None:
        if self._maintainer is not None:
            self._maintainer.kill(block=False)
        if self._release_sender is not None:
            self._release_sender.kill(block=False)
        try:
            if self.runtime is not None:
                self.runtime.router.retire()
                self.runtime.upstreams.close()
            if self.request_log is not None:
                self.request_log.close()
        finally:
            metrics.flush()  # the last counts, retire()'s releases included

    # request dispatch ---------------------------------------------------------------------
    # idle keep-alive connections -----------------------------------------------------------
    def connection_idle(self, environ: dict[str, Any]) -> None:
        """gunicorn's post_request: this client connection now waits for its next request."""
        self.limits.finished(environ)
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            self._idle_sockets.add(sock)

    def close_idle_connections(self) -> int:
        """On shutdown: end idle keep-alive connections now instead of after keepalive_s.

        gunicorn's gevent worker waits for every open connection before it exits,
        so without this an idle client would hold a stop or reload for keepalive_s.
        """
        closed = 0
        for sock in list(self._idle_sockets):
            try:
                sock.shutdown(socket.SHUT_RD)
                closed += 1
            except OSError:
                pass
        self._idle_sockets.clear()
        return closed

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            self._idle_sockets.discard(sock)
        path = environ.get("PATH_INFO", "") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        started = time.perf_counter()
        try:
            check_method(method, path)
            if path in ("/healthz", "/health"):
                return json_response(start_response, 200, {"status": "ok"})
            if path == "/readyz":
                return self._readyz(start_response)
            if path == "/metrics":
                check_metrics_peer(environ, self.config.server.public_metrics)
                return self._metrics(start_response)
            if self.api_keys.enabled:
                self.api_keys.check(environ.get("HTTP_AUTHORIZATION", ""))
            if path == "/v1/models" and method == "GET":
                assert self.runtime is not None, "init_worker() was not called"
                return json_response(start_response, 200, self.models.get(self.runtime.upstreams))
            if path.startswith(PROXIED_PREFIXES) or path in PROXIED_PATHS:
                self.limits.admit(environ)
                return self._proxy(environ, start_response, method, path)
            raise RouteNotFound(
                f"no route for {method} {path}; llmlbd forwards /v1/*, /tokenize and /detokenize"
            )
        except LLMLBError as error:
            if error.status == 429:
                metrics.SHED.labels(error.code).inc()
            # After HeadersRejected, start_response was already called once.
            exc_info = sys.exc_info() if isinstance(error, HeadersRejected) else None
            return self._answer_error(environ, start_response, error, started, exc_info)
        except Exception:
            log.exception("unhandled_error", path=path)
            internal = LLMLBError("internal error in llmlbd")
            return self._answer_error(environ, start_response, internal, started, None)

    def _new_request_id(self) -> str:
        # A per-worker random prefix and a counter: unique without a getrandom() per request.
        return f"{self._id_prefix}{next(self._id_counter):016x}"

    def _answer_error(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        error: LLMLBError,
        started: float,
        exc_info: Any,
    ) -> list[bytes]:
        """llmlbd's own answer: a request-log line and a request id, as a proxied one has."""
        request_id = environ.get(REQUEST_ID_KEY) or self._new_request_id()
        request = environ.get(REQUEST_KEY) or RoutingRequest(
            request_id,
            environ.get("REQUEST_METHOD", ""),
            environ.get("PATH_INFO", ""),
            headers=_client_headers(environ),
        )
        if not error.logged:
            self._log_request(request, None, error.status, 0, started, None, error.code)
        headers = [(REQUEST_ID_HEADER, request_id)] if self.backend_header else []
        return error_response(start_response, error, headers, exc_info=exc_info)

    def _readyz(self, start_response: StartResponse) -> list[bytes]:
        problems = []
        if not self.backends:
            problems.append("no backend configured")
        if self.runtime is None:
            problems.append("worker not initialised")
        else:
            try:
                self.runtime.client.ping()
            except Exception as exc:
                problems.append(f"redis unreachable: {exc}")
            else:
                if self.runtime.router.breaker.state != "closed":
                    problems.append(
                        "routing on the worker-local fallback until Redis "
                        "answers the next health probe"
                    )
        status = 503 if problems else 200
        return json_response(
            start_response,
            status,
            {
                "status": "ready" if not problems else "not_ready",
                "problems": problems,
                "backends": len(self.backends),
            },
        )

    def _metrics(self, start_response: StartResponse) -> list[bytes]:
        import os

        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            from prometheus_client import REGISTRY as registry
        metrics.flush()  # this worker's counts; the others flush when idle and each second
        body = generate_latest(registry)
        if self.runtime is not None and self.runtime.router.breaker.state == "closed":
            pool = CollectorRegistry()
            pools = [(p.router.leases.keys, p.backends) for p in self.runtime.pools.values()]
            pool.register(metrics.PoolCollector(self.runtime.client, pools))
            body += generate_latest(pool)
        start_response(
            "200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))]
        )
        return [body]

    def _read_body(self, environ: dict[str, Any]) -> bytes:
        length = environ.get("CONTENT_LENGTH")
        stream: Any = environ["wsgi.input"]
        if length:
            try:
                size = int(length)
            except ValueError:
                raise BadRequest("invalid Content-Length") from None
            if size > self.max_body:
                raise BodyTooLarge(
                    f"the request body is {size} bytes; the limit is "
                    f"{self.max_body} bytes (server.max_body_bytes)"
                )
            return stream.read(size) if size else b""
        body = stream.read(self.max_body + 1)
        if len(body) > self.max_body:
            raise BodyTooLarge(
                f"the request body is over the limit of {self.max_body} bytes "
                "(server.max_body_bytes)"
            )
        body_bytes: bytes = body
        return body_bytes

    def _proxy(
        self, environ: dict[str, Any], start_response: StartResponse, method: str, path: str
    ) -> Iterable[bytes]:
        if method not in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"):
            raise MethodNotAllowed(f"method {method} is not supported")
        assert self.runtime is not None, "init_worker() was not called"
        request_id = environ[REQUEST_ID_KEY] = self._new_request_id()
        body = self.limits.read_body(environ, lambda: self._read_body(environ))
        headers = _client_headers(environ)
        request = environ[REQUEST_KEY] = parse_request(request_id, method, path, headers, body)
        query = environ.get("QUERY_STRING")
        target = f"{path}?{query}" if query else path
        upstream_headers = request_headers(
            headers,
            environ.get("REMOTE_ADDR", ""),
            environ.get("wsgi.url_scheme", "http"),
            environ.get("HTTP_HOST", ""),
        )
        if not self.forward_client_key:
            upstream_headers.pop("authorization", None)
        self.active += 1  # the ProxiedResponse counts itself from here on
        try:
            return self._forward(request, target, upstream_headers, body, start_response)
        finally:
            self.active -= 1

    def _cooling(self) -> frozenset[str]:
        now = time.monotonic()
        for name, until in list(self.cooldown.items()):
            if until <= now:
                del self.cooldown[name]
        # Never let cooldowns alone empty the pool: the policy then says what is wrong.
        if len(self.cooldown) >= len(self.backends):
            return frozenset()
        return frozenset(self.cooldown)

    def _forward(
        self,
        request: RoutingRequest,
        target: str,
        headers: dict[str, str],
        body: bytes,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        assert self.runtime is not None
        router, upstreams = self.runtime.router, self.runtime.upstreams
        exclude = set(self._cooling())
        attempts = self.config.server.max_retries + 1
        failures: list[str] = []
        for attempt in range(attempts):
            started = time.perf_counter()
            try:
                decision = router.pick(request, frozenset(exclude))
            except NoBackend:
                if failures:  # the others were tried and failed: that is the real story
                    break
                raise
            metrics.decision_seconds_by(decision.policy).observe(time.perf_counter() - started)
            backend = decision.backend
            sent_at = time.perf_counter()
            try:
                upstream = upstreams.open(
                    backend, request.method, target, headers, body if body else None
                )
            except ConnectFailure as exc:
                router.release(decision, "connect")
                self.cooldown[backend.name] = time.monotonic() + COOLDOWN_S
                failures.append(f"{backend.name}: {exc}")
                metrics.RETRIES.labels(backend.name, "connect").inc()
                exclude.add(backend.name)
                continue
            except UpstreamReadTimeout:
                router.release(decision, "timeout")
                self._log_request(
                    request, decision, 504, 0, sent_at, None, "upstream_timeout", holding=1
                )
                timeout = UpstreamTimeout(
                    f"backend {backend.name} sent no response within "
                    f"{self.config.server.read_timeout_s:g} s (server.read_timeout_s)"
                )
                timeout.logged = True
                raise timeout from None
            except BaseException:
                router.release(decision)
                raise
            if upstream.status in RETRY_STATUSES and attempt + 1 < attempts:
                failures.append(f"{backend.name}: HTTP {upstream.status}")
                upstream.discard()
                router.release(decision, "status")
                metrics.RETRIES.labels(backend.name, f"status_{upstream.status}").inc()
                exclude.add(backend.name)
                continue
            response = ProxiedResponse(self, request, decision, upstream, sent_at)
            try:
                start_response(
                    f"{upstream.status} {upstream.reason or ''}".strip(), response.headers()
                )
            except Exception as exc:
                response.outcome = "bad_upstream_headers"
                response.close()  # releases the lease and writes the request-log line
                rejected = HeadersRejected(
                    f"backend {backend.name} sent a response the server cannot relay: {exc}"
                )
                rejected.logged = True
                raise rejected from exc
            return response
        raise UpstreamFailed(
            f"every backend tried failed before responding ({'; '.join(failures)})"
        )

    def _log_request(
        self,
        request: RoutingRequest,
        decision: Decision | None,
        status: int,
        size: int,
        sent_at: float,
        ttfb: float | None,
        outcome: str,
        holding: int = 0,
    ) -> None:
        """Count the request and log its line; *holding*: 1 while the caller still counts
        itself in `active`."""
        backend = decision.backend.name if decision else ""
        policy = decision.policy if decision else ""
        metrics.requests_by(backend, policy, str(status)).inc()
        busy = self.active > holding
        if not busy:
            metrics.flush()  # idle now: write the counts at once; under load, each second
        if self.request_log is not None:
            finished = requestlog.Finished(
                request, decision, status, size, ttfb, time.perf_counter() - sent_at, outcome
            )
            self.request_log.request_done(finished, busy=busy)
