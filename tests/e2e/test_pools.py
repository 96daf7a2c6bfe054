"""Several pools in one llmlbd: a real `llmlbd start`, its collectors and llmlbctl, in front
of stub backends, on a real Redis and on a real 3-master Redis Cluster."""

from __future__ import annotations

import itertools
import json
import threading

import pytest
import redis
import requests

from llmlbd.state.keys import PoolKeys
from llmlbd.state.types import ClaimRecord
from tests.e2e.test_membership import llmlbctl
from tests.harness import LLMLBD, StubBackends, wait_until

pytestmark = pytest.mark.e2e

CHAT_MODEL, EMBED_MODEL = "chat-small", "embed-large"


def body(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}]}


def pools_config(redis_cfg: dict, chat: StubBackends, embed: StubBackends, **top) -> dict:
    """Two pools with different policies; backend names unique across pools."""
    return {
        "redis": redis_cfg,
        "collector": {"enabled": True, "processes": 2, "metrics_port": 0},
        "pools": [
            {
                "name": "chat",
                "models": ["chat-*"],
                "lb_policy": "round_robin",
                "backends": [{"name": f"chat-{i}", "url": url} for i, url in enumerate(chat.urls)],
            },
            {
                "name": "embed",
                "models": [EMBED_MODEL],
                "lb_policy": "global_least_request",
                "lb_config": {"maxRequestCount": 1},
                "backends": [
                    {"name": f"embed-{i}", "url": url} for i, url in enumerate(embed.urls)
                ],
            },
        ],
        **top,
    }


def post(url: str, model: str, delay: float = 0.0) -> requests.Response:
    headers = {"x-stub-delay": str(delay)} if delay else {}
    return requests.post(
        f"{url}/v1/chat/completions", json=body(model), headers=headers, timeout=30
    )


def scraped(client: redis.Redis, pool: str, name: str) -> bool:
    return client.hget(PoolKeys(pool).backend(name), "health") == "up"


def test_two_pools_route_by_model_with_their_own_policy_state_and_collector(redis_server, tmp_path):
    with (
        StubBackends(2, model=CHAT_MODEL) as chat,
        StubBackends(1, model=EMBED_MODEL) as embed,
    ):
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        client.flushall()
        config = pools_config({"url": redis_server.url}, chat, embed)
        with LLMLBD(config, workers=2) as proxy:
            # The collector processes scrape every pool's backends into that pool's keys.
            wait_until(
                lambda: (
                    all(scraped(client, "chat", f"chat-{i}") for i in range(2))
                    and scraped(client, "embed", "embed-0")
                ),
                timeout=20,
                message="both pools scraped",
            )
            # Every backend has an owner in its own pool's keys. Waited for: while the two
            # processes split the chat pool, one hands a backend over (released, then
            # claimed by the other), so a read at that instant may miss it.
            wait_until(
                lambda: (
                    set(client.hgetall(PoolKeys("chat").scrape_owners)) == {"chat-0", "chat-1"}
                    and set(client.hgetall(PoolKeys("embed").scrape_owners)) == {"embed-0"}
                ),
                timeout=20,
                message="every backend owned in its pool",
            )
            # The two collector processes heart-beat in both pools and split each pool
            # through its own leases: the chat pool's two backends end up one each.
            for pool in ("chat", "embed"):
                assert client.zcard(PoolKeys(pool).collectors) == 2
            wait_until(
                lambda: (
                    len(
                        {
                            ClaimRecord.parse(v).collector
                            for v in client.hgetall(PoolKeys("chat").scrape_owners).values()
                        }
                    )
                    == 2
                ),
                timeout=10,
                message="the chat pool split between the two collector processes",
            )

            # round_robin in the chat pool: one connection-free request after another
            # alternates between its two backends; nothing reaches the embed pool.
            served = [post(proxy.url, CHAT_MODEL).headers["x-llmlbd-backend"] for _ in range(6)]
            assert sorted(served) == ["chat-0"] * 3 + ["chat-1"] * 3
            assert all(a != b for a, b in itertools.pairwise(served))
            assert post(proxy.url, EMBED_MODEL).headers["x-llmlbd-backend"] == "embed-0"

            # Each pool's in-flight count and cap live in its own keys: the embed pool's
            # cap of 1 answers 429 while one request is held, the chat pool (no cap) is
            # untouched and serves.
            held = threading.Thread(target=post, args=(proxy.url, EMBED_MODEL, 2.0))
            held.start()
            try:
                wait_until(
                    lambda: client.hget(PoolKeys("embed").inflight, "embed-0") == "1",
                    timeout=10,
                    message="embed request in flight",
                )
                capped = post(proxy.url, EMBED_MODEL)
                assert capped.status_code == 429, capped.text
                assert capped.json()["error"]["code"] == "max_request_count"
                assert post(proxy.url, CHAT_MODEL).status_code == 200
                # (released when the worker closes the response, just after the client
                # has it all)
                wait_until(
                    lambda: sum(map(int, client.hgetall(PoolKeys("chat").inflight).values())) == 0,
                    timeout=5,
                    message="chat request released",
                )
                assert client.hget(PoolKeys("embed").inflight, "embed-0") == "1"
            finally:
                held.join(30)
            # Released in the pool it was reserved in.
            wait_until(
                lambda: int(client.hget(PoolKeys("embed").inflight, "embed-0") or 0) == 0,
                timeout=5,
                message="embed request released",
            )
            assert client.hlen(PoolKeys("embed").leases) == 0
            assert client.hlen(PoolKeys("chat").leases) == 0
            # Every worker heart-beats in every pool (each pool reaps its own leases).
            for pool in ("chat", "embed"):
                assert client.zcard(PoolKeys(pool).workers) == 2

            # A model no pool lists, with no default pool: OpenAI-shaped 404.
            missing = post(proxy.url, "mystery-model")
            assert missing.status_code == 404
            error = missing.json()["error"]
            assert error["code"] == "model_not_found"
            assert "mystery-model" in error["message"] and "chat, embed" in error["message"]

            # Each request's log line names its pool (the 429 too: refused in that pool).
            logged = [
                json.loads(line)
                for line in proxy.log().splitlines()
                if line.startswith("{") and '"request_done"' in line
            ]
            pools_by_model = {(line["model"], line["pool"]) for line in logged}
            assert pools_by_model == {
                (CHAT_MODEL, "chat"),
                (EMBED_MODEL, "embed"),
                ("mystery-model", ""),
            }

            # /v1/models is the union of every pool's backends.
            models = requests.get(f"{proxy.url}/v1/models", timeout=10).json()
            assert {m["id"] for m in models["data"]} == {CHAT_MODEL, EMBED_MODEL}

            # llmlbctl: views show every pool; actions need --pool.
            status = llmlbctl(proxy.config_path, "status", "--json")
            assert status.returncode == 0, status.stderr
            shown = {p["pool"]: p for p in json.loads(status.stdout)["pools"]}
            assert set(shown) == {"chat", "embed"}
            assert (shown["chat"]["policy"], shown["embed"]["policy"]) == (
                "round_robin",
                "global_least_request",
            )
            assert {b["name"] for b in shown["embed"]["backends"]} == {"embed-0"}
            assert shown["chat"]["models"] == ["chat-*"]

            refused = llmlbctl(proxy.config_path, "drain", "chat-0")
            assert refused.returncode == 2
            assert "2 pools (chat, embed): choose one with --pool" in refused.stderr
            unknown = llmlbctl(proxy.config_path, "--pool", "nope", "status")
            assert unknown.returncode == 2 and "no pool named 'nope'" in unknown.stderr

            drained = llmlbctl(proxy.config_path, "--pool", "chat", "drain", "chat-0")
            assert drained.returncode == 0, drained.stderr
            assert client.sismember(PoolKeys("chat").drained, "chat-0")
            assert not client.exists(PoolKeys("embed").drained)
            assert {post(proxy.url, CHAT_MODEL).headers["x-llmlbd-backend"] for _ in range(4)} == {
                "chat-1"
            }

        client.close()


@pytest.mark.cluster
def test_pools_spread_over_redis_cluster_shards(cluster_url):
    """Each pool's keys share its {pool} hash tag: one slot per pool, so pools whose names
    hash to different masters put their state (and their script load) on different shards.
    code, audio and chat hash to the first, second and third master of the fixture."""
    placement = {"code": 0, "audio": 1, "chat": 2}
    with (
        StubBackends(1, model="code-7b") as code,
        StubBackends(1, model="whisper-1") as audio,
        StubBackends(2, model="chat-small") as chat,
    ):
        config = {
            "redis": {"url": cluster_url, "mode": "cluster"},
            "collector": {"enabled": True, "processes": 1, "metrics_port": 0},
            "pools": [
                {
                    "name": "code",
                    "models": ["code-*"],
                    "backends": [{"name": "code-0", "url": code.urls[0]}],
                },
                {
                    "name": "audio",
                    "models": ["whisper-1"],
                    "lb_policy": "least_busy",
                    "backends": [{"name": "audio-0", "url": audio.urls[0]}],
                },
                {
                    "name": "chat",
                    "default": True,
                    "lb_policy": "prefix_cache",
                    "backends": [
                        {"name": f"chat-{i}", "url": url} for i, url in enumerate(chat.urls)
                    ],
                },
            ],
        }
        cluster = redis.RedisCluster.from_url(cluster_url, decode_responses=True)
        try:
            with LLMLBD(config, workers=1) as proxy:
                wait_until(
                    lambda: (
                        all(
                            scraped(cluster, pool, name)
                            for pool, name in (("code", "code-0"), ("audio", "audio-0"))
                        )
                        and scraped(cluster, "chat", "chat-1")
                    ),
                    timeout=20,
                    message="every pool scraped",
                )
                for model, backends in (
                    ("code-7b", {"code-0"}),
                    ("whisper-1", {"audio-0"}),
                    ("chat-small", {"chat-0", "chat-1"}),  # no pool lists it: the default
                ):
                    for _ in range(3):
                        answer = post(proxy.url, model)
                        assert answer.status_code == 200, answer.text
                        assert answer.headers["x-llmlbd-backend"] in backends
                # Every pool's lease and index keys were written and its leases released.
                for pool in placement:
                    assert cluster.hlen(PoolKeys(pool).leases) == 0
                    assert cluster.zcard(PoolKeys(pool).workers) == 1
                log = proxy.log()
                assert "publish_failed" not in log and "Traceback" not in log, log[-3000:]
            # Which master holds which pool: scan each primary for llmlbd's keys.
            nodes = sorted(cluster.get_primaries(), key=lambda node: node.port)
            found: dict[str, set[int]] = {}
            for node in nodes:
                direct = redis.Redis(host=node.host, port=node.port, decode_responses=True)
                for key in direct.scan_iter(match="llmlb:*", count=1000):
                    found.setdefault(key.split("}", 1)[0] + "}", set()).add(node.port)
                direct.close()
            owner = {tag[len("llmlb:{") : -1]: ports for tag, ports in found.items()}
            assert set(owner) == set(placement)
            # One shard per pool, and the three pools on three different shards.
            assert all(len(ports) == 1 for ports in owner.values())
            assert len({next(iter(ports)) for ports in owner.values()}) == 3
        finally:
            cluster.close()
