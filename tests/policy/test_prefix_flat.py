"""prefix_cache picks from the ordered index: the same decisions as a full recomputation,
the same uniform tie-break, and a per-decision cost that does not grow with the pool.

The pick (acquire_prefix.lua in bounded mode) reads only the backends named in the
prompt's prefix keys and walks the ordered index from its lowest score. Its dry run
(explain) reads every member, one by one, as the script did before the index: from
its rows (status, matched blocks, load, KV use, index occupancy) and its reason, the
test computes the set of backends the old rule allows (least load bound, longest
match, least load then emptiest index) and checks the pick is one of them.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llmlbd.config.loader import config_from_dict
from llmlbd.errors import LLMLBError
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.outcomes import no_route
from llmlbd.policy.profiles.prefix_cache import PrefixCache
from llmlbd.request import RoutingRequest
from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases
from llmlbd.state.ordered_index import sync
from tests.policy.pool_state import redis_commands, write_backend

_ids = itertools.count()
PROMPT = "the shared part of every prompt in this test. " * 30  # ~22 blocks of 64 chars


def make_policy(client: Any, names: list[str], weights: list[float], lb: dict[str, Any]) -> Any:
    cfg = config_from_dict(
        {
            "lb_policy": "prefix_cache",
            "lb_config": lb,
            "backends": [
                {"name": n, "url": f"http://127.0.0.1:{9000 + i}", "weight": w}
                for i, (n, w) in enumerate(zip(names, weights))
            ],
        }
    )
    keys = PoolKeys("flat")
    leases = Leases(client, keys, "host:1:flat", 60_000)
    ctx = PolicyContext(
        cfg.backends, cfg.lb_config, keys, leases, client, rng=random.Random(next(_ids))
    )
    return PrefixCache(ctx)


def chat(text: str, model: str = "m") -> RoutingRequest:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return RoutingRequest(f"req-{next(_ids)}", "POST", "/v1/chat/completions", body, model=model)


def allowed(answer: dict[str, Any], params: Any, sample: int | None = None) -> set[str]:
    """The backends the rule may pick, from a full dry run's rows and reason.

    The fallback (no affinity) takes, among the backends tied at the least load, the
    least full index of a uniformly random sample of *sample* of them (all of them, the
    dry run's exact rule, when *sample* is None or at least the tie group's size). So a
    backend may be picked when it is tied at the least load and at most
    ``len(tied) - sample`` tied backends are less full than it: a sample of *sample*
    holding it and none of those must exist."""
    rows = answer["candidates"]
    ok = [r for r in rows if r["status"] == "ok"]
    min_load = min(r["load"] for r in ok)
    bound = max(min_load + params.max_load_gap, min_load * params.max_load_ratio)

    def kv_fits(r: dict[str, Any]) -> bool:
        return r["kv_usage"] is None or r["kv_usage"] <= params.max_kv_usage

    if answer["reason"] == "affinity" or (
        answer["reason"] == "shared_prefix" and params.shared == "follow"
    ):
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
    tied = [r for r in pool if r["load"] == least_load]
    beaten_at_most = len(tied) - min(sample or len(tied), len(tied))
    return {
        r["name"]
        for r in tied
        if sum(t["index_occupancy"] < r["index_occupancy"] for t in tied) <= beaten_at_most
    }


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
        "gpu_blocks": st.sampled_from([None, 4, 8]),
        "owned_extra": st.sampled_from([0, 0, 0, 1, 3]),
        "held_levels": st.sampled_from([0, 0, 0, 1, 3, 8, 30]),
        "expired": st.sampled_from([False, False, False, False, True]),
    }
)


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    # A few kinds of backend, each repeated: ties (of load, of occupancy) are common.
    states=st.lists(backend_state, min_size=1, max_size=3).flatmap(
        lambda kinds: st.lists(st.sampled_from(kinds), min_size=1, max_size=14)
    ),
    excluded=st.sets(st.integers(0, 13), max_size=2),
    cap=st.sampled_from([0, 0, 2, 3]),
    model=st.sampled_from(["m", "m", ""]),
    branches=st.integers(0, 2),
    tail=st.integers(0, 3),
    wide=st.sampled_from([0, 1, 2, 16, 64]),
    sample=st.sampled_from([1, 2, 3, 16]),
)
def test_pick_is_one_a_full_recomputation_allows(
    redis_client, states, excluded, cap, model, branches, tail, wide, sample
):
    redis_client.flushall()
    names = [f"b{i}" for i in range(len(states))]
    policy = make_policy(
        redis_client,
        names,
        [s["weight"] for s in states],
        {"maxRequestCount": cap, "maxLoadGap": 2, "minMatchBlocks": 2},
    )
    # Levels named by more than *wide* backends are looked up, not read (16: the default).
    # The fallback samples *sample* of the backends tied at the least load (16: the
    # default, more than this test's pools hold: the exact rule).
    policy.index.params = dataclasses.replace(
        policy.index.params, wide_level_holders=wide, tie_sample=sample
    )
    keys, leases = policy.ctx.keys, policy.ctx.leases
    request = chat(PROMPT + f"tail {tail} " * 20, model=model or "m")
    request = RoutingRequest(
        request.request_id, "POST", "/v1/chat/completions", request.body, model=model
    )
    levels = policy.levels(request)
    seconds, micros = redis_client.time()
    now = seconds * 1000 + micros // 1000
    for name, s in zip(names, states):
        write_backend(redis_client, keys, leases, name, s, now)
        owned = keys.prefix_owned_by(name)
        for k in range(s["owned_extra"]):
            redis_client.zadd(owned, {f"other-{k}": now})
        used = now - (10_000_000 if s["expired"] else 1000)
        for h in levels.hashes[: s["held_levels"]]:
            redis_client.hset(keys.prefix(h), name, used)
            redis_client.zadd(owned, {h: used})
    if branches and levels.hashes:
        redis_client.hset(keys.prefix(levels.hashes[min(2, len(levels.hashes) - 1)]), "#", 1)
    sync(redis_client, keys, policy.ctx.membership)
    exclude = frozenset(names[i] for i in excluded if i < len(names))
    if exclude == set(names):
        exclude = frozenset()  # refused before the script (llmlbd.policy.outcomes)

    answer = policy.index.explain(
        policy.ctx.membership, levels.hashes, levels.blocks, model, cap, sorted(exclude)
    )
    try:
        decision = policy.pick(request, exclude)
    except LLMLBError as refusal:
        assert answer["choice"] is None  # both refuse, for the same reason
        assert type(refusal) is type(no_route(answer["reason"], request))
        return
    assert answer["choice"] is not None
    permitted = allowed(answer, policy.params, sample)
    event(f"{answer['reason']}, {len(permitted)} allowed")
    assert answer["choice"] in allowed(answer, policy.params)  # the dry run: the exact rule
    assert decision.backend.name in permitted, (decision.backend.name, permitted, answer)
    assert decision.reason == answer["reason"]
    rows = {r["name"]: r for r in answer["candidates"]}
    assert decision.details["matched_blocks"] == rows[decision.backend.name]["matched_blocks"]
    usable = [r for r in answer["candidates"] if r["status"] in ("ok", "cap", "excluded")]
    assert decision.details["best_blocks"] == max((r["matched_blocks"] for r in usable), default=0)


def idle_pool(redis_client: Any, count: int, occupied: int) -> Any:
    """*count* idle backends, up, fresh idle metrics; the first *occupied* hold entries."""
    redis_client.flushall()
    names = [f"b{i:03d}" for i in range(count)]
    policy = make_policy(redis_client, names, [1.0] * count, {})
    keys = policy.ctx.keys
    seconds, micros = redis_client.time()
    now = seconds * 1000 + micros // 1000
    for i, name in enumerate(names):
        redis_client.hset(
            keys.backend(name),
            mapping={"health": "up", "models": "m", "scraped_at": now, "kv_usage": 0.1},
        )
        if i < occupied:
            redis_client.zadd(keys.prefix_owned_by(name), {"some-hash": now})
    return policy


def test_ties_stay_uniform(redis_client):
    """Among idle backends, a miss goes to an empty index, each equally often (the index
    path draws from the tie group instead of walking it)."""
    policy = idle_pool(redis_client, 24, occupied=12)
    counts: Counter[str] = Counter()
    for _ in range(1200):
        # No full block: nothing recorded, so every pick sees the same state.
        decision = policy.pick(chat("hi"), frozenset())
        assert decision.reason == "miss"
        counts[decision.backend.name] += 1
        policy.ctx.leases.release(decision.request_id)
    assert set(counts) == {f"b{i:03d}" for i in range(12, 24)}
    assert min(counts.values()) > 60 and max(counts.values()) < 145  # expected 100 each


@pytest.mark.parametrize("mode", ["miss", "hit", "occupied"])
def test_decision_work_does_not_grow_with_the_pool(redis_client, mode):
    """The Redis commands one decision runs are the same at 16 and at 1,024 backends,
    also when every backend's index holds entries (no empty index ends the draw: the
    fallback reads its sample of the tie group, not the group)."""
    per_decision = {}
    for count in (16, 1024):
        policy = idle_pool(redis_client, count, occupied=count if mode == "occupied" else 0)
        for i in range(5):  # warm: index built, scripts loaded, prefixes recorded
            policy.ctx.leases.release(policy.pick(chat(f"{i} " + PROMPT), frozenset()).request_id)
        before = redis_commands(redis_client)
        for i in range(10):
            text = f"{i % 5} " + PROMPT if mode == "hit" else f"new {i} " + PROMPT
            decision = policy.pick(chat(text), frozenset())
            assert decision.reason == ("affinity" if mode == "hit" else "miss")
            if mode == "occupied":  # the new prefix lands on a backend already holding some
                assert redis_client.zcard(policy.ctx.keys.prefix_owned_by(decision.backend.name))
            policy.ctx.leases.release(decision.request_id)
        per_decision[count] = (redis_commands(redis_client) - before) / 10
    # A few probes of the tie group are random: allow a small difference, not a walk.
    assert per_decision[1024] <= per_decision[16] + 10, per_decision


def test_least_load_looks_past_a_long_engine_queue(redis_client):
    """The index is ordered by in-flight count, but load also counts the engine's queue:
    the least load (which sets the bound) is found past a head whose queue is long."""
    policy = idle_pool(redis_client, 3, occupied=0)
    policy.index.params = dataclasses.replace(policy.index.params, max_load_gap=4.0)
    keys, leases = policy.ctx.keys, policy.ctx.leases
    request = chat("long shared history. " * 40)
    home = policy.pick(request, frozenset())  # recorded on one backend
    leases.release(home.request_id)
    others = sorted({"b000", "b001", "b002"} - {home.backend.name})
    for k in range(5):
        assert leases.acquire(f"busy-{k}", home.backend.name).backend == home.backend.name
    # Idle by our count, 5 queued by the engine's (other clients): load 5, lowest score.
    redis_client.hset(keys.backend(others[0]), mapping={"waiting": 3, "running": 2})
    assert leases.acquire("one", others[1]).backend == others[1]  # load 1
    # Least load 1, bound max(1 + 4, 1 x 1.5) = 5: the home backend (load 5) is in bounds.
    decision = policy.pick(request, frozenset())
    assert (decision.backend.name, decision.reason) == (home.backend.name, "affinity")
    leases.release(decision.request_id)
    assert leases.acquire("busy-5", home.backend.name).backend == home.backend.name
    # Load 6 is past the bound: the least loaded goes, not the long queue at the head.
    decision = policy.pick(request, frozenset())
    assert (decision.backend.name, decision.reason) == (others[1], "overloaded")


@pytest.mark.parametrize("mode", ["follow", "spread"])
@pytest.mark.parametrize("case", ["history", "branched", "new"])
def test_a_prefix_the_pool_shares_is_looked_up_not_read(redis_client, case, mode):
    """Leading levels named by many backends (a shared system prompt) are looked up for
    the deeper holders only, or sampled for a new conversation; the decision and its
    match are the full recomputation's."""
    policy = idle_pool(redis_client, 6, occupied=0)
    policy.index.params = dataclasses.replace(
        policy.index.params, wide_level_holders=2, shared=mode
    )
    keys = policy.ctx.keys
    request = chat(PROMPT)
    levels = policy.levels(request)
    seconds, micros = redis_client.time()
    now = seconds * 1000 + micros // 1000
    # Every backend holds 6 levels (wide); b000 holds 8 unless the conversation is new.
    shared, deep = 6, (6 if case == "new" else 8)
    for i in range(6):
        name = f"b{i:03d}"
        for h in levels.hashes[: deep if i == 0 else shared]:
            redis_client.hset(keys.prefix(h), name, now)
            redis_client.zadd(keys.prefix_owned_by(name), {h: now})
    if case != "history":  # others branched off after the longest match: a shared prefix
        redis_client.hset(keys.prefix(levels.hashes[deep - 1]), "#", 3)
    sync(redis_client, keys, policy.ctx.membership)
    answer = policy.index.explain(policy.ctx.membership, levels.hashes, levels.blocks, "m")
    decision = policy.pick(request, frozenset())
    assert decision.reason == answer["reason"]
    assert decision.backend.name in allowed(
        answer, policy.index.params, policy.index.params.tie_sample
    )
    assert decision.details["best_blocks"] == levels.blocks[deep - 1]
    if case == "history":
        assert (decision.backend.name, decision.reason) == ("b000", "affinity")
        assert decision.details["matched_blocks"] == levels.blocks[deep - 1]
    elif case == "branched" and mode == "follow":  # the shared prefix's in-bound holder
        assert (decision.backend.name, decision.reason) == ("b000", "shared_prefix")
        assert decision.details["matched_blocks"] == levels.blocks[deep - 1]
    else:  # spread: by load, then the emptiest index; follow: any idle holder of it
        assert decision.reason == "shared_prefix"
        assert decision.details["matched_blocks"] == levels.blocks[shared - 1]
        if case == "branched":
            assert decision.backend.name != "b000"


@pytest.mark.parametrize("sample", [16, 64])
def test_fallback_takes_the_least_full_of_a_sample_of_the_ties(redis_client, sample):
    """40 idle backends, backend i holding i + 1 entries: the fallback picks the least
    full index of a uniform sample of `tie_sample` of them, so never one that more than
    40 - sample backends beat, and the least full one in sample / 40 of the picks; with
    a sample of at least 40, always the least full (the exact rule)."""
    policy = idle_pool(redis_client, 40, occupied=0)
    policy.index.params = dataclasses.replace(policy.index.params, tie_sample=sample)
    seconds, micros = redis_client.time()
    now = seconds * 1000 + micros // 1000
    for i in range(40):
        owned = policy.ctx.keys.prefix_owned_by(f"b{i:03d}")
        redis_client.zadd(owned, {f"entry-{k}": now for k in range(i + 1)})
    ranks: Counter[int] = Counter()
    for _ in range(300):
        decision = policy.pick(chat("hi"), frozenset())  # no full block: nothing recorded
        assert decision.reason == "miss"
        ranks[int(decision.backend.name[1:])] += 1
        policy.ctx.leases.release(decision.request_id)
    if sample >= 40:
        assert ranks == Counter({0: 300})
    else:
        assert max(ranks) <= 40 - sample, ranks
        assert 0.28 * 300 < ranks[0] < 0.52 * 300, ranks  # expected 16 / 40 = 0.4
