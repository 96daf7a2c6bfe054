"""round_robin and random on a real Redis: the order each tries backends in, and that a
refusal moves on to the next backend until every one was tried."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from llmlbd.config.loader import config_from_dict
from llmlbd.errors import LLMLBError
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.registry import load_policy_class
from llmlbd.request import RoutingRequest
from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases

NAMES = ["a", "b", "c", "d"]


def make(redis_client, policy: str, cap: int = 0):
    cfg = config_from_dict(
        {
            "lb_policy": policy,
            "lb_config": {"maxRequestCount": cap} if cap else {},
            "backends": [
                {"name": n, "url": f"http://127.0.0.1:{9001 + i}"} for i, n in enumerate(NAMES)
            ],
        }
    )
    keys = PoolKeys("baselines")
    leases = Leases(redis_client, keys, "w1", 60_000)
    leases.heartbeat()
    ctx = PolicyContext(
        cfg.backends, cfg.lb_config, keys, leases, redis_client, rng=random.Random(7)
    )
    return load_policy_class(policy)(ctx), leases


def request(i: int) -> RoutingRequest:
    return RoutingRequest(f"r-{i}", "POST", "/v1/chat/completions", body={}, model="m")


def test_random_spreads_evenly_and_skips_the_excluded(redis_client):
    policy, leases = make(redis_client, "random")
    picks = Counter()
    for i in range(2000):
        decision = policy.pick(request(i), frozenset({"d"}))
        picks[decision.backend.name] += 1
        leases.release(decision.request_id)
    assert set(picks) == {"a", "b", "c"}
    assert all(550 <= n <= 780 for n in picks.values()), picks  # 667 each, ~5 sigma


@pytest.mark.parametrize("policy", ["random", "round_robin"])
def test_a_refusal_moves_on_until_every_backend_was_tried(redis_client, policy):
    """With a cap of one, four requests in flight fill the pool, each on its own backend
    (the refused tries went on to the others); the fifth finds none and says why."""
    chosen, _ = make(redis_client, policy, cap=1)
    held = {chosen.pick(request(i), frozenset()).backend.name for i in range(4)}
    assert held == set(NAMES)
    with pytest.raises(LLMLBError) as refused:
        chosen.pick(request(4), frozenset())
    assert refused.value.status == 429
