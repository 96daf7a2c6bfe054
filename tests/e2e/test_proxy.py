"""The proxy end to end: real llmlbd (gunicorn + gevent), real Redis, real HTTP backends."""

from __future__ import annotations

import json
import time

import openai
import pytest
import requests

from tests.fakeserver import HANG_UP, ScriptedServer
from tests.harness import LLMLBD, StubBackends, free_port, wait_until

pytestmark = pytest.mark.e2e

CHAT = {"model": "stub-model", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture(scope="module")
def backends():
    with StubBackends(2) as stubs:
        yield stubs


@pytest.fixture(scope="module")
def proxy(redis_server, backends):
    config = {
        "redis": {"url": redis_server.url},
        "backends": backends.config(),
        "collector": {"enabled": False},
        "server": {"max_body_bytes": 4096},
    }
    with LLMLBD(config) as instance:
        yield instance


class TestTransparency:
    def test_body_bytes_are_forwarded_unchanged(self, proxy, backends):
        """Odd spacing, key order and unicode escapes reach the backend byte for byte."""
        raw = b'{ "messages":[{"content":"caf\\u00e9  ","role":"user"}],\n"model" :"stub-model"}'
        response = requests.post(
            f"{proxy.url}/v1/chat/completions",
            data=raw,
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 200
        served_by = backends.urls[backends.names.index(response.headers["x-llmlbd-backend"])]
        assert requests.get(f"{served_by}/stub/last_body").content == raw

    def test_hop_by_hop_headers_stay_on_their_hop(self, proxy):
        """Connection-scoped headers are not forwarded; end-to-end ones are, plus X-Forwarded-For."""
        seen = requests.get(
            f"{proxy.url}/v1/stub/headers",
            headers={
                "Connection": "keep-alive, x-secret-hop",
                "x-secret-hop": "1",
                "TE": "trailers",
                "Keep-Alive": "timeout=5",
                "x-custom": "kept",
                "Authorization": "Bearer abc",
            },
        ).json()
        assert seen["x-custom"] == "kept" and seen["authorization"] == "Bearer abc"
        assert seen["x-forwarded-for"] == "127.0.0.1"
        for hop in ("x-secret-hop", "te", "keep-alive"):
            assert hop not in seen
        assert seen.get("connection", "keep-alive") == "keep-alive"

    def test_query_string_and_extra_paths_are_forwarded(self, proxy):
        response = requests.post(
            f"{proxy.url}/tokenize?x=1", json={"model": "stub-model", "prompt": "hi"}
        )
        assert response.status_code == 200 and response.json()["count"] == 3

    def test_models_is_the_union_of_backends(self, proxy):
        data = requests.get(f"{proxy.url}/v1/models").json()
        assert [m["id"] for m in data["data"]] == ["stub-model"]

    def test_health_and_readiness(self, proxy):
        assert requests.get(f"{proxy.url}/healthz").json() == {"status": "ok"}
        ready = requests.get(f"{proxy.url}/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"


class TestStreaming:
    def test_chunks_pass_through_as_they_arrive(self, proxy):
        """With 0.3 s between backend chunks, the client sees each chunk long before the end."""
        started = time.monotonic()
        arrivals = []
        with requests.post(
            f"{proxy.url}/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers={"x-stub-chunks": "4", "x-stub-interval": "0.3"},
            stream=True,
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith(b"data: "):
                    arrivals.append(time.monotonic() - started)
        assert len(arrivals) == 6  # 4 tokens, the final chunk, [DONE]
        assert arrivals[0] < 0.25, arrivals
        assert arrivals[-1] > 1.0, arrivals

    def test_official_openai_client_streaming_and_not(self, proxy):
        client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
        completion = client.chat.completions.create(model="stub-model", messages=CHAT["messages"])
        assert completion.choices[0].message.content == "hello"
        stream = client.chat.completions.create(
            model="stub-model", messages=CHAT["messages"], stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
        assert text == "t0 t1 t2 t3 t4 t5 t6 t7 "
        models = client.models.list()
        assert [m.id for m in models.data] == ["stub-model"]
        client.close()

    def test_backend_dying_mid_stream_ends_with_an_error_event(self, proxy, redis_client):
        with requests.post(
            f"{proxy.url}/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers={"x-stub-abort-after": "2"},
            stream=True,
        ) as response:
            events = [line for line in response.iter_lines() if line.startswith(b"data: ")]
        assert len(events) == 3
        assert json.loads(events[-1][6:])["error"]["code"] == "upstream_error"


def error_of(response):
    body = response.json()
    assert set(body["error"]) >= {"message", "type", "code"}
    return body["error"]


class TestErrors:
    def test_malformed_json_is_400(self, proxy):
        response = requests.post(
            f"{proxy.url}/v1/chat/completions",
            data=b'{"model": "x",',
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 400
        assert "not valid JSON" in error_of(response)["message"]

    def test_oversized_body_is_413(self, proxy):
        response = requests.post(
            f"{proxy.url}/v1/chat/completions", json={**CHAT, "pad": "x" * 5000}
        )
        assert response.status_code == 413
        assert error_of(response)["code"] == "request_too_large"

    def test_oversized_chunked_body_is_413(self, proxy):
        def body():
            for _ in range(10):
                yield b"x" * 1000

        response = requests.post(f"{proxy.url}/v1/chat/completions", data=body())
        assert response.status_code == 413

    def test_unknown_route_is_404_json(self, proxy):
        response = requests.get(f"{proxy.url}/admin")
        assert response.status_code == 404 and error_of(response)["code"] == "not_found"

    def test_backend_error_status_passes_through(self, proxy):
        response = requests.post(
            f"{proxy.url}/v1/chat/completions", json=CHAT, headers={"x-stub-status": "400"}
        )
        assert response.status_code == 400
        assert response.json()["error"]["message"] == "stub error 400"

    def test_nothing_leaked_after_errors(self, proxy, redis_server):
        import redis as redis_lib

        client = redis_lib.Redis.from_url(redis_server.url, decode_responses=True)
        wait_until(
            lambda: client.hgetall("llmlb:{default}:inflight") == {},
            timeout=5,
            message="in-flight counts back to zero",
        )
        assert client.hlen("llmlb:{default}:leases") == 0
        client.close()


def refusing_port() -> int:
    """A port with nothing listening: connections are refused at once."""
    return free_port()


class TestDeadBackends:
    def test_refused_connection_is_retried_on_another_backend(self, redis_server, backends):
        dead = f"http://127.0.0.1:{refusing_port()}"
        config = {
            "redis": {"url": redis_server.url},
            "collector": {"enabled": False},
            "backends": [{"url": dead, "name": "dead"}, backends.config()[0]],
        }
        with LLMLBD(config, workers=1) as proxy:
            for _ in range(6):
                response = requests.post(f"{proxy.url}/v1/chat/completions", json=CHAT)
                assert response.status_code == 200
                assert response.headers["x-llmlbd-backend"] == "stub-0"
            metrics = requests.get(f"{proxy.url}/metrics").text
            assert 'llmlbd_retries_total{backend="dead",reason="connect"}' in metrics

    def test_every_backend_dead_is_502(self, redis_server):
        config = {
            "redis": {"url": redis_server.url},
            "collector": {"enabled": False},
            "backends": [
                {"url": f"http://127.0.0.1:{refusing_port()}", "name": f"d{i}"} for i in range(2)
            ],
        }
        with LLMLBD(config, workers=1) as proxy:
            response = requests.post(f"{proxy.url}/v1/chat/completions", json=CHAT)
            assert response.status_code == 502
            assert error_of(response)["code"] == "backend_failed"

    def test_a_backend_silent_mid_stream_ends_it_after_read_timeout_s(self, redis_server):
        """A backend that stops sending mid-stream for longer than server.read_timeout_s
        ends the stream with an SSE error event after about that long, not sooner."""
        with StubBackends(1) as stubs:
            config = {
                "redis": {"url": redis_server.url},
                "collector": {"enabled": False},
                "server": {"read_timeout_s": 0.5},
                "backends": stubs.config(),
            }
            with LLMLBD(config, workers=1) as proxy:
                began = time.monotonic()
                with requests.post(
                    f"{proxy.url}/v1/chat/completions",
                    json={**CHAT, "stream": True},
                    headers={"x-stub-chunks": "3", "x-stub-interval": "3"},
                    stream=True,
                    timeout=10,
                ) as response:
                    events = [line for line in response.iter_lines() if line.startswith(b"data: ")]
                took = time.monotonic() - began
        assert len(events) == 2, events  # the first chunk, then the error event
        assert json.loads(events[-1][6:])["error"]["code"] == "upstream_error"
        assert 0.5 <= took < 2.5, took

    def test_silent_backend_is_504(self, redis_server):
        silent = ScriptedServer(*[[]] * 8, HANG_UP)  # reads each request, never answers
        port = silent.port
        config = {
            "redis": {"url": redis_server.url},
            "collector": {"enabled": False},
            "server": {"read_timeout_s": 0.5},
            "backends": [{"url": f"http://127.0.0.1:{port}", "name": "silent"}],
        }
        try:
            with LLMLBD(config, workers=1) as proxy:
                response = requests.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=10)
                assert response.status_code == 504
                assert error_of(response)["code"] == "upstream_timeout"
        finally:
            silent.close()

    def test_no_backend_for_the_model_is_404(self, redis_server, backends, redis_client):
        config = {
            "redis": {"url": redis_server.url},
            "collector": {"enabled": False},
            "server": {"pool": "models"},
            "backends": backends.config(),
        }
        for name in backends.names:
            redis_client.hset(f"llmlb:{{models}}:backend:{name}", "models", "stub-model")
        with LLMLBD(config, workers=1) as proxy:
            response = requests.post(
                f"{proxy.url}/v1/chat/completions", json={**CHAT, "model": "gpt-7"}
            )
            assert response.status_code == 404
            assert error_of(response)["code"] == "model_not_found"

    def test_max_request_count_gives_429_with_retry_after(self, redis_server, backends):
        config = {
            "redis": {"url": redis_server.url},
            "collector": {"enabled": False},
            "server": {"pool": "capped"},
            "lb_config": {"maxRequestCount": 1},
            "backends": backends.config()[:1],
        }
        with LLMLBD(config, workers=1) as proxy:
            slow = requests.Session()
            import threading

            holder = threading.Thread(
                target=lambda: slow.post(
                    f"{proxy.url}/v1/chat/completions", json=CHAT, headers={"x-stub-delay": "1.5"}
                )
            )
            holder.start()
            time.sleep(0.5)
            response = requests.post(f"{proxy.url}/v1/chat/completions", json=CHAT)
            holder.join()
            assert response.status_code == 429
            assert response.headers["Retry-After"] == "1"
            assert error_of(response)["code"] == "max_request_count"


def test_backend_headers_the_server_cannot_relay_give_502_and_leak_nothing(redis_server):
    """A backend answering with a header gunicorn refuses to send: 502 JSON, lease released."""
    import redis as redis_lib

    bad = b"HTTP/1.1 200 OK\r\nX-Bad\x01Name: v\r\nContent-Length: 2\r\n\r\nok"
    listener = ScriptedServer(then=bad)
    port = listener.port
    config = {
        "redis": {"url": redis_server.url},
        "collector": {"enabled": False},
        "server": {"pool": "badheaders"},
        "backends": [{"url": f"http://127.0.0.1:{port}", "name": "odd"}],
    }
    client = redis_lib.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        with LLMLBD(config, workers=1) as proxy:
            response = requests.post(f"{proxy.url}/v1/chat/completions", json=CHAT)
            assert response.status_code == 502
            assert "cannot relay" in error_of(response)["message"]
            # Releases are sent by the worker's release sender just after the response
            # (docs/design.md): wait for it; a leaked count would never come back to zero.
            wait_until(
                lambda: client.hgetall("llmlb:{badheaders}:inflight") == {},
                timeout=5,
                message="in-flight count back to zero",
            )
            assert client.hlen("llmlb:{badheaders}:leases") == 0
    finally:
        listener.close()
        client.close()
