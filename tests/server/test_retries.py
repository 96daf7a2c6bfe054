"""The proxy's retry loop in-process: a real ProxyApp with a real Router on a real Redis,
real sockets to scripted backends (tests/fakeserver.py); no gunicorn subprocess."""

from __future__ import annotations

import json

import pytest

from tests.fakeserver import CLOSE, HANG_UP, closed_port, http_response
from tests.server.inproc import OK, scripted


def unavailable(status: int) -> bytes:
    return http_response(status, b'{"error": {"message": "busy"}}')


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
