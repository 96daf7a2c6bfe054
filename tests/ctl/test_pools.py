"""llmlbctl with several pools: views walk every pool, actions need --pool, explain and
inspect follow the proxy's model -> pool rule. In-process CLI on the session's real Redis."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases
from tests.ctl.conftest import seed_metrics


@pytest.fixture
def pools_path(tmp_path, redis_url) -> str:
    path = tmp_path / "pools.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "redis": {"url": redis_url},
                "pools": [
                    {
                        "name": "chat",
                        "models": ["chat-*"],
                        "lb_policy": "round_robin",
                        "backends": [
                            {"name": "c1", "url": "http://127.0.0.1:9101"},
                            {"name": "c2", "url": "http://127.0.0.1:9102"},
                        ],
                    },
                    {
                        "name": "embed",
                        "models": ["bge"],
                        "backends": [{"name": "e1", "url": "http://127.0.0.1:9201"}],
                    },
                ],
            }
        )
    )
    return str(path)


@pytest.fixture
def run(pools_path, monkeypatch):
    from llmlbd.ctl import main

    monkeypatch.delenv("LLMLBD_CONFIG", raising=False)
    monkeypatch.delenv("LLMLBD_REDIS_URL", raising=False)

    def invoke(*args: str, input: str | None = None):
        return CliRunner().invoke(
            main, ["--config", pools_path, *args], input=input, catch_exceptions=False
        )

    return invoke


def test_status_shows_every_pool_and_exits_4_when_one_cannot_serve(run, redis_client):
    for pool, name in (("chat", "c1"), ("chat", "c2"), ("embed", "e1")):
        seed_metrics(redis_client, PoolKeys(pool), name, models='["x"]')
    result = run("status", "--json")
    assert result.exit_code == 0, result.output
    pools = json.loads(result.output)["pools"]
    assert [(p["pool"], p["policy"], p["models"]) for p in pools] == [
        ("chat", "round_robin", ["chat-*"]),
        ("embed", "global_least_request", ["bge"]),
    ]
    assert [b["name"] for b in pools[1]["backends"]] == ["e1"]

    redis_client.sadd(PoolKeys("embed").drained, "e1")
    text = run("status")
    assert text.exit_code == 4  # the embed pool has nothing left to serve
    assert "pool chat   policy round_robin   models chat-*" in text.output
    assert "pool embed   policy global_least_request   models bge" in text.output
    # One pool alone: the single-pool output and its exit code.
    chat = run("--pool", "chat", "status", "--json")
    assert chat.exit_code == 0 and json.loads(chat.output)["pool"] == "chat"


def test_actions_need_a_pool_and_reach_only_that_pool(run, redis_client):
    refused = run("drain", "c1")
    assert refused.exit_code == 2
    assert "the config has 2 pools (chat, embed): choose one with --pool" in refused.output
    assert run("--pool", "chat", "drain", "c1").exit_code == 0
    assert redis_client.smembers(PoolKeys("chat").drained) == {"c1"}
    assert not redis_client.exists(PoolKeys("embed").drained)
    # A backend of another pool is not one of this pool's.
    assert run("--pool", "embed", "drain", "c2").exit_code == 3
    unknown = run("--pool", "audio", "status")
    assert unknown.exit_code == 2
    assert "no pool named 'audio' in the config (pools: chat, embed)" in unknown.output


def test_backend_list_walks_every_pool(run):
    result = run("backend", "list", "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)["pools"]
    assert {pool: [b["name"] for b in data["backends"]] for pool, data in found.items()} == {
        "chat": ["c1", "c2"],
        "embed": ["e1"],
    }


def test_inspect_request_finds_the_lease_in_whichever_pool_holds_it(run, redis_client):
    leases = Leases(redis_client, PoolKeys("embed"), "host:1:w", ttl_ms=5000)
    leases.heartbeat()
    assert leases.acquire("req-42", "e1").backend == "e1"
    result = run("inspect", "request", "req-42", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["pool"], data["backend"], data["worker_alive"]) == ("embed", "e1", True)
    assert run("inspect", "request", "req-43").exit_code == 3
    # Without an id, --model picks the pool the proxy would use.
    state = json.loads(run("inspect", "request", "--model", "chat-7b", "--json").output)
    assert state["pool"] == "chat" and [b["name"] for b in state["backends"]] == ["c1", "c2"]


def test_explain_uses_the_models_pool_or_answers_the_proxys_404(run, redis_client):
    seed_metrics(redis_client, PoolKeys("embed"), "e1")
    body = json.dumps({"model": "bge", "input": "x"})
    result = run("explain", "--json", "--path", "/v1/embeddings", "--body", "-", input=body)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["pool"], data["policy"], data["choice"]) == (
        "embed",
        "global_least_request",
        "e1",
    )
    missing = run("explain", "--body", "-", input=json.dumps({"model": "gpt-9", "prompt": "x"}))
    assert missing.exit_code == 3
    assert "404 model_not_found" in missing.output and "gpt-9" in missing.output


def test_backend_add_keeps_a_name_one_server_across_pools(run, redis_client):
    clash = run("--pool", "embed", "backend", "add", "http://127.0.0.1:9999", "--name", "c1")
    assert clash.exit_code == 1
    assert "backend c1 is http://127.0.0.1:9101 in pool chat" in clash.output
    assert not redis_client.exists(PoolKeys("embed").members)
    # The same server may join a second pool under its name.
    same = run("--pool", "embed", "backend", "add", "http://127.0.0.1:9101", "--name", "c1")
    assert same.exit_code == 0, same.output
    assert set(redis_client.hkeys(PoolKeys("embed").members)) == {"e1", "c1"}
