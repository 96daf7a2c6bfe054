"""One worker's routers, one per pool, behind the Router interface the proxy knows.

`PoolRouters.pick` sends the request to the pool its `model` selects
(`llmlbd.config.pools.PoolMap`: exact names, then patterns, then the default pool)
and lets that pool's `Router` (its own policy, `lb_config`, keys and fallback) pick
and reserve; the decision remembers its pool so that `release` reaches the same
router. A model that no pool takes is a 404 model_not_found, before any Redis call.
Every pool's router shares the worker's one Redis client and circuit breaker: there
is one Redis, so it is up or down for every pool at once.
"""

from __future__ import annotations

from collections.abc import Callable

from llmlbd.config.pools import PoolMap
from llmlbd.errors import ModelNotFound
from llmlbd.policy.framework import Decision
from llmlbd.policy.router import Router
from llmlbd.request import RoutingRequest
from llmlbd.state.breaker import Breaker

__all__ = ["PoolRouters", "no_pool"]


def no_pool(model: str, pools: PoolMap) -> ModelNotFound:
    """The client's error for a model that no pool lists while none is the default."""
    return ModelNotFound(
        f"the model '{model}' is not served here: no pool lists it "
        f"(pools: {', '.join(pools.names())}) and none is the default"
    )


class PoolRouters:
    def __init__(self, routers: dict[str, Router], pools: PoolMap, breaker: Breaker) -> None:
        self.routers = routers
        self.pools = pools
        self.breaker = breaker

    def router_for(self, request: RoutingRequest) -> tuple[str, Router]:
        """The pool (name, router) that serves *request*; ModelNotFound when none does."""
        pool = self.pools.select(request.model)
        if pool is None:
            raise no_pool(request.model, self.pools)
        return pool.name, self.routers[pool.name]

    def pick(self, request: RoutingRequest, exclude: frozenset[str] = frozenset()) -> Decision:
        name, router = self.router_for(request)
        request.pool = name
        decision = router.pick(request, exclude)
        decision.pool = name
        return decision

    def release(self, decision: Decision, outcome: str = "") -> None:
        """Give the slot back to the pool that reserved it, exactly once, with how the
        backend did (Router.release); never raises."""
        self.routers[decision.pool].release(decision, outcome)

    def defer_releases(self, wake: Callable[[], None]) -> None:
        """Every pool's releases are queued and sent by the caller's sender (Router)."""
        for router in self.routers.values():
            router.defer_releases(wake)

    def send_releases(self) -> None:
        for router in self.routers.values():
            router.send_releases()

    def maintain(self) -> None:
        """Each pool's heartbeat, retried releases, reaping and health view."""
        for router in self.routers.values():
            router.maintain()

    def retire(self) -> None:
        for router in self.routers.values():
            router.retire()
