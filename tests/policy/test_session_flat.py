"""session_affinity costs the same at any pool size, with the bound of the full rule.

A decision reads the pool's totals (lr:sum) instead of every backend, tries only the
first RING_PREFIX backends of the session's ring, then the least-loaded one (the
ordered index): the Redis commands it runs do not grow with the pool, and its bound is
the one a walk over every backend computes.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import pytest

from llmlbd.config.loader import config_from_dict
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.profiles.session_affinity import RING_PREFIX, SessionAffinity
from llmlbd.request import RoutingRequest
from llmlbd.state import backend_fields as F
from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases
from llmlbd.state.members import set_drained
from tests.policy.pool_state import redis_commands

_ids = itertools.count()


def make_policy(client: Any, count: int, lb: dict[str, Any] | None = None) -> SessionAffinity:
    cfg = config_from_dict(
        {
            "lb_policy": "session_affinity",
            "lb_config": lb or {},
            "backends": [
                {"name": f"b{i:04d}", "url": f"http://127.0.0.1:{9000 + i}", "weight": 1 + i % 3}
                for i in range(count)
            ],
        }
    )
    keys = PoolKeys("sflat")
    leases = Leases(client, keys, "host:1:sflat", 60_000)
    ctx = PolicyContext(cfg.backends, cfg.lb_config, keys, leases, client, rng=random.Random(7))
    return SessionAffinity(ctx)


def request(session: str = "") -> RoutingRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-session-id": session} if session else {}
    return RoutingRequest(
        f"r-{next(_ids)}", "POST", "/v1/chat/completions", body=body, model="m", headers=headers
    )


@pytest.mark.parametrize("mode", ["new", "sticky", "no_session"])
def test_decision_work_does_not_grow_with_the_pool(redis_client, mode):
    """The Redis commands one decision runs are the same at 16 and at 1,024 backends."""
    per_decision = {}
    for count in (16, 1024):
        redis_client.flushall()
        policy = make_policy(redis_client, count)
        for i in range(5):  # warm: index built, scripts loaded, sessions placed
            policy.ctx.leases.release(policy.pick(request(f"s{i}"), frozenset()).request_id)
        before = redis_commands(redis_client)
        for i in range(10):
            session = {"new": f"new-{count}-{i}", "sticky": f"s{i % 5}", "no_session": ""}[mode]
            decision = policy.pick(request(session), frozenset())
            assert decision.reason == {"new": "ring", "sticky": "sticky", "no_session": mode}[mode]
            policy.ctx.leases.release(decision.request_id)
        per_decision[count] = (redis_commands(redis_client) - before) / 10
    # Ties of the least-loaded fallback are probed at random: a small difference, not a walk.
    assert per_decision[1024] <= per_decision[16] + 5, per_decision


def test_past_the_ring_prefix_the_least_loaded_takes_the_session(redis_client):
    """The one difference from walking the whole ring: when none of the first RING_PREFIX
    ring backends may take a session, the least-loaded eligible backend does, not the next
    one on the ring."""
    policy = make_policy(redis_client, 64)
    ring = policy.ring().order("chat-x")
    for name in ring[:RING_PREFIX]:
        set_drained(redis_client, policy.ctx.keys, name, True)
    # Load every backend but one past the ring prefix; that one is the least loaded.
    idle = ring[RING_PREFIX + 5]
    for name in ring[RING_PREFIX:]:
        if name != idle:
            for _ in range(2):
                busy = policy.ctx.leases.acquire(f"load-{next(_ids)}", name)
                assert busy.backend == name
    decision = policy.pick(request("chat-x"), frozenset())
    assert (decision.backend.name, decision.reason) == (idle, "ring")
    again = policy.pick(request("chat-x"), frozenset())
    assert (again.backend.name, again.reason) == (idle, "sticky")


def full_bound(client: Any, policy: SessionAffinity, name: str, exclude: set[str]) -> int:
    """The bound as the script computed it before: a walk over every eligible backend."""
    keys = policy.ctx.keys
    drained = client.smembers(keys.drained)
    inflight = {n: int(c) for n, c in client.hgetall(keys.inflight).items()}
    total, weights = 0, 0.0
    for backend in policy.ctx.backends:
        health, models = client.hmget(keys.backend(backend.name), F.HEALTH, F.MODELS)
        if backend.name in drained or health == F.HEALTH_DOWN or backend.name in exclude:
            continue
        if models and "m" not in models.split(","):
            continue
        total += inflight.get(backend.name, 0)
        weights += backend.weight
    weight = policy.ctx.by_name[name].weight
    lb = policy.ctx.lb_config
    return math.ceil(lb.loadFactor * (total + 1) * weight / weights) + lb.loadSlack


def test_the_bound_is_the_one_a_walk_over_the_pool_gives(redis_client):
    """Random sessions, releases, drains, health and model-list changes: every bound the
    script's dry run shows (from lr:sum, less the excluded backends) equals the bound
    recomputed from every backend that serves the model."""
    rng = random.Random(11)
    policy = make_policy(redis_client, 40)
    keys = policy.ctx.keys
    held: list[str] = []
    checked = 0
    for step in range(300):
        roll = rng.random()
        name = f"b{rng.randrange(40):04d}"
        if roll < 0.5:
            decision = policy.pick(request(f"s{rng.randrange(30)}"), frozenset())
            held.append(decision.request_id)
        elif roll < 0.8 and held:
            policy.ctx.leases.release(held.pop(rng.randrange(len(held))))
        elif roll < 0.9:
            set_drained(redis_client, keys, name, rng.random() < 0.5)
        else:
            field, value = rng.choice(
                [(F.HEALTH, F.HEALTH_DOWN), (F.HEALTH, "up"), (F.MODELS, "m,x"), (F.MODELS, "x")]
            )
            redis_client.hset(keys.scrape_owners, name, "col 99999999999999")
            policy.ctx.leases.scripts.collector_publish(
                keys=[keys.scrape_owners, keys.backend(name)],
                args=["col", name, "", "", 1, field, value],
            )
        if step % 10 == 0:
            exclude = {f"b{rng.randrange(40):04d}" for _ in range(rng.randrange(3))}
            reply, _, _ = policy._call(request(f"s{rng.randrange(30)}"), frozenset(exclude), True)
            if not reply[0]:
                continue
            checked += 1
            for name, _, bound, _ in reply[3]:
                assert int(bound) == full_bound(redis_client, policy, name, exclude), step
    assert checked > 20


def test_a_request_id_that_holds_a_lease_gets_it_back(redis_client):
    """Acquiring is idempotent per request id: a second pick with the same id returns the
    held backend, counted once, and the session follows it."""
    policy = make_policy(redis_client, 64)
    first = policy.pick(request("home"), frozenset())
    other = next(
        s for s in (f"o{i}" for i in range(100)) if policy.ring().order(s)[0] != first.backend.name
    )
    again = request(other)
    again.request_id = first.request_id
    second = policy.pick(again, frozenset())
    assert second.backend.name == first.backend.name
    keys = policy.ctx.keys
    assert redis_client.hgetall(keys.inflight) == {first.backend.name: "1"}
    third = policy.pick(request(other), frozenset())
    assert (third.backend.name, third.reason) == (first.backend.name, "sticky")
