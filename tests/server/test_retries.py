"""The proxy's retry loop in-process: a real ProxyApp with a real Router on a real Redis,
real sockets to scripted backends (tests/fakeserver.py); no gunicorn subprocess."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from llmlbd.config import config_from_dict
from llmlbd.server.worker.runtime import WorkerRuntime
from llmlbd.server.worker.wsgi import ProxyApp
from llmlbd.state.keys import PoolKeys
from tests.fakeserver import CLOSE, HANG_UP, ScriptedServer, closed_port, http_response

OK = http_response(200, b'{"ok": true}', {"Content-Type": "application/json"})
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


def unavailable(status: int) -> bytes:
    return http_response(status, b'{"error": {"message": "busy"}}')


class Proxy:
    """One worker's ProxyApp over *backends* (name -> URL), called as WSGI."""

    def __init__(self, redis_url: str, backends: dict[str, str], **server: Any) -> None:
        self.config = config_from_dict(
            {
                "lb_policy": "round_robin",
                "redis": {"url": redis_url},
                "server": {"connect_timeout_s": 1.0, "read_timeout_s": 2.0, **server},
                "backends": [{"name": n, "url": u} for n, u in backends.items()],
            }
        )
        self.app = ProxyApp(self.config)
        # What init_worker does, minus its background greenlet: this process runs no hub.
        self.app.runtime = WorkerRuntime.build(self.config, "test-worker")
        self.redis = self.app.runtime.client

    def post(self, path: str = "/v1/chat/completions") -> tuple[str, dict[str, str], bytes]:
        """One request; the body is read whole and the response closed, as gunicorn does."""
        started: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
            started.update(status=status, headers={k.lower(): v for k, v in headers})

        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": path,
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(BODY)),
            "wsgi.input": io.BytesIO(BODY),
            "wsgi.url_scheme": "http",
            "REMOTE_ADDR": "127.0.0.1",
        }
        result = self.app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return started["status"], started["headers"], body

    def inflight(self) -> dict[str, int]:
        raw = self.redis.hgetall(PoolKeys(self.config.server.pool).inflight)
        return {_text(k): int(v) for k, v in raw.items() if int(v)}

    def close(self) -> None:
        self.app.shutdown_worker()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@pytest.fixture
def servers() -> Iterator[list[ScriptedServer]]:
    started: list[ScriptedServer] = []
    yield started
    for server in started:
        server.close()


@pytest.fixture
def proxy(redis_url: str) -> Iterator[Any]:
    made: list[Proxy] = []

    def make(backends: dict[str, str], **server: Any) -> Proxy:
        made.append(Proxy(redis_url, backends, **server))
        return made[-1]

    yield make
    for p in made:
        p.close()


def scripted(servers: list[ScriptedServer], *replies: object, then: bytes | None = OK) -> str:
    servers.append(ScriptedServer(*replies, then=then))
    return servers[-1].url


def test_refused_connection_is_retried_and_the_worker_then_avoids_that_backend(proxy, servers):
    good = scripted(servers)
    app = proxy({"dead": f"http://127.0.0.1:{closed_port()}", "good": good})
    for _ in range(6):  # round robin offers "dead" at least once
        status, headers, body = app.post()
        assert (status, headers["x-llmlbd-backend"], body) == ("200 OK", "good", b'{"ok": true}')
    assert "dead" in app.app.cooldown  # later requests skip it without a connect attempt
    assert len(servers[0].requests) == 6
    assert app.inflight() == {}


@pytest.mark.parametrize("status", [502, 503])
def test_a_502_or_503_before_any_byte_is_retried_on_another_backend(proxy, servers, status):
    busy = scripted(servers, then=unavailable(status))
    good = scripted(servers)
    app = proxy({"busy": busy, "good": good})
    for _ in range(4):
        status, headers, _ = app.post()
        assert (status, headers["x-llmlbd-backend"]) == ("200 OK", "good")
    assert servers[0].requests  # "busy" was asked, and its answer never reached the client
    assert app.inflight() == {}


def test_retries_are_bounded_and_the_last_answer_is_relayed(proxy, servers):
    urls = {f"b{i}": scripted(servers, then=unavailable(503)) for i in range(4)}
    app = proxy(urls, max_retries=1)
    status, _, body = app.post()
    assert status.startswith("503")
    assert json.loads(body)["error"]["message"] == "busy"
    assert sum(len(s.requests) for s in servers) == 2  # one try and max_retries=1 retry
    assert app.inflight() == {}


def test_every_backend_refusing_is_one_openai_error_naming_them(proxy):
    app = proxy({f"d{i}": f"http://127.0.0.1:{closed_port()}" for i in range(3)})
    status, headers, body = app.post()
    assert status.startswith("502")
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert "every backend tried failed" in error["message"]
    assert all(f"d{i}" in error["message"] for i in range(3))
    assert app.inflight() == {}


def test_a_connection_reset_before_the_answer_is_retried(proxy, servers):
    hangs_up = scripted(servers, *[HANG_UP] * 10, then=None)  # reads, closes, says nothing
    good = scripted(servers)
    app = proxy({"flaky": hangs_up, "good": good})
    for _ in range(4):
        assert app.post()[1]["x-llmlbd-backend"] == "good"
    assert servers[0].requests
    assert app.inflight() == {}


def test_a_stale_pooled_connection_is_retried_once_on_the_same_backend(proxy, servers):
    # The backend answers, then closes the kept-alive connection while it is idle.
    only = scripted(servers, [OK, CLOSE], then=OK)
    app = proxy({"only": only}, max_retries=0)
    assert app.post()[0] == "200 OK"
    status, headers, _ = app.post()  # goes out on the pooled connection the backend closed
    assert (status, headers["x-llmlbd-backend"]) == ("200 OK", "only")
    assert servers[0].connections == 2
    assert app.inflight() == {}


def test_no_retry_after_the_first_byte(proxy, servers):
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    broken_stream = [head, b"d\r\ndata: one\n\n\r\n", CLOSE]
    # Both backends break off mid-stream: whichever is picked, nothing is tried after it.
    urls = {name: scripted(servers, broken_stream, then=None) for name in ("a", "b")}
    app = proxy(urls, max_retries=2)
    status, headers, body = app.post()
    assert status == "200 OK" and headers["x-llmlbd-backend"] in urls
    assert body.startswith(b"data: one\n\n")  # the bytes already sent stay sent
    assert b"error" in body  # and the client hears that the stream broke
    assert sum(len(s.requests) for s in servers) == 1
    assert app.inflight() == {}
