"""Signals as systemd sends them: SIGHUP reloads without dropping a stream, SIGTERM drains."""

from __future__ import annotations

import json
import signal
import time

import pytest
import redis
import requests
import yaml

from tests.harness import LLMLBD, StubBackends, join_all, start_threads, wait_until

pytestmark = pytest.mark.e2e

CHAT = {"model": "stub-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def stream(url: str, results: list, index: int, chunks: int = 20) -> None:
    try:
        with requests.post(
            f"{url}/v1/chat/completions",
            json=CHAT,
            stream=True,
            timeout=30,
            headers={"x-stub-chunks": str(chunks), "x-stub-interval": "0.1"},
        ) as r:
            body = b"".join(r.iter_content(None))
        results[index] = (r.status_code, body.count(b"data: "), body.endswith(b"data: [DONE]\n\n"))
    except requests.RequestException as exc:
        results[index] = type(exc).__name__


def test_sighup_rereads_the_config_and_drops_no_stream(redis_server):
    with StubBackends(2) as stubs:
        config = {
            "redis": {"url": redis_server.url},
            "server": {"pool": "reload"},
            "backends": stubs.config()[:1],
            "collector": {"enabled": False},
        }
        with LLMLBD(config, workers=2) as proxy:
            threads, results = start_threads(8, stream, proxy.url)
            time.sleep(0.5)  # streams are mid-flight
            config["backends"] = stubs.config()[1:]
            with open(proxy.config_path, "w") as out:
                yaml.safe_dump(
                    {**config, "server": {**config["server"], **proxy.config["server"]}}, out
                )
            proxy.proc.signal(signal.SIGHUP)
            wait_until(
                lambda: '"config_reloaded"' in proxy.log(), timeout=10, message="config reloaded"
            )

            def new_workers_route_to_stub_1() -> bool:
                r = requests.post(
                    f"{proxy.url}/v1/chat/completions", json={**CHAT, "stream": False}
                )
                return r.headers.get("x-llmlbd-backend") == "stub-1"

            wait_until(new_workers_route_to_stub_1, timeout=15, message="new config in use")
            join_all(threads)
            # 20 tokens + final chunk + [DONE], every one of them, on every stream.
            assert results == [(200, 22, True)] * 8


def test_bad_config_on_reload_keeps_the_running_one(redis_server):
    with StubBackends(1) as stubs:
        config = {
            "redis": {"url": redis_server.url},
            "backends": stubs.config(),
            "collector": {"enabled": False},
        }
        with LLMLBD(config, workers=1) as proxy:
            with open(proxy.config_path, "w") as out:
                out.write("server:\n  workers: many\n")
            proxy.proc.signal(signal.SIGHUP)
            wait_until(
                lambda: '"reload_rejected"' in proxy.log(), timeout=10, message="reload rejected"
            )
            assert "server.workers: expected a whole number" in proxy.log()
            r = requests.post(f"{proxy.url}/v1/chat/completions", json={**CHAT, "stream": False})
            assert r.status_code == 200


def test_sigterm_lets_streams_finish_and_releases_everything(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    with StubBackends(2) as stubs:
        config = {
            "redis": {"url": redis_server.url},
            "server": {"pool": "term"},
            "backends": stubs.config(),
            "collector": {"enabled": False},
        }
        proxy = LLMLBD(config, workers=2)
        try:
            threads, results = start_threads(6, stream, proxy.url)
            wait_until(
                lambda: len(client.hgetall("llmlb:{term}:leases")) == 6,
                timeout=10,
                message="six streams in flight",
            )
            proxy.proc.signal(signal.SIGTERM)
            time.sleep(1.5)  # gevent workers notice within their 1 s loop, then stop accepting
            with pytest.raises(requests.ConnectionError):
                requests.get(f"{proxy.url}/healthz", timeout=2)  # no longer accepting
            join_all(threads)
            assert results == [(200, 22, True)] * 6
            assert proxy.proc.popen.wait(15) == 0
            assert client.hgetall("llmlb:{term}:inflight") == {}
            assert client.hlen("llmlb:{term}:leases") == 0
            # The request log (written in batches while a worker is busy) lost no line.
            lines = [
                json.loads(line)
                for line in proxy.log().splitlines()
                if '"request_done"' in line and '"/v1/chat/completions"' in line
            ]
            assert [line["outcome"] for line in lines] == ["complete"] * 6
        finally:
            proxy.stop()
            client.close()
