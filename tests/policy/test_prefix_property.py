"""Property: under random requests, releases, failures, removals and expiries, the prefix
index never points outside the pool and in-flight counts stay exact."""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmlbd.errors import NoBackend
from llmlbd.state.prefix import holders as prefix_holders
from tests.policy.test_prefix_policy import chat, conversation, make_policy

POOL = ["b0", "b1", "b2", "b3"]


def holders(fields):
    """Backend names of a prefix HASH (without the '#' branch counter)."""
    return set(prefix_holders(fields))


ops = st.lists(
    st.one_of(
        st.tuples(st.just("request"), st.integers(0, 5)),
        st.tuples(st.just("release"), st.integers(0, 30)),
        st.tuples(st.just("down"), st.sampled_from(POOL)),
        st.tuples(st.just("up"), st.sampled_from(POOL)),
        st.tuples(st.just("drain"), st.sampled_from(POOL)),
        st.tuples(st.just("undrain"), st.sampled_from(POOL)),
        st.tuples(st.just("remove"), st.sampled_from(POOL)),
        st.tuples(st.just("expire"), st.integers(0, 1000)),
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=ops)
def test_index_stays_in_pool_and_counts_are_conserved(redis_client, steps):
    """No key names a backend outside the pool; sum of in-flight == requests held."""
    redis_client.flushall()
    pool = list(POOL)
    policy = make_policy(redis_client, names=pool, lb={"maxLoadGap": 1, "redisKeyTTL": 60})
    keys = policy.ctx.keys
    conversations = {c: conversation(f"conv{c}", 1000) for c in range(6)}
    held = []  # (request id, backend)
    down, drained = set(), set()
    for op, arg in steps:
        if op == "request":
            request = chat(next(conversations[arg]))
            try:
                decision = policy.pick(request, frozenset())
            except NoBackend:
                assert not set(pool) - down - drained
                continue
            name = decision.backend.name
            assert name in pool and name not in down and name not in drained
            held.append((decision.request_id, name))
            for h in policy.levels(request).hashes:
                fields = holders(redis_client.hgetall(keys.prefix(h)))
                assert name in fields
                assert fields <= set(pool) - down - drained
        elif op == "release" and held:
            request_id, _ = held.pop(arg % len(held))
            assert policy.ctx.leases.release(request_id)
        elif op == "down":
            down.add(arg)
            redis_client.hset(keys.backend(arg), "health", "down")
        elif op == "up":
            down.discard(arg)
            redis_client.hset(keys.backend(arg), "health", "up")
        elif op == "drain":
            drained.add(arg)
            redis_client.sadd(keys.drained, arg)
        elif op == "undrain":
            drained.discard(arg)
            redis_client.srem(keys.drained, arg)
        elif op == "remove" and arg in pool and len(pool) > 1:
            pool.remove(arg)
            policy = make_policy(redis_client, names=pool, lb={"maxLoadGap": 1, "redisKeyTTL": 60})
        elif op == "expire":
            prefix_keys = sorted(redis_client.scan_iter(keys.prefix_pattern()))
            if prefix_keys:
                redis_client.delete(prefix_keys[arg % len(prefix_keys)])

        inflight = {k: int(v) for k, v in redis_client.hgetall(keys.inflight).items()}
        assert inflight == dict(Counter(name for _, name in held))
        assert redis_client.hlen(keys.leases) == len(held)
        for key in redis_client.scan_iter(keys.prefix_pattern()):
            assert holders(redis_client.hgetall(key)) <= set(POOL)
            assert redis_client.pttl(key) > 0
