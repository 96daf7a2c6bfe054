"""Chunked bodies: chunks that arrived together leave together, none waits for a later one."""

from __future__ import annotations

import socket
import threading
import time

from llmlbd.server.worker.http1 import BodyError, Endpoint

HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"


def _serve_once(parts: list[bytes], pause_s: float) -> int:
    """A backend that answers one request with *parts*, pausing between them; its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            conn.recv(65536)
            for part in parts:
                conn.sendall(part)
                time.sleep(pause_s)

    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[1]


def _pieces(port: int) -> list[tuple[float, bytes]]:
    endpoint = Endpoint("127.0.0.1", port, False, 1.0, 5.0, 1)
    started = time.monotonic()
    response = endpoint.request("GET", "/", {}, None)
    try:
        return [(time.monotonic() - started, piece) for piece in response.iter_body()]
    finally:
        response.release()
        endpoint.close()


def test_chunks_that_arrive_in_one_read_come_out_as_one_piece():
    events = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in (b"data: 1\n\n", b"data: 2\n\n"))
    port = _serve_once([HEAD + events + b"0\r\n\r\n"], 0)
    assert [piece for _, piece in _pieces(port)] == [b"data: 1\n\ndata: 2\n\n"]


def test_a_chunk_is_handed_on_before_waiting_for_the_next():
    """The first event must not wait for the second, even with its CRLF already read."""
    port = _serve_once([HEAD + b"9\r\ndata: 1\n\n\r\n", b"9\r\ndata: 2\n\n\r\n0\r\n\r\n"], 0.5)
    (first_at, first), (second_at, second) = _pieces(port)
    assert (first, second) == (b"data: 1\n\n", b"data: 2\n\n")
    assert second_at - first_at > 0.3  # the first left as soon as it was complete


def test_a_chunk_split_across_reads_is_handed_on_in_parts():
    port = _serve_once([HEAD + b"12\r\ndata: 1\n\n", b"data: 2\n\n\r\n0\r\n\r\n"], 0.3)
    pieces = [piece for _, piece in _pieces(port)]
    assert pieces == [b"data: 1\n\n", b"data: 2\n\n"]


def test_what_was_complete_is_handed_on_before_a_framing_error():
    port = _serve_once([HEAD + b"9\r\ndata: 1\n\n\r\nzz\r\n"], 0.3)
    endpoint = Endpoint("127.0.0.1", port, False, 1.0, 5.0, 1)
    response = endpoint.request("GET", "/", {}, None)
    body = response.iter_body()
    assert next(body) == b"data: 1\n\n"
    try:
        next(body)
    except BodyError as exc:
        assert "bad chunk size" in str(exc)
    else:
        raise AssertionError("a bad chunk size line must end the body with BodyError")
    finally:
        response.release()
        endpoint.close()
