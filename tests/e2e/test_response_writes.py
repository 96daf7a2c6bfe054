"""The response head with the first body bytes (server/worker/onewrite.py): nothing waits, nothing is lost."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from tests.harness import LLMLBD

pytestmark = pytest.mark.e2e

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
FIRST_TOKEN_AFTER_S = 1.5


class SlowFirstToken:
    """A backend that sends a stream's head at once and its first event much later."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            while conn.recv(65536):
                conn.sendall(SSE_HEAD)
                time.sleep(FIRST_TOKEN_AFTER_S)
                conn.sendall(b"c\r\ndata: late\n\n\r\n0\r\n\r\n")

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def proxy(redis_server):
    backend = SlowFirstToken()
    config = {
        "redis": {"url": redis_server.url},
        "server": {"pool": "writes"},
        "backends": [{"url": f"http://127.0.0.1:{backend.port}", "name": "slow"}],
        "collector": {"enabled": False},
    }
    with LLMLBD(config, workers=1) as instance:
        yield instance
    backend.close()


def test_a_streams_headers_do_not_wait_for_its_first_token(proxy):
    started = time.monotonic()
    with requests.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "m", "stream": True, "messages": []},
        stream=True,
        timeout=10,
    ) as response:
        headers_at = time.monotonic() - started
        assert response.status_code == 200
        assert response.headers["x-llmlbd-backend"] == "slow"
        body = b"".join(response.iter_content(None))
        body_at = time.monotonic() - started
    assert body == b"data: late\n\n"
    assert headers_at < FIRST_TOKEN_AFTER_S - 0.5 < body_at, (headers_at, body_at)


def test_bodiless_answers_still_send_their_head(proxy):
    """A HEAD answer and a local JSON answer: the head that waited for a body still leaves."""
    assert requests.get(f"{proxy.url}/healthz", timeout=5).json() == {"status": "ok"}
    missing = requests.head(f"{proxy.url}/nowhere", timeout=5)
    assert missing.status_code == 404 and missing.content == b""
    assert int(missing.headers["content-length"]) > 0
