"""Pools in one worker, in-process: a real ProxyApp, real Routers on a real Redis, real
sockets to scripted backends. The model picks the pool; retries, releases and the
Redis-down fallback stay inside it."""

from __future__ import annotations

import json

import pytest

from llmlbd.state.keys import PoolKeys
from tests.fakeserver import http_response
from tests.server.inproc import Proxy, scripted


def body(model: str) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()


def pools_config(redis_url: str, a1: str, a2: str, b1: str, **redis: object) -> dict:
    return {
        "redis": {"url": redis_url, **redis},
        "server": {"connect_timeout_s": 1.0, "read_timeout_s": 2.0},
        "pools": [
            {
                "name": "pa",
                "models": ["m-a*"],
                "lb_policy": "round_robin",
                "backends": [{"name": "a1", "url": a1}, {"name": "a2", "url": a2}],
            },
            {
                "name": "pb",
                "models": ["m-b"],
                "default": True,
                "backends": [{"name": "b1", "url": b1}],
            },
        ],
    }


@pytest.fixture
def pools_proxy():
    made: list[Proxy] = []

    def make(data: dict) -> Proxy:
        made.append(Proxy.from_config(data))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def served(app: Proxy, method: str, model: str | None) -> str:
    path = "/v1/chat/completions" if model else "/v1/files"
    status, headers, answer = app.call(method, path, body(model) if model else b"")
    assert status == "200 OK", answer
    return headers["x-llmlbd-backend"]


def test_retries_and_releases_stay_in_the_models_pool(
    redis_url, redis_client, servers, pools_proxy
):
    busy = http_response(503, b'{"error": {"message": "busy"}}')
    a1, a2 = scripted(servers, then=busy), scripted(servers)
    b1 = scripted(servers)
    app = pools_proxy(pools_config(redis_url, a1, a2, b1))
    # a1 answers 503: the retry goes to the other backend of pool pa, never to pb's b1.
    assert {served(app, "POST", "m-a7") for _ in range(4)} == {"a2"}
    assert servers[0].requests  # a1 was asked
    assert {served(app, "POST", "m-b") for _ in range(2)} == {"b1"}
    assert served(app, "POST", "who-knows") == "b1"  # the default pool
    assert served(app, "GET", None) == "b1"  # no model: the default pool
    for pool in ("pa", "pb"):
        assert not any(int(v) for v in redis_client.hgetall(PoolKeys(pool).inflight).values())
        assert redis_client.hlen(PoolKeys(pool).leases) == 0


def test_without_redis_each_pool_falls_back_on_its_own_backends(
    private_redis, servers, pools_proxy
):
    a1, a2, b1 = scripted(servers), scripted(servers), scripted(servers)
    data = pools_config(private_redis.url, a1, a2, b1)
    data["redis"].update(breaker_failures=1, socket_timeout_s=0.2, connect_timeout_s=0.2)
    app = pools_proxy(data)
    private_redis.stop()
    # Local least-request among pool pa's own backends (ties broken at random).
    assert {served(app, "POST", "m-a1") for _ in range(6)} <= {"a1", "a2"}
    assert served(app, "POST", "m-b") == "b1"
    routers = app.app.runtime.router.routers
    assert routers["pa"].breaker is routers["pb"].breaker  # one Redis, one breaker
    assert routers["pa"].breaker.state != "closed"
    for name in ("pa", "pb"):  # every local slot given back to the pool that took it
        fallback = routers[name].fallback
        assert not fallback.held and not +fallback.inflight


def test_a_model_no_pool_takes_is_404_before_any_backend(redis_url, servers, pools_proxy):
    a1, a2, b1 = scripted(servers), scripted(servers), scripted(servers)
    data = pools_config(redis_url, a1, a2, b1)
    data["pools"][1]["default"] = False
    app = pools_proxy(data)
    status, _, answer = app.call("POST", "/v1/chat/completions", body("gpt-9"))
    assert status.startswith("404")
    error = json.loads(answer)["error"]
    assert (error["code"], error["type"]) == ("model_not_found", "invalid_request_error")
    assert "gpt-9" in error["message"] and "pools: pa, pb" in error["message"]
    assert all(not server.requests for server in servers)
