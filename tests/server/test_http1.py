"""The upstream HTTP/1.1 client against a real socket server that answers scripted bytes
(tests/fakeserver.py)."""

from __future__ import annotations

import pytest

from llmlbd.server.worker.http1 import BodyError, ConnectFailure, Endpoint, UpstreamReadTimeout
from tests.fakeserver import CLOSE, HANG_UP, ScriptedServer, closed_port


@pytest.fixture
def server_factory():
    """make(*replies) -> a ScriptedServer (tests/fakeserver.py) with an endpoint() helper."""
    servers: list[ScriptedServer] = []
    endpoints: list[Endpoint] = []

    def make(*replies):
        server = ScriptedServer(*replies)

        def endpoint(read_timeout: float = 2.0) -> Endpoint:
            endpoints.append(Endpoint("127.0.0.1", server.port, False, 1.0, read_timeout, 4))
            return endpoints[-1]

        server.endpoint = endpoint  # type: ignore[attr-defined]
        servers.append(server)
        return server

    yield make
    for endpoint in endpoints:
        endpoint.close()
    for server in servers:
        server.close()


def body_of(response) -> list[bytes]:
    """The body's pieces; the response is released afterwards, as the proxy does."""
    try:
        return list(response.iter_body())
    finally:
        response.release()


class TestFraming:
    def test_content_length_body_and_keep_alive_reuse(self, server_factory):
        ok = [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"]
        server = server_factory(ok, ok)
        endpoint = server.endpoint()
        response = endpoint.request("POST", "/v1/x?q=1", {"x-h": "v"}, b'{"a":1}')
        assert (response.status, response.reason, response.header("x-a")) == (200, "OK", "1")
        assert b"".join(body_of(response)) == b"hello"
        again = endpoint.request("GET", "/", {}, None)
        assert b"".join(body_of(again)) == b"hello"
        assert server.connections == 1  # the second request reused the connection
        first = server.requests[0]
        assert first.startswith(b"POST /v1/x?q=1 HTTP/1.1\r\nHost: 127.0.0.1:")
        assert b"x-h: v\r\n" in first and b'Content-Length: 7\r\n\r\n{"a":1}' in first

    def test_chunked_body_comes_out_piece_by_piece(self, server_factory):
        server = server_factory(
            [
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n",
                b"9\r\ndata:",
                b" a\r\n\r\n",
                b"5;ext=1\r\nhello\r\n",
                b"0\r\nX-Trailer: t\r\n\r\n",
            ]
        )
        response = server.endpoint().request("GET", "/", {}, None)
        pieces = body_of(response)
        assert b"".join(pieces) == b"data: a\r\nhello"
        assert len(pieces) >= 3  # nothing waited for the whole body
        assert response.complete

    def test_close_delimited_body(self, server_factory):
        server = server_factory([b"HTTP/1.0 200 OK\r\n\r\nuntil", b" the end", CLOSE])
        response = server.endpoint().request("GET", "/", {}, None)
        assert not response.keep_alive
        assert b"".join(body_of(response)) == b"until the end"

    @pytest.mark.parametrize("status", [204, 304])
    def test_no_body_statuses(self, server_factory, status):
        server = server_factory([f"HTTP/1.1 {status} X\r\n\r\n".encode(), CLOSE])
        response = server.endpoint().request("GET", "/", {}, None)
        assert body_of(response) == [] and response.complete

    def test_head_has_no_body_even_with_a_length(self, server_factory):
        server = server_factory([b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", CLOSE])
        response = server.endpoint().request("HEAD", "/", {}, None)
        assert body_of(response) == []

    def test_interim_responses_are_skipped(self, server_factory):
        server = server_factory(
            [
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            ]
        )
        response = server.endpoint().request("GET", "/", {}, None)
        assert response.status == 200 and b"".join(body_of(response)) == b"ok"


class TestFailures:
    def test_refused_connection(self):
        endpoint = Endpoint("127.0.0.1", closed_port(), False, 1.0, 1.0, 4)
        with pytest.raises(ConnectFailure, match="cannot connect"):
            endpoint.request("GET", "/", {}, None)

    def test_closed_without_answer(self, server_factory):
        server = server_factory(HANG_UP)
        with pytest.raises(ConnectFailure, match="closed the connection"):
            server.endpoint().request("GET", "/", {}, None)

    def test_stale_pooled_connection_is_retried_once_on_a_new_one(self, server_factory):
        ok = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]
        server = server_factory(ok, HANG_UP, ok)
        endpoint = server.endpoint()
        first = endpoint.request("GET", "/", {}, None)
        body_of(first)
        second = endpoint.request("POST", "/", {}, b"x")  # pooled conn closed by the server
        assert second.status == 200 and b"".join(body_of(second)) == b"ok"
        assert server.connections == 2

    def test_silence_before_headers_is_a_read_timeout(self, server_factory):
        server = server_factory([], HANG_UP)  # reads the request, answers nothing
        with pytest.raises(UpstreamReadTimeout):
            server.endpoint(read_timeout=0.3).request("GET", "/", {}, None)

    def test_body_cut_short(self, server_factory):
        server = server_factory([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", CLOSE])
        response = server.endpoint().request("GET", "/", {}, None)
        with pytest.raises(BodyError, match="cut short"):
            body_of(response)
        assert not response.endpoint.idle  # an incomplete body never goes back to the pool

    def test_bad_chunk_size(self, server_factory):
        server = server_factory(
            [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", CLOSE]
        )
        response = server.endpoint().request("GET", "/", {}, None)
        with pytest.raises(BodyError, match="bad chunk size"):
            body_of(response)

    def test_malformed_status_line(self, server_factory):
        server = server_factory([b"SPDY/9 nonsense\r\n\r\n", CLOSE])
        with pytest.raises(ConnectFailure, match="malformed status line"):
            server.endpoint().request("GET", "/", {}, None)
