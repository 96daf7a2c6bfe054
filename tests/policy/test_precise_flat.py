"""prefix_cache with index: precise decides from the reverse index and the ordered index:
the same decisions as a full recomputation, and a per-decision cost that does not grow
with the pool.

The pick (acquire_precise.lua) reads only the holders of the prompt's leading blocks
(`kvx_holders:<hash>`) and walks the ordered index from its lowest score. Its dry run
(explain) reads every member and its block sets, as the script did before: from its rows
(status, matched blocks, load, KV use, live) and its reason the test computes the set of
backends the rule allows (longest match within the load bound, least loaded among equal
matches; else the least loaded, preferring KV use under the limit) and checks the pick is
one of them.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llmlbd.config.loader import config_from_dict
from llmlbd.errors import LLMLBError
from llmlbd.kvblocks import hashing
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.outcomes import no_route
from llmlbd.policy.profiles.prefix_cache import PrefixCache
from llmlbd.request import RoutingRequest
from llmlbd.state.keys import PoolKeys
from llmlbd.state.kv_index import KVIndexWriter
from llmlbd.state.ordered_index import sync
from tests.policy.pool_state import redis_commands, write_backend

_ids = itertools.count()
PROMPT = list(range(1000, 1000 + 16 * 12))  # 12 full blocks of 16 tokens
HASHES = hashing.block_hashes(PROMPT, 16)
KEYS = PoolKeys("pflat")


def make_policy(client: Any, names: list[str], weights: list[float], lb: dict[str, Any]) -> Any:
    from llmlbd.state.leases import Leases

    cfg = config_from_dict(
        {
            "lb_policy": "prefix_cache",
            "lb_config": {"index": "precise", **lb},
            "backends": [
                {"name": n, "url": f"http://127.0.0.1:{9000 + i}", "weight": w}
                for i, (n, w) in enumerate(zip(names, weights))
            ],
        }
    )
    leases = Leases(client, KEYS, "host:1:pflat", 60_000)
    ctx = PolicyContext(
        cfg.backends, cfg.lb_config, KEYS, leases, client, rng=random.Random(next(_ids))
    )
    return PrefixCache(ctx)


def request(model: str = "m", prompt: list[int] = PROMPT) -> RoutingRequest:
    body = {"model": model or "m", "prompt": prompt}
    return RoutingRequest(f"req-{next(_ids)}", "POST", "/v1/completions", body, model=model)


def hold(client: Any, name: str, gpu: list[int], offload: list[int], live: bool) -> None:
    w = KVIndexWriter(client, KEYS, name, "test", 100_000, 60_000)
    ops: list[Any] = []
    if gpu:
        ops += ["S", "gpu", len(gpu), *gpu]
    if offload:
        ops += ["S", "offload", len(offload), *offload]
    w.apply(ops, 0, 0.0, 16)
    if not live:
        w.silent()


def allowed(answer: dict[str, Any], params: Any) -> set[str]:
    """The backends the rule may pick, from a full dry run's rows and reason."""
    ok = [r for r in answer["candidates"] if r["status"] == "ok"]
    min_load = min(r["load"] for r in ok)
    bound = max(min_load + params.max_load_gap, min_load * params.max_load_ratio)

    def kv_fits(r: dict[str, Any]) -> bool:
        return r["kv_usage"] is None or r["kv_usage"] <= params.max_kv_usage

    if answer["reason"] == "affinity":
        bounded = [
            r
            for r in ok
            if r["matched_blocks"] >= max(params.min_match_blocks, 1)
            and r["load"] <= bound
            and kv_fits(r)
        ]
        longest = max(r["matched_blocks"] for r in bounded)
        best = [r for r in bounded if r["matched_blocks"] == longest]
        least = min(r["load"] for r in best)
        return {r["name"] for r in best if r["load"] == least}
    pool = [r for r in ok if kv_fits(r)] or ok
    least_load = min(r["load"] for r in pool)
    return {r["name"] for r in pool if r["load"] == least_load}


backend_state = st.fixed_dictionaries(
    {
        "weight": st.sampled_from([1.0, 1.0, 1.0, 2.0, 0.5]),
        "health": st.sampled_from([None, "up", "up", "up", "up", "down"]),
        "models": st.sampled_from([None, None, "m", "m", "x", "m,x"]),
        "drained": st.sampled_from([False] * 7 + [True]),
        "inflight": st.sampled_from([0, 0, 0, 1, 1, 2, 3]),
        "fresh": st.booleans(),
        "queued": st.sampled_from([0, 0, 0, 1, 2, 5]),
        "kv": st.sampled_from([None, 0.1, 0.1, 0.5, 0.97]),
        "run": st.sampled_from([0, 1, 3, 5, 8, 12, 12]),
        "hole": st.sampled_from([None, None, None, 0, 2, 6]),  # a block missing from the run
        "offload_from": st.sampled_from([None, None, 2, 4]),  # blocks from here offloaded
        "live": st.sampled_from([True, True, True, False]),
    }
)


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    # A few kinds of backend, each repeated: ties (of load, of match) are common.
    states=st.lists(backend_state, min_size=1, max_size=3).flatmap(
        lambda kinds: st.lists(st.sampled_from(kinds), min_size=1, max_size=14)
    ),
    excluded=st.sets(st.integers(0, 13), max_size=2),
    cap=st.sampled_from([0, 0, 2, 3]),
    model=st.sampled_from(["m", "m", ""]),
    offloaded=st.booleans(),
    stranger=st.booleans(),
    wide=st.sampled_from([16, 16, 1, 2, 4]),
)
def test_pick_is_one_a_full_recomputation_allows(
    redis_client, states, excluded, cap, model, offloaded, stranger, wide
):
    """With at most `wide_holders` holders of any block (16, the default: these pools are
    smaller), the pick, its reason and its matched blocks are those of the full read;
    refusals agree too. With fewer (a block held by more is "wide": its holders are
    sampled), an affinity pick is still a pickable in-bound match of at least
    minMatchBlocks, no longer than the longest, and any other pick the exact fallback's."""
    redis_client.flushall()
    names = [f"b{i}" for i in range(len(states))]
    policy = make_policy(
        redis_client,
        names,
        [s["weight"] for s in states],
        {
            "maxRequestCount": cap,
            "maxLoadGap": 2,
            "minMatchBlocks": 2,
            "countOffloaded": offloaded,
        },
    )
    leases = policy.ctx.leases
    seconds, micros = redis_client.time()
    now = seconds * 1000 + micros // 1000
    for name, s in zip(names, states):
        write_backend(redis_client, KEYS, leases, name, s, now)
        held = [h for j, h in enumerate(HASHES[: s["run"]]) if j != s["hole"]]
        split = len(held) if s["offload_from"] is None else s["offload_from"]
        hold(redis_client, name, held[:split], held[split:], s["live"])
    if stranger:  # a backend that left the pool: its blocks are still in the index
        hold(redis_client, "gone", HASHES, [], True)
    sync(redis_client, KEYS, policy.ctx.membership)
    exclude = frozenset(names[i] for i in excluded if i < len(names))
    if exclude == set(names):
        exclude = frozenset()  # refused before the script (llmlbd.policy.outcomes)

    precise = policy.precise
    precise.index.params = dataclasses.replace(precise.params, wide_holders=wide)
    answer = precise.index.explain(policy.ctx.membership, HASHES, model, cap, sorted(exclude))
    req = request(model)
    try:
        decision = policy.pick(req, exclude)
    except LLMLBError as refusal:
        assert answer["choice"] is None  # both refuse, for the same reason
        assert type(refusal) is type(no_route(answer["reason"], req))
        return
    rows = {r["name"]: r for r in answer["candidates"]}
    usable = [r for r in answer["candidates"] if r["status"] in ("ok", "cap", "excluded")]
    streams = redis_client.zcount(KEYS.kv_live, f"({now}", "+inf")  # live, usable or not
    if not any(r["index_live"] for r in usable):
        # No usable backend has a live index: the approximate one routes. Past `wide`
        # live streams the script takes one of them to be usable: it decides (a miss).
        if streams <= wide:
            assert decision.details["precise_fallback"] == "no_index"
            return
        assert decision.reason == "miss"
    assert answer["choice"] is not None
    permitted = allowed(answer, precise.params)
    assert answer["choice"] in permitted  # the dry run follows the rule itself
    d = decision.details
    row = rows[decision.backend.name]
    assert d["matched_blocks"] == row["matched_blocks"]
    best = max((r["matched_blocks"] for r in usable), default=0)
    live = sum(r["index_live"] for r in usable)
    if wide < len(names) + stranger or streams > wide:
        event(f"wide {wide}: {decision.reason}")
        assert d["best_blocks"] <= best
        assert d["live_backends"] >= live  # past `wide` live streams: all of them counted
        if decision.reason == "affinity":
            ok = [r for r in answer["candidates"] if r["status"] == "ok"]
            min_load = min(r["load"] for r in ok)
            p = precise.params
            assert row["status"] == "ok"
            assert max(p.min_match_blocks, 1) <= row["matched_blocks"] <= best
            assert row["load"] <= max(min_load + p.max_load_gap, min_load * p.max_load_ratio)
            assert row["kv_usage"] is None or row["kv_usage"] <= p.max_kv_usage
        else:
            fallback = allowed({**answer, "reason": "miss"}, precise.params)
            assert decision.backend.name in fallback
        return
    event(f"{answer['reason']}, {len(permitted)} allowed")
    assert decision.backend.name in permitted, (decision.backend.name, permitted, answer)
    assert decision.reason == answer["reason"]
    assert d["best_blocks"] == best
    assert d["live_backends"] == live


def idle_pool(redis_client: Any, count: int) -> Any:
    """*count* idle backends, up, fresh idle metrics, each with a live (empty) index."""
    redis_client.flushall()
    names = [f"b{i:04d}" for i in range(count)]
    policy = make_policy(redis_client, names, [1.0] * count, {})
    seconds, micros = redis_client.time()
    now = seconds * 1000 + micros // 1000
    pipe = redis_client.pipeline(transaction=False)
    for name in names:
        pipe.hset(
            KEYS.backend(name),
            mapping={"health": "up", "models": "m", "scraped_at": now, "kv_usage": 0.1},
        )
    pipe.execute()
    for name in names:
        hold(redis_client, name, [], [], True)
    return policy


def conversation(c: int) -> list[int]:
    return [5000 + c] + [(c * 7 + t) % 30000 for t in range(16 * 10 - 1)]  # 10 blocks


def test_a_shorter_match_at_the_least_load_does_not_end_the_reading(redis_client) -> None:
    """Holders are read in random order and the reading stops at one nobody can beat: a
    shorter match at the least load is not one while a backend holds the next block (the
    longest match wins, whichever is read first)."""
    policy = idle_pool(redis_client, 3)
    hold(redis_client, "b0000", HASHES[:5], [], True)  # minMatchBlocks: 4
    hold(redis_client, "b0001", HASHES[:8], [], True)
    hold(redis_client, "b0002", HASHES[:5] + HASHES[6:10], [], True)  # a hole at block 6
    for _ in range(20):
        decision = policy.pick(request(), frozenset())
        assert (decision.backend.name, decision.reason) == ("b0001", "affinity")
        assert decision.details["matched_blocks"] == 8 == decision.details["best_blocks"]
        policy.ctx.leases.release(decision.request_id)


class TestSharedPrefix:
    """A prefix held by more backends than `wide_holders` (a system prompt on every one)."""

    def setup(self, redis_client: Any, deep: bool) -> Any:
        policy = idle_pool(redis_client, 6)
        precise = policy.precise
        precise.index.params = dataclasses.replace(precise.params, wide_holders=2)
        for i in range(6):  # every backend holds 6 blocks; b0005 holds 10 when deep
            held = HASHES[: 10 if deep and i == 5 else 6]
            hold(redis_client, f"b{i:04d}", held, [], True)
        return policy

    def test_a_deeper_holder_is_found_and_stands(self, redis_client) -> None:
        """The holders of the first block past the shared ones are read whole: a
        conversation's next turn follows its own backend, as the full read says."""
        policy = self.setup(redis_client, deep=True)
        for _ in range(10):
            decision = policy.pick(request(), frozenset())
            assert (decision.backend.name, decision.reason) == ("b0005", "affinity")
            assert decision.details["matched_blocks"] == 10 == decision.details["best_blocks"]
            policy.ctx.leases.release(decision.request_id)

    def test_a_new_conversation_goes_to_an_in_bound_holder(self, redis_client) -> None:
        """Nobody holds more than the shared blocks: a sample of their holders decides,
        and the pick holds them (the full read's match)."""
        policy = self.setup(redis_client, deep=False)
        prompt = PROMPT[: 16 * 6] + [7] * 16 * 4  # the shared 6 blocks, then new ones
        seen = set()
        for _ in range(30):
            decision = policy.pick(request(prompt=prompt), frozenset())
            assert decision.reason == "affinity"
            assert decision.details["matched_blocks"] == 6 == decision.details["best_blocks"]
            seen.add(decision.backend.name)
            policy.ctx.leases.release(decision.request_id)
        assert len(seen) > 2  # the sample is drawn at random

    def test_overloaded_holders_go_by_load(self, redis_client) -> None:
        policy = self.setup(redis_client, deep=False)
        leases = policy.ctx.leases
        busy = int(policy.precise.params.max_load_gap) + 4  # past the load bound over idle b0004
        for i in (0, 1, 2, 3, 5):  # every holder busy; b0004 holds nothing any more
            for k in range(busy):
                leases.acquire(f"busy-{i}-{k}", f"b{i:04d}")
        KVIndexWriter(redis_client, KEYS, "b0004", "test", 100_000, 60_000).clear("test")
        hold(redis_client, "b0004", [], [], True)
        decision = policy.pick(request(), frozenset())
        assert (decision.backend.name, decision.reason) == ("b0004", "overloaded")
        assert decision.details["matched_blocks"] == 0
        assert decision.details["best_blocks"] == 6


@pytest.mark.parametrize("mode", ["miss", "hit", "shared"])
def test_decision_work_does_not_grow_with_the_pool(redis_client, mode):
    """The Redis commands one decision runs are no more at 512 backends than at 8: the
    pool is not walked (miss: the fallback from the ordered index; hit: one
    conversation's holder; shared: every backend holds the prompt's first blocks, and a
    sample of their holders decides)."""
    per_decision = {}
    for count in (8, 512):
        policy = idle_pool(redis_client, count)
        for c in range(5):  # conversation c is held by backend c
            hold(redis_client, f"b{c:04d}", hashing.block_hashes(conversation(c), 16), [], True)
        if mode == "shared":
            shared = HASHES[:4]
            for i in range(count):
                hold(redis_client, f"b{i:04d}", shared, [], True)
        for _ in range(5):  # warm: index built, scripts loaded
            policy.ctx.leases.release(policy.pick(request(), frozenset()).request_id)
        before = redis_commands(redis_client)
        for i in range(10):
            if mode == "hit":
                prompt, expect = conversation(i % 5), f"b{i % 5:04d}"
            elif mode == "shared":
                prompt, expect = PROMPT[: 16 * 4] + [9000 + i] * 16 * 4, None
            else:
                prompt, expect = [9000 + i] * 16 * 8, None
            decision = policy.pick(request(prompt=prompt), frozenset())
            assert decision.details["index"] == "precise"
            if expect:
                assert (decision.backend.name, decision.reason) == (expect, "affinity")
            assert decision.reason == ("miss" if mode == "miss" else "affinity")
            policy.ctx.leases.release(decision.request_id)
        per_decision[count] = (redis_commands(redis_client) - before) / 10
    assert per_decision[512] <= per_decision[8] + 10, per_decision


def test_a_miss_goes_to_a_uniformly_random_least_loaded_backend(redis_client):
    """Among idle backends a miss is drawn from the ordered index's tie group, each
    backend equally often (the precise fallback has no occupancy tie-break), and never
    to a busier one."""
    policy = idle_pool(redis_client, 24)
    leases = policy.ctx.leases
    for i in range(4):  # b0000..b0003 are busier: never the fallback's choice
        assert leases.acquire(f"busy-{i}", f"b{i:04d}").backend == f"b{i:04d}"
    counts: dict[str, int] = {}
    for _ in range(1000):
        decision = policy.pick(request(prompt=[1] * 8), frozenset())  # no full block: a miss
        assert decision.reason == "miss"
        counts[decision.backend.name] = counts.get(decision.backend.name, 0) + 1
        leases.release(decision.request_id)
    assert set(counts) == {f"b{i:04d}" for i in range(4, 24)}
    assert min(counts.values()) > 20 and max(counts.values()) < 85, counts  # expected 50
