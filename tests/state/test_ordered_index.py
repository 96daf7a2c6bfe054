"""The ordered index against a real Redis: always what a full recomputation gives.

The index (llmlbd.state.ordered_index, lua/_lib.lua) is a cache of eligibility
and in-flight counts. Whatever the interleaving of acquires, releases,
drains, health and model-list changes (through the collector's publish
script), worker deaths and reaps, it must equal the ZSETs recomputed from the
in-flight hash, the drained set and the metrics hashes.
"""

from __future__ import annotations

import collections

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from llmlbd.state import backend_fields as F
from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases, reap
from llmlbd.state.members import set_drained
from llmlbd.state.ordered_index import Membership, index_keys, read_index, sync
from llmlbd.state.scripts import ScriptSet
from tests.state.least_request import acquire_least

NAMES = ["a", "b", "c", "d"]
WEIGHTS = [1.0, 2.0, 1.0, 0.5]
MODEL_LISTS = ["", "m1", "m1,m2", "m2"]  # '' = unknown: serves every model
COLLECTOR = "col-1"


def publish(client, keys: PoolKeys, name: str, fields: dict[str, str], delete=()) -> None:
    """What the collector does: the ownership-checked publish script."""
    client.hset(keys.scrape_owners, name, f"{COLLECTOR} 99999999999999")
    pairs = [x for kv in fields.items() for x in kv]
    ScriptSet(client).collector_publish(
        keys=[keys.scrape_owners, keys.backend(name)],
        args=[COLLECTOR, name, "", "", len(fields), *pairs, *delete],
    )


def expected_index(client, keys: PoolKeys) -> dict[str, dict[str, float]]:
    """The index recomputed from scratch: members, drained set, metrics, in-flight."""
    weights = {n: float(w) for n, w in client.hgetall(keys.index_weights).items() if n[0] != "#"}
    drained = client.smembers(keys.drained)
    inflight = client.hgetall(keys.inflight)
    zsets: dict[str, dict[str, float]] = collections.defaultdict(dict)
    for name, weight in weights.items():
        health, models = client.hmget(keys.backend(name), F.HEALTH, F.MODELS)
        if name in drained or health == F.HEALTH_DOWN:
            continue
        score = int(inflight.get(name, 0)) / weight
        zsets[keys.index_all][name] = score
        if models:
            for model in models.split(","):
                zsets[keys.index_model(model)][name] = score
        else:
            zsets[keys.index_any_model][name] = score
    return dict(zsets)


def expected_sums(client, keys: PoolKeys) -> dict[str, int]:
    """lr:sum recomputed: per index ZSET, its members' in-flight counts (from the inflight
    HASH) and weights in millionths; zero totals left out."""
    weights = {n: float(w) for n, w in client.hgetall(keys.index_weights).items() if n[0] != "#"}
    inflight = client.hgetall(keys.inflight)
    sums: dict[str, int] = collections.Counter()
    for zset, members in expected_index(client, keys).items():
        for name in members:
            sums[f"{zset}#n"] += int(inflight.get(name, 0))
            sums[f"{zset}#w"] += round(weights[name] * 1_000_000)
    return {field: total for field, total in sums.items() if total}


def read_sums(client, keys: PoolKeys) -> dict[str, int]:
    found = {field: int(v) for field, v in client.hgetall(keys.index_sum).items()}
    return {field: total for field, total in found.items() if total}


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.integers(0, 1), st.integers(0, 20)),
        st.tuples(st.just("acquire_model"), st.integers(0, 2), st.integers(0, 20)),
        st.tuples(st.just("acquire_chosen"), st.integers(0, 3), st.integers(0, 20)),
        st.tuples(st.just("release"), st.integers(0, 1), st.integers(0, 20)),
        st.tuples(st.just("drain"), st.integers(0, 3), st.booleans()),
        st.tuples(st.just("health"), st.integers(0, 3), st.sampled_from(["up", "down"])),
        st.tuples(st.just("models"), st.integers(0, 3), st.integers(0, 3)),
        st.tuples(st.just("kill"), st.integers(0, 1), st.just(0)),
        st.tuples(st.just("reap"), st.just(0), st.booleans()),
    ),
    max_size=50,
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_index_equals_a_full_recomputation(redis_url, ops):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushall()
    keys = PoolKeys("idx")
    workers = [Leases(client, keys, f"h:{i}:x", ttl_ms=60_000) for i in range(2)]
    live: dict[str, int] = {}  # request id -> worker index
    for op, who, arg in ops:
        request_id = f"r{arg}"
        if op in ("acquire", "acquire_model"):
            model = "" if op == "acquire" else ["m1", "m2", "m3"][who]
            r = acquire_least(workers[who % 2], request_id, NAMES, WEIGHTS, model=model, cap=3)
            if r.backend:
                live[request_id] = who % 2
        elif op == "acquire_chosen":
            if workers[0].acquire(request_id, NAMES[who]).backend:
                live[request_id] = 0
        elif op == "release":
            workers[who].release(request_id)
            live.pop(request_id, None)
        elif op == "drain":
            set_drained(client, keys, NAMES[who], arg)
        elif op == "health":
            publish(client, keys, NAMES[who], {F.HEALTH: arg})
        elif op == "models":
            models = MODEL_LISTS[arg]
            if models:
                publish(client, keys, NAMES[who], {F.MODELS: models})
            else:
                publish(client, keys, NAMES[who], {}, delete=[F.MODELS])
        elif op == "kill":
            workers[who].retire()
            live = {r: w for r, w in live.items() if w != who}
        elif op == "reap":
            reap(client, keys, recount=arg)
        if client.exists(keys.index_weights):
            assert read_index(client, keys) == expected_index(client, keys)
            # The totals session_affinity's load bound reads: exact after every step.
            assert read_sums(client, keys) == expected_sums(client, keys)
    client.close()


@pytest.fixture
def keys():
    return PoolKeys("oi")


@pytest.fixture
def leases(redis_client, keys):
    return Leases(redis_client, keys, "host:1:aaa", ttl_ms=5000)


def test_least_loaded_is_exact_across_replicas(redis_url, keys):
    """Three replicas (own clients, own worker ids) interleaving: 60 requests over three
    backends leave exactly 20 on each, whatever replica placed them."""
    clients = [redis.Redis.from_url(redis_url, decode_responses=True) for _ in range(3)]
    replicas = [Leases(c, keys, f"r{i}:1:x", 5000) for i, c in enumerate(clients)]
    for i in range(60):
        assert acquire_least(replicas[i % 3], f"q{i}", NAMES[:3], [1, 1, 1]).backend
    assert clients[0].hgetall(keys.inflight) == {"a": "20", "b": "20", "c": "20"}
    for c in clients:
        c.close()


def test_cap_keeps_its_meaning_with_weights(leases, redis_client, keys):
    """a (weight 4) at the cap has the lower score, yet b (weight 1) under the cap is chosen."""
    redis_client.hset(keys.inflight, mapping={"a": 3, "b": 2})
    assert acquire_least(leases, "r1", ["a", "b"], [4, 1], cap=3).backend == "b"
    assert acquire_least(leases, "r2", ["a", "b"], [4, 1], cap=3).reason == "cap"


def test_excluded_backends_are_skipped_even_among_many_ties(leases, redis_client, keys):
    names = [f"b{i}" for i in range(200)]
    for i in range(20):
        r = acquire_least(leases, f"r{i}", names, [1] * 200, exclude=names[1:])
        assert r.backend == "b0"
        leases.release(f"r{i}")
    assert acquire_least(leases, "x", names, [1] * 200, exclude=names).reason == "none"


def test_redis_losing_its_data_heals(leases, redis_client, keys):
    assert acquire_least(leases, "r1", NAMES, WEIGHTS).backend
    redis_client.flushall()
    redis_client.sadd(keys.drained, "a", "b", "c")
    assert acquire_least(leases, "r2", NAMES, WEIGHTS).backend == "d"
    assert read_index(redis_client, keys) == expected_index(redis_client, keys)


def test_direct_writes_are_healed(leases, redis_client, keys):
    """A drain or health change written behind the scripts' back: the acquire that meets
    it re-places the backend; the reaper's recount brings back what came back."""
    sync(redis_client, keys, Membership.of(NAMES[:2], [1, 1]))
    redis_client.sadd(keys.drained, "a")
    redis_client.hset(keys.backend("b"), F.HEALTH, F.HEALTH_DOWN)
    assert acquire_least(leases, "r1", NAMES[:2], [1, 1]).reason == "none"
    assert read_index(redis_client, keys) == {}
    redis_client.srem(keys.drained, "a")
    reap(redis_client, keys, recount=True)
    assert acquire_least(leases, "r2", NAMES[:2], [1, 1]).backend == "a"


def test_membership_change_rebuilds(leases, redis_client, keys):
    assert acquire_least(leases, "r1", ["a", "b"], [1, 1]).backend in ("a", "b")
    r = acquire_least(leases, "r2", ["c"], [1])
    assert r.backend == "c"
    assert set(read_index(redis_client, keys)[keys.index_all]) == {"c"}


def test_every_index_key_shares_the_pool_slot(keys):
    found = {key_slot(k.encode()) for k in index_keys(keys, "some/model") + [keys.inflight]}
    found.add(key_slot(keys.index_placed.encode()))
    found.add(key_slot(keys.index_sum.encode()))
    assert len(found) == 1
