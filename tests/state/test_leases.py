"""The lease scripts against a real Redis: exact, idempotent, crash-safe in-flight counts."""

from __future__ import annotations

import collections
import random

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from llmlbd.state.direct_scripts import DirectScripts
from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases, reap
from tests.state.least_request import acquire_least

NAMES = ["a", "b", "c"]


@pytest.fixture
def keys():
    return PoolKeys("test")


@pytest.fixture
def leases(redis_client, keys):
    lease = Leases(redis_client, keys, "host:1:aaa", ttl_ms=5000)
    lease.heartbeat()
    return lease


def counts(client, keys):
    return {name: int(value) for name, value in client.hgetall(keys.inflight).items()}


class TestAcquire:
    def test_picks_the_least_loaded(self, leases, redis_client, keys):
        """With a: 2, b: 0, c: 1 in flight, the next request goes to b."""
        redis_client.hset(keys.inflight, mapping={"a": 2, "c": 1})
        reservation = acquire_least(leases, "r1", NAMES, [1, 1, 1])
        assert reservation.backend == "b" and reservation.inflight == 1

    def test_weight_divides_the_load(self, leases, redis_client, keys):
        """a (weight 4) with 3 in flight is less loaded than b (weight 1) with 1."""
        redis_client.hset(keys.inflight, mapping={"a": 3, "b": 1})
        assert acquire_least(leases, "r1", ["a", "b"], [4, 1]).backend == "a"

    def test_ties_are_broken_at_random(self, leases):
        """Among equally loaded backends the seed decides: every one gets picked, and the
        same seed on the same state picks the same backend."""
        picked = collections.Counter()
        for i in range(90):
            picked[acquire_least(leases, f"r{i}", NAMES, [1, 1, 1]).backend] += 1
            leases.release(f"r{i}")
        assert set(picked) == set(NAMES) and min(picked.values()) >= 10
        first = acquire_least(leases, "s1", NAMES, [1, 1, 1], seed=7).backend
        leases.release("s1")
        assert acquire_least(leases, "s2", NAMES, [1, 1, 1], seed=7).backend == first

    def test_balances_exactly(self, leases, redis_client, keys):
        """30 acquires over 3 backends leave exactly 10 on each."""
        for i in range(30):
            acquire_least(leases, f"r{i}", random.sample(NAMES, 3), [1, 1, 1])
        assert counts(redis_client, keys) == {"a": 10, "b": 10, "c": 10}

    def test_cap_refuses_when_every_backend_is_full(self, leases):
        """maxRequestCount: a cap of 1 admits one request per backend, then says 'cap'."""
        got = [acquire_least(leases, f"r{i}", NAMES, [1, 1, 1], cap=1) for i in range(4)]
        assert sorted(r.backend for r in got[:3]) == NAMES
        assert got[3].backend is None and got[3].reason == "cap"

    def test_drained_and_down_backends_are_skipped(self, leases, redis_client, keys):
        redis_client.sadd(keys.drained, "a")
        redis_client.hset(keys.backend("b"), "health", "down")
        for i in range(3):
            assert acquire_least(leases, f"r{i}", NAMES, [1, 1, 1]).backend == "c"

    def test_no_eligible_backend(self, leases, redis_client, keys):
        redis_client.sadd(keys.drained, *NAMES)
        assert acquire_least(leases, "r1", NAMES, [1, 1, 1]).reason == "none"

    def test_model_filter_uses_the_collected_model_list(self, leases, redis_client, keys):
        """A backend whose known models lack the model is skipped; unknown lists pass."""
        redis_client.hset(keys.backend("a"), "models", "llama,llama-lora")
        redis_client.hset(keys.backend("b"), "models", "qwen")
        picked = {
            acquire_least(leases, f"r{i}", ["a", "b"], [1, 1], model="llama-lora").backend
            for i in range(4)
        }
        assert picked == {"a"}
        assert acquire_least(leases, "x", ["a", "b"], [1, 1], model="mistral").reason == "model"

    def test_a_request_id_is_never_counted_twice(self, leases, redis_client, keys):
        """Idempotent acquire: the same request id gets its lease back, counted once, from
        every acquire script (the shared `reserve` in _lib.lua), whatever they would pick."""
        first = acquire_least(leases, "r1", NAMES, [1, 1, 1])
        # The least-loaded pick would now be another backend: the lease wins.
        again = acquire_least(leases, "r1", NAMES, [1, 1, 1])
        assert (again.backend, again.inflight) == (first.backend, 1)
        other = next(n for n in NAMES if n != first.backend)
        chosen = leases.acquire("r1", other)
        assert (chosen.backend, chosen.inflight) == (first.backend, 1)
        assert counts(redis_client, keys) == {first.backend: 1}
        assert leases.release("r1").released is True
        assert counts(redis_client, keys) == {}
        # Released, the id is new again: it is counted where the caller asks.
        assert leases.acquire("r1", other).backend == other

    def test_the_prefix_script_returns_the_held_lease_and_records_nothing(
        self, leases, redis_client, keys
    ):
        from llmlbd.state.ordered_index import Membership
        from llmlbd.state.prefix import PrefixIndex, PrefixParams

        index = PrefixIndex(leases, PrefixParams(min_match_blocks=1))
        assert leases.acquire("r1", "c").backend == "c"
        held = index.acquire("r1", Membership.of(NAMES, [1.0] * 3), 7, [], ["h1"], [1])
        assert (held.backend, held.inflight, held.reason) == ("c", 1, "held")
        assert counts(redis_client, keys) == {"c": 1}
        assert not redis_client.exists(keys.prefix("h1"))

    def test_acquire_chosen_backend_rechecks_eligibility(self, leases, redis_client, keys):
        assert leases.acquire("r1", "a").backend == "a"
        redis_client.sadd(keys.drained, "a")
        assert leases.acquire("r2", "a").reason == "drained"


class TestRelease:
    def test_release_is_idempotent_and_never_negative(self, leases, redis_client, keys):
        leases.acquire("r1", "a")
        assert leases.release("r1").released is True
        assert leases.release("r1").released is False
        assert leases.release("never-acquired").released is False
        assert counts(redis_client, keys) == {}

    def test_release_after_redis_lost_its_data_is_a_no_op(self, leases, redis_client, keys):
        """After a Redis restart without persistence, old requests must not drive counts negative."""
        leases.acquire("r1", "a")
        redis_client.flushall()
        leases.acquire("r2", "a")
        assert leases.release("r1").released is False
        assert counts(redis_client, keys) == {"a": 1}

    @pytest.mark.parametrize("direct", [False, True], ids=["redis-py", "direct"])
    def test_release_many_is_release_for_each_in_one_pipeline(
        self, leases, redis_client, keys, direct
    ):
        if direct:  # the worker's path: EVALSHA on connections of its own
            leases.scripts = DirectScripts(leases.client)
        for i in range(5):
            leases.acquire(f"r{i}", "ab"[i % 2])
        redis_client.script_flush()  # the pipeline loads the script it needs
        calls = [("r0", "ok"), ("r1", ""), ("r0", "ok"), ("nope", ""), ("r4", "ok")]
        replies = leases.release_many(calls)
        assert [bool(r) for r in replies] == [True, True, False, False, True]
        assert counts(redis_client, keys) == {"a": 1, "b": 1}
        assert [bool(r) for r in leases.release_many([("r2", "")])] == [True]
        assert counts(redis_client, keys) == {"b": 1}
        # Outcomes travel with the batch: five failed requests in one batch eject the
        # backend, and the release that did it says so.
        for i in range(5):
            leases.acquire(f"f{i}", "c")
        replies = leases.release_many([(f"f{i}", "status") for i in range(5)])
        assert [r.event for r in replies] == ["", "", "", "", "ejected"]
        assert replies[-1].backend == "c" and redis_client.zscore(keys.ejected, "c")


class TestReap:
    def test_dead_worker_leases_are_reaped_and_counts_rebuilt(self, redis_client, keys):
        alive = Leases(redis_client, keys, "h:alive:1", ttl_ms=60_000)
        dying = Leases(redis_client, keys, "h:dying:1", ttl_ms=1)
        alive.acquire("r1", "a")
        dying.acquire("r2", "a")
        dying.acquire("r3", "b")
        import time

        time.sleep(0.01)
        assert reap(redis_client, keys) == (2, 1)
        assert counts(redis_client, keys) == {"a": 1}
        assert redis_client.hkeys(keys.leases) == ["r1"]

    def test_retire_drops_everything_a_worker_holds(self, leases, redis_client, keys):
        leases.acquire("r1", "a")
        leases.acquire("r2", "b")
        assert leases.retire()[0] == 2
        assert counts(redis_client, keys) == {}

    def test_recount_repairs_drift(self, leases, redis_client, keys):
        """A count changed behind the scripts' back is rebuilt from the leases."""
        leases.acquire("r1", "a")
        redis_client.hset(keys.inflight, mapping={"a": 7, "ghost": 3})
        reap(redis_client, keys, recount=True)
        assert counts(redis_client, keys) == {"a": 1}

    def test_nothing_to_do_is_cheap(self, leases, redis_client, keys):
        redis_client.hset(keys.inflight, "a", 5)  # drift, but no recount asked
        assert reap(redis_client, keys) == (0, 0)
        assert counts(redis_client, keys) == {"a": 5}


class TestScripts:
    def test_scripts_reload_after_script_flush(self, leases, redis_client):
        """EVALSHA answered NOSCRIPT (Redis restarted): the script is loaded again transparently."""
        leases.acquire("r1", "a")
        redis_client.script_flush()
        assert leases.acquire("r2", "a").backend == "a"
        assert leases.release("r1")

    def test_every_key_of_a_call_is_in_one_cluster_slot(self, keys):
        """All keys of a pool share the {pool} hash tag, so each script runs on Redis Cluster."""
        all_keys = [
            keys.inflight,
            keys.leases,
            keys.workers,
            keys.drained,
            keys.members,
            keys.collectors,
            keys.scrape_owners,
            keys.rr_counter,
            keys.backend("gpu-1:8000"),
            keys.prefix("ab12"),
            keys.prefix_owned_by("a"),
        ]
        assert len({key_slot(k.encode()) for k in all_keys}) == 1


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.integers(0, 2), st.integers(0, 30)),
        st.tuples(st.just("release"), st.integers(0, 2), st.integers(0, 30)),
        st.tuples(st.just("kill"), st.integers(0, 2), st.just(0)),
        st.tuples(st.just("reap"), st.just(0), st.just(0)),
        st.tuples(st.just("drain"), st.integers(0, 2), st.just(0)),
    ),
    max_size=60,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_counts_always_equal_live_leases(redis_url, ops):
    """Property: whatever the sequence of acquires, releases, worker deaths, reaps and drains,
    each in-flight count equals its live leases, and no count is ever negative."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushall()
    keys = PoolKeys("prop")
    workers = [Leases(client, keys, f"h:{i}:x", ttl_ms=60_000) for i in range(3)]
    live: dict[str, str] = {}  # request id -> worker id, the model of the truth
    dead: set[int] = set()
    for op, who, n in ops:
        request_id = f"r{n}"
        if op == "acquire" and who not in dead:
            r = acquire_least(workers[who], request_id, NAMES, [1, 1, 1])
            if r.backend:
                # A lease held already stays its first worker's (idempotent acquire).
                live.setdefault(request_id, workers[who].worker_id)
        elif op == "release":
            released = workers[who].release(request_id).released
            assert released == (request_id in live)
            live.pop(request_id, None)
        elif op == "kill" and who not in dead:
            dead.add(who)
            workers[who].retire()
            live = {k: w for k, w in live.items() if w != workers[who].worker_id}
        elif op == "reap":
            reap(client, keys)
        elif op == "drain":
            client.sadd(keys.drained, NAMES[who])
        inflight = counts(client, keys)
        assert all(v > 0 for v in inflight.values())
        per_backend = collections.Counter(v.split()[0] for v in client.hvals(keys.leases))
        assert inflight == dict(per_backend)
        assert sum(inflight.values()) == len(live)
    client.close()
