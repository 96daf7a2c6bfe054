"""The precise index's reverse side stays the exact inversion of the per-backend sets.

kv_index_apply.lua and kv_index_status.lua keep, beside each backend's
``kvx:<backend>:gpu|offload`` ZSETs, a ``kvx_holders:<hash>`` SET per block (the
backends holding it in either tier) and a ``kvx_live`` ZSET (backend ->
live_until of the trusted streams). After random sequences of stores, removes
(present or not), clears inside a batch, clears and silences from the collector,
and overflow pops (a tiny bound), the test recomputes both from the per-backend
structures, reading every key of the pool.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmlbd.state.keys import PoolKeys
from llmlbd.state.kv_index import TIERS, KVIndexWriter, read_holders, read_holdings

KEYS = PoolKeys("rev")
BACKENDS = ("b1", "b2", "b3")
BOUND = 6  # blocks kept per tier: small enough that stores overflow it

hashes = st.integers(min_value=1, max_value=12)
tiers = st.sampled_from(TIERS)
store = st.tuples(st.just("S"), tiers, st.lists(hashes, min_size=1, max_size=5))
remove = st.tuples(st.just("R"), tiers, hashes)
clear_op = st.just(("C",))
batch = st.lists(st.one_of(store, store, remove, remove, clear_op), min_size=1, max_size=6)
step = st.one_of(
    st.tuples(st.just("apply"), st.sampled_from(BACKENDS), batch),
    st.tuples(
        st.just("status"), st.sampled_from(BACKENDS), st.sampled_from(("live", "silent", "clear"))
    ),
    st.tuples(st.just("gpu_blocks"), st.sampled_from(BACKENDS), st.sampled_from(("", "3", "8"))),
)


def flatten(ops: list[tuple[Any, ...]]) -> list[str | int]:
    out: list[str | int] = []
    for op in ops:
        if op[0] == "S":
            out += ["S", op[1], len(op[2]), *op[2]]
        elif op[0] == "R":
            out += ["R", op[1], op[2]]
        else:
            out.append("C")
    return out


def expected_holders(client: Any) -> dict[int, set[str]]:
    inverted: dict[int, set[str]] = {}
    for name in BACKENDS:
        for blocks in read_holdings(client, KEYS, name).values():
            for h in blocks:
                inverted.setdefault(h, set()).add(name)
    return inverted


def actual_holders(client: Any) -> dict[int, set[str]]:
    prefix = KEYS.kv_holders("")
    out = {}
    for key in client.scan_iter(match=prefix + "*"):
        h = int(key[len(prefix) :])
        out[h] = read_holders(client, KEYS, h)
        assert out[h], f"empty holders SET left behind: {key}"  # Redis drops empty SETs
    return out


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(step, min_size=1, max_size=25))
def test_reverse_index_is_the_inversion_of_the_backend_sets(redis_client, steps) -> None:
    client = redis_client
    client.flushall()
    writers = {n: KVIndexWriter(client, KEYS, n, "test", BOUND, 60_000) for n in BACKENDS}
    seq = 0
    for kind, name, what in steps:
        if kind == "apply":
            writers[name].apply(flatten(what), seq, 0.0, 16)
            seq += 1
        elif what == "live":
            writers[name].live()
        elif what == "silent":
            writers[name].silent()
        elif kind == "status":
            writers[name].clear("test")
        else:
            client.hset(KEYS.backend(name), "num_gpu_blocks", what)
        assert actual_holders(client) == expected_holders(client)
        for n in BACKENDS:
            assert len(read_holdings(client, KEYS, n)["offload"]) <= BOUND
    # Liveness: kvx_live holds exactly the backends whose live_until is set, with it.
    live = dict(client.zrange(KEYS.kv_live, 0, -1, withscores=True))
    for n in BACKENDS:
        until = int(client.hget(KEYS.kv_state(n), "live_until") or 0)
        if until > 0:
            assert live.pop(n) == until
    assert live == {}


def test_a_block_in_both_tiers_stays_held_until_both_lose_it(redis_client) -> None:
    writer = KVIndexWriter(redis_client, KEYS, "b1", "test", 100, 60_000)
    writer.apply(["S", "gpu", 1, 7, "S", "offload", 1, 7], 0, 0.0, 16)
    writer.apply(["R", "gpu", 7], 1, 0.0, 16)
    assert read_holders(redis_client, KEYS, 7) == {"b1"}
    writer.apply(["R", "offload", 7], 2, 0.0, 16)
    assert read_holders(redis_client, KEYS, 7) == set()
    writer.apply(["S", "gpu", 2, 7, 8], 3, 0.0, 16)
    assert redis_client.zscore(KEYS.kv_live, "b1") is not None
    writer.silent()
    assert redis_client.zscore(KEYS.kv_live, "b1") is None
    assert read_holders(redis_client, KEYS, 8) == {"b1"}  # silent keeps the index
    writer.clear("gap")
    assert read_holders(redis_client, KEYS, 7) == read_holders(redis_client, KEYS, 8) == set()
