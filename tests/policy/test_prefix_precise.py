"""prefix_cache with index: precise, against a real Redis and a hand-built exact index."""

from __future__ import annotations

import itertools
import random

import pytest
import redis
from redis.crc import key_slot

from collector.kv_sequence import batch_ops
from llmlbd.config.loader import config_from_dict
from llmlbd.kvblocks import hashing, wire
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.profiles.prefix_cache import PrefixCache
from llmlbd.request import RoutingRequest
from llmlbd.state.keys import PoolKeys
from llmlbd.state.kv_index import KVIndexWriter
from llmlbd.state.leases import Leases
from llmlbd.state.ordered_index import index_keys
from tests.kvblocks.capture import batches as captured_batches

_ids = itertools.count()
PROMPT = list(range(1000, 1000 + 16 * 20))  # 20 full blocks of 16 tokens
HASHES = hashing.block_hashes(PROMPT, 16)


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    yield c
    c.close()


def make_policy(client, count=3, lb=None, seed=1):
    cfg = config_from_dict(
        {
            "lb_policy": "prefix_cache",
            "lb_config": {"index": "precise", **(lb or {})},
            "backends": [
                {"name": f"b{i}", "url": f"http://127.0.0.1:{9000 + i}"} for i in range(count)
            ],
        }
    )
    keys = PoolKeys("precise")
    leases = Leases(client, keys, "w1", 60_000)
    ctx = PolicyContext(cfg.backends, cfg.lb_config, keys, leases, client, rng=random.Random(seed))
    return PrefixCache(ctx)


def writer(client, name) -> KVIndexWriter:
    return KVIndexWriter(client, PoolKeys("precise"), name, "test", 100_000, 60_000)


def hold(client, name, hashes, tier="gpu") -> None:
    w = writer(client, name)
    w.apply(["S", tier, len(hashes), *hashes], 0, 0.0, 16)
    w.live()


def request(prompt=PROMPT, salt="", model="m"):
    return RoutingRequest(
        request_id=f"req-{next(_ids)}",
        method="POST",
        path="/v1/completions",
        body={"model": model, "prompt": prompt},
        model=model,
        cache_salt=salt,
    )


class TestLookup:
    def test_longest_run_of_leading_blocks_wins(self, client) -> None:
        policy = make_policy(client)
        hold(client, "b0", HASHES[:6])
        hold(client, "b1", HASHES[:12])
        hold(client, "b2", HASHES[:2] + HASHES[3:20])  # a hole at block 2 ends its run
        decision = policy.pick(request(), frozenset())
        assert decision.backend.name == "b1"
        assert decision.reason == "affinity"
        d = decision.details
        assert (d["index"], d["matched_blocks"], d["prompt_blocks"], d["live_backends"]) == (
            "precise",
            12,
            20,
            3,
        )
        assert d["tokenizer"] == "ids"

    def test_a_short_match_is_a_miss_and_goes_by_load(self, client) -> None:
        policy = make_policy(client)
        hold(client, "b0", HASHES[:3])  # under minMatchBlocks (4)
        hold(client, "b1", [])
        client.hset(policy.ctx.keys.inflight, mapping={"b0": 1, "b2": 1})
        decision = policy.pick(request(), frozenset())
        assert (decision.backend.name, decision.reason) == ("b1", "miss")

    def test_load_bound_moves_an_overloaded_match(self, client) -> None:
        policy = make_policy(client, lb={"maxLoadGap": 4})
        hold(client, "b0", HASHES)
        hold(client, "b1", [])
        client.hset(policy.ctx.keys.inflight, mapping={"b0": 10, "b1": 0, "b2": 3})
        decision = policy.pick(request(), frozenset())
        assert (decision.backend.name, decision.reason) == ("b1", "overloaded")
        assert decision.details["best_backend"] == "b0"

    def test_salt_and_lora_change_the_blocks(self, client) -> None:
        policy = make_policy(client, lb={"loraAdapters": ["ad"]})
        hold(client, "b2", HASHES)
        assert policy.pick(request(), frozenset()).backend.name == "b2"
        assert policy.pick(request(salt="tenant"), frozenset()).reason == "miss"
        assert policy.pick(request(model="ad"), frozenset()).reason == "miss"
        hold(client, "b0", hashing.block_hashes(PROMPT, 16, lora_name="ad"))
        assert policy.pick(request(model="ad"), frozenset()).backend.name == "b0"

    def test_offloaded_blocks_count_only_when_asked(self, client) -> None:
        hold(client, "b1", HASHES[:5])
        hold(client, "b1", HASHES[5:15], tier="offload")
        hold(client, "b2", HASHES[:8])
        assert make_policy(client).pick(request(), frozenset()).backend.name == "b2"
        counted = make_policy(client, lb={"countOffloaded": True})
        assert counted.pick(request(), frozenset()).details["matched_blocks"] == 15

    def test_excluded_and_drained_backends_are_not_picked(self, client) -> None:
        policy = make_policy(client)
        hold(client, "b0", HASHES)
        hold(client, "b1", HASHES[:10])
        assert policy.pick(request(), frozenset({"b0"})).backend.name == "b1"
        client.sadd(policy.ctx.keys.drained, "b1")
        assert policy.pick(request(), frozenset({"b0"})).backend.name == "b2"


class TestFallback:
    def test_no_live_index_routes_by_the_approximate_index(self, client) -> None:
        policy = make_policy(client)
        w = writer(client, "b0")
        w.apply(["S", "gpu", len(HASHES), *HASHES], 0, 0.0, 16)
        w.silent()  # the stream is down: its blocks are not trusted
        decision = policy.pick(request(), frozenset())
        assert decision.details["index"] == "approximate"
        assert decision.details["precise_fallback"] == "no_index"
        # the approximate index learned where it went: the same prompt follows it
        again = policy.pick(request(), frozenset())
        assert again.backend.name == decision.backend.name and again.reason == "affinity"

    def test_a_prompt_that_cannot_be_tokenized_falls_back(self, client) -> None:
        policy = make_policy(client, lb={"tokenizeTimeout": 200})
        hold(client, "b0", HASHES)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi " * 100}]}
        req = RoutingRequest("r-x", "POST", "/v1/chat/completions", body=body, model="m")
        decision = policy.pick(req, frozenset())  # /tokenize on 127.0.0.1:900x: refused
        assert decision.details["precise_fallback"] == "tokenize_failed"
        assert decision.details["index"] == "approximate"


def test_agrees_with_the_real_capture(client) -> None:
    """The index built from a real vLLM's events serves a request whose tokens are the ones
    that vLLM hashed: the whole prompt matches on that backend."""
    policy = make_policy(client, lb={"kvBlockSize": 128})
    first = captured_batches()[0]
    ops, size = batch_ops(
        wire.decode_batch(wire.encode_batch(0.0, first["batch"]["events"])).events
    )
    w = writer(client, "b1")
    w.apply(ops, first["seq"], first["batch"]["ts"], size)
    w.live()
    hold(client, "b0", [])
    tokens = first["batch"]["events"][0]["token_ids"]
    decision = policy.pick(request(prompt=tokens + [5] * 46), frozenset())  # 1326-token prompt
    assert decision.backend.name == "b1"
    assert decision.details["matched_blocks"] == 10 == decision.details["prompt_blocks"]


def test_keys_of_one_call_share_a_slot(client) -> None:
    keys = PoolKeys("precise")
    names = ["b0", "b1"]
    all_keys = [keys.inflight, keys.drained, *(keys.kv_state(n) for n in names)]
    all_keys += [keys.kv_blocks(n, t) for n in names for t in ("gpu", "offload")]
    # declared (the ordered index, liveness) or derived from the pool's base in the script
    all_keys += [*index_keys(keys, "m"), keys.kv_live, *(keys.kv_holders(h) for h in HASHES)]
    assert len({key_slot(k.encode()) for k in all_keys}) == 1


def test_explain_is_read_only(client) -> None:
    policy = make_policy(client)
    hold(client, "b2", HASHES[:9])
    answer = policy.explain(request())
    assert answer["choice"] == "b2" and answer["index"] == "precise"
    rows = {row["name"]: row for row in answer["candidates"]}
    assert rows["b2"]["score"] == 9 and rows["b2"]["index_live"]
    assert answer["prefix_match"] == 9
    assert client.hlen(policy.ctx.keys.leases) == 0
    from llmlbd.ctl.explain import render_explain

    text = render_explain(answer)
    assert "-> b2" in text and "INDEX LIVE" in text
