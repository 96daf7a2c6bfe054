"""Slow and greedy clients cannot hold a worker or other clients hostage (real llmlbd, real sockets).

Half-sent heads and bodies run into client_header_timeout_s and
client_body_timeout_s; a client that stops reading its stream runs into
client_write_timeout_s and gives its backend slot back; beyond
max_concurrent_requests a worker answers a fast 503 with Retry-After.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import redis
import requests

from tests.harness import LLMLBD, StubBackends, wait_until

pytestmark = pytest.mark.e2e

CHAT = {"model": "stub-model", "messages": [{"role": "user", "content": "hello"}]}
BODY = json.dumps(CHAT).encode()


@pytest.fixture(scope="module")
def backends():
    with StubBackends(1) as stubs:
        yield stubs


def start(redis_server, backends, **server) -> LLMLBD:
    config = {
        "redis": {"url": redis_server.url},
        "backends": backends.config(),
        "collector": {"enabled": False},
        "server": {
            "worker_connections": 200,
            "client_header_timeout_s": 2.0,
            "client_body_timeout_s": 2.0,
            "client_write_timeout_s": 2.0,
            **server,
        },
    }
    return LLMLBD(config, workers=2)


def open_stalled(port: int, payload: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(payload)
    return sock


def read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


HALF_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/js"
HALF_BODY = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY)
) + BODY[: len(BODY) // 2]


def test_500_stalled_half_requests_do_not_lock_out_a_normal_client(redis_server, backends):
    with start(redis_server, backends) as proxy:
        stalled: list[socket.socket] = []
        try:
            for index in range(500):
                stalled.append(open_stalled(proxy.port, HALF_BODY if index % 2 else HALF_HEAD))
            began = time.monotonic()
            # Every connection slot (2 x 200) is taken now; the deadlines free them.
            response = requests.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=30)
            waited = time.monotonic() - began
            assert response.status_code == 200
            assert waited < 20, f"a normal client waited {waited:.1f} s"
            # A stalled body got an OpenAI-shaped 408 and its connection closed.
            answer = read_all(stalled[1], 15)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
            assert error["code"] == "request_timeout"
            # A stalled head was simply disconnected, without an answer.
            assert read_all(stalled[0], 15) == b""
        finally:
            for sock in stalled:
                sock.close()
        log = proxy.log()
        assert "Traceback" not in log


def test_a_stalled_stream_reader_gives_its_backend_slot_back(redis_server, backends):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    with start(redis_server, backends) as proxy:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills up quickly
        sock.connect(("127.0.0.1", proxy.port))
        body = json.dumps({**CHAT, "stream": True}).encode()
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"x-stub-chunks: 200000\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        try:
            wait_until(
                lambda: (
                    sum(int(v) for v in client.hgetall("llmlb:{default}:inflight").values()) == 1
                ),
                timeout=10,
                message="the stream is in flight",
            )
            # The client reads nothing; after client_write_timeout_s the lease is released.
            wait_until(
                lambda: (
                    not any(int(v) for v in client.hgetall("llmlb:{default}:inflight").values())
                ),
                timeout=30,
                message="the stalled reader's slot released",
            )
            # Other clients are served meanwhile and afterwards.
            assert requests.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=10).ok
        finally:
            sock.close()
        assert "client_write_timeout" in proxy.log()
        assert "Traceback" not in proxy.log()
    client.close()


def test_a_full_worker_answers_503_with_retry_after(redis_server, backends):
    with start(redis_server, backends, max_concurrent_requests=2) as proxy:
        results: list[requests.Response] = []

        def slow() -> None:
            results.append(
                requests.post(
                    f"{proxy.url}/v1/chat/completions",
                    json=CHAT,
                    headers={"x-stub-delay": "4"},
                    timeout=30,
                )
            )

        # 2 workers x 2 slots: the fifth and later concurrent requests find a full worker.
        threads = [threading.Thread(target=slow) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        statuses = sorted(r.status_code for r in results)
        assert statuses.count(200) >= 2 and 503 in statuses, statuses
        refused = next(r for r in results if r.status_code == 503)
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["code"] == "overloaded"
        assert refused.elapsed.total_seconds() < 3  # fast, not after the slow ones
        # Slots come back: afterwards the worker serves again.
        assert requests.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=10).ok


def test_a_trickled_body_gets_408_after_the_total_body_deadline(redis_server, backends):
    # One byte every 0.5 s never trips client_body_timeout_s (2 s of silence), but the
    # whole body must arrive within client_body_total_s.
    with start(redis_server, backends, client_body_total_s=2.0) as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        try:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)
            )
            began = time.monotonic()
            answer = b""
            sock.settimeout(0.5)
            for byte in BODY:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break  # the proxy stopped reading: its answer is waiting
                try:
                    answer += sock.recv(65536)
                except TimeoutError:
                    continue
                if answer:
                    break
            answer += read_all(sock, 5)
            elapsed = time.monotonic() - began
        finally:
            sock.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"client_body_total_s" in answer
        assert 1.5 < elapsed < 6, elapsed
        # The proxy serves others as before.
        assert requests.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=10).ok


def test_head_deadlines_end_silent_connections_on_time(redis_server, backends):
    """A kept-alive connection without a next request ends after keepalive_s, a half-sent
    head after client_header_timeout_s, neither much before nor much after."""
    with start(redis_server, backends, keepalive_s=1) as proxy:
        idle = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        half = open_stalled(proxy.port, HALF_HEAD)
        try:
            idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = idle.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200") and b"keep-alive" in answer.lower()
            began = time.monotonic()
            assert read_all(idle, 10) == b""
            idle_for = time.monotonic() - began
            assert read_all(half, 10) == b""  # no answer to a head that never ended
            half_for = time.monotonic() - began
        finally:
            idle.close()
            half.close()
        assert 0.9 < idle_for < 2.0, idle_for
        assert 1.9 < half_for < 3.0, half_for  # client_header_timeout_s: 2.0
