"""The collector's HTTP/1.1 client against real sockets, including servers that misbehave."""

from __future__ import annotations

import gzip

import pytest

from collector.http11 import FetchError, HTTPConnection
from tests.collector.pages import page
from tests.fakeserver import ScriptedServer


@pytest.fixture
def raw():
    """make(replies, close_after_each=False) -> a ScriptedServer (tests/fakeserver.py)."""
    servers: list[ScriptedServer] = []

    def make(replies: list[bytes | None], close_after_each: bool = False) -> ScriptedServer:
        servers.append(ScriptedServer(*replies, close_after_each=close_after_each))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def test_keep_alive_reuses_one_connection(raw):
    """Three GETs travel over one TCP connection."""
    server = raw([ok(b"a"), ok(b"bb"), ok(b"ccc")])
    conn = HTTPConnection(server.url)
    assert [conn.get("/x", 2, 100).body for _ in range(3)] == [b"a", b"bb", b"ccc"]
    assert server.connections == 1
    conn.close()


def test_idle_connection_closed_by_server_is_retried(raw):
    """A kept-alive socket the server dropped is replaced transparently, not counted as a failure."""
    server = raw([ok(b"one"), ok(b"two")], close_after_each=True)
    conn = HTTPConnection(server.url)
    assert conn.get("/", 2, 100).body == b"one"
    assert conn.get("/", 2, 100).body == b"two"
    assert server.connections == 2
    conn.close()


def test_connection_close_and_body_to_eof(raw):
    """No Content-Length: the body runs to the close, and the connection is not reused."""
    server = raw([b"HTTP/1.0 200 OK\r\n\r\nuntil the end", ok(b"next")], close_after_each=True)
    conn = HTTPConnection(server.url)
    assert conn.get("/", 2, 100).body == b"until the end"
    assert conn.get("/", 2, 100).body == b"next"
    conn.close()


def test_body_to_eof_is_capped(raw):
    server = raw([b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 5000], close_after_each=True)
    with pytest.raises(FetchError) as exc:
        HTTPConnection(server.url).get("/", 2, 1000)
    assert exc.value.kind == "too_large"


def test_gzip_body_is_inflated_and_capped(raw):
    """A server that gzips anyway is read; a gzip bomb over the cap is refused."""
    body = page("vllm_dp2_sim.txt")
    server = raw(
        [
            ok(gzip.compress(body), b"Content-Encoding: gzip\r\n"),
            ok(gzip.compress(b"0" * 1_000_000), b"Content-Encoding: gzip\r\n"),
        ]
    )
    conn = HTTPConnection(server.url)
    assert conn.get("/", 2, 100_000).body == body
    with pytest.raises(FetchError) as exc:
        conn.get("/", 2, 100_000)
    assert exc.value.kind == "too_large"
    conn.close()


@pytest.mark.parametrize(
    "reply, kind",
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "bad_response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "truncated"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad_response"),
        (None, "closed"),
    ],
)
def test_bad_replies(raw, reply, kind):
    """Each broken reply fails with a stable kind (the metrics' outcome label)."""
    server = raw([reply])
    with pytest.raises(FetchError) as exc:
        HTTPConnection(server.url).get("/", 2, 100)
    assert exc.value.kind == kind


def test_silence_times_out_on_one_deadline(raw):
    """A server that accepts and never answers costs the timeout, not more."""
    import time

    server = raw([[], None])  # reads the request, answers nothing
    conn = HTTPConnection(server.url)
    started = time.monotonic()
    with pytest.raises(FetchError) as exc:
        conn.get("/", 0.3, 100)
    assert exc.value.kind == "timeout" and time.monotonic() - started < 1.0
    conn.close()


def test_url_prefix_and_host_header(raw):
    """A base URL with a path prefixes every request path; the Host header names host:port."""
    server = raw([ok(b"")])
    conn = HTTPConnection(server.url + "/api/")
    request = conn._request("/metrics", {"Accept": "x"})
    assert request.startswith(b"GET /api/metrics HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nAccept: x\r\n" in request
    with pytest.raises(ValueError):
        HTTPConnection("ftp://x")
