"""The membership changes while a pick waits on Redis: the decision names a backend of the
view it was taken in, never a KeyError (a 500 to the client).

In a gevent worker the Redis call yields, and the greenlet that re-reads the pool's
members (PolicyContext.set_backends) may run meanwhile. Here the real client runs the
change right after its script call returns, which is that interleaving made certain:
the request was decided among [old], and the context now holds only [new].
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
import redis

from llmlbd.config.loader import config_from_dict
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.registry import load_policy_class
from llmlbd.request import RoutingRequest
from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases


class ChangesDuringCall(redis.Redis):
    """A real client that runs *during_call* (once) as its next script call returns."""

    during_call: Callable[[], None] | None = None

    def execute_command(self, *args: Any, **options: Any) -> Any:
        reply = super().execute_command(*args, **options)
        if self.during_call is not None and str(args[0]).upper() in ("EVALSHA", "EVAL"):
            hook, self.during_call = self.during_call, None
            hook()
        return reply


@pytest.mark.parametrize("policy", ["global_least_request", "prefix_cache", "session_affinity"])
def test_a_pick_decided_before_the_change_names_its_own_backend(redis_url, policy):
    client = ChangesDuringCall.from_url(redis_url, decode_responses=True)
    cfg = config_from_dict(
        {
            "lb_policy": policy,
            "backends": [
                {"name": "old", "url": "http://127.0.0.1:9001"},
                {"name": "new", "url": "http://127.0.0.1:9002"},
            ],
        }
    )
    old, new = cfg.backends
    keys = PoolKeys("change")
    ctx = PolicyContext(
        [old], cfg.lb_config, keys, Leases(client, keys, "w1", 60_000), client, rng=random.Random(1)
    )
    chosen = load_policy_class(policy)(ctx)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    request = RoutingRequest("r-1", "POST", "/v1/chat/completions", body=body, model="m")
    client.during_call = lambda: ctx.set_backends([new])
    try:
        decision = chosen.pick(request, frozenset())
        assert client.during_call is None, "the policy made no script call"
        assert decision.backend is old
        assert ctx.by_name == {"new": new}
        # The next request is decided among the new members only.
        later = RoutingRequest("r-2", "POST", "/v1/chat/completions", body=body, model="m")
        assert chosen.pick(later, frozenset()).backend is new
    finally:
        client.close()
