"""round_robin and random: load-blind baselines for benchmarks (and tiny fleets).

Both still reserve through the lease scripts, so in-flight counts, drains
and health apply to them exactly as to the real policies.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from llmlbd.config.loader import Backend
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.framework import Decision
from llmlbd.policy.outcomes import combined_reason, no_route
from llmlbd.request import RoutingRequest
from llmlbd.state.rotation import next_turn

__all__ = ["RoundRobin", "Random"]


class _InOrder:
    """Try the backends in the order `order()` gives; the first that accepts wins."""

    name = ""

    def __init__(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        self.cap = ctx.lb_config.maxRequestCount

    def order(self, candidates: list[Backend]) -> Iterable[Backend]:
        """The order to try *candidates* in (a fresh list: it may be reordered in place)."""
        raise NotImplementedError

    def pick(self, request: RoutingRequest, exclude: frozenset[str]) -> Decision:
        ctx = self.ctx
        assert ctx.leases is not None
        candidates = ctx.candidates_or_raise(request, exclude)
        reasons = []
        for backend in self.order(candidates):
            reservation = ctx.leases.acquire(
                request.request_id, backend.name, model=request.model, cap=self.cap
            )
            if reservation.backend is not None:
                return Decision(
                    # The lease this request id already held, if it held one.
                    ctx.by_name.get(reservation.backend, backend),
                    request.request_id,
                    self.name,
                    reason=self.name,
                    inflight=reservation.inflight,
                )
            reasons.append(reservation.reason)
        raise no_route(combined_reason(reasons), request)


class RoundRobin(_InOrder):
    name = "round_robin"

    def order(self, candidates: list[Backend]) -> Iterable[Backend]:
        # One counter for the whole pool, so replicas take turns together.
        turn = next_turn(self.ctx.client, self.ctx.keys) if self.ctx.client else 0
        start = turn % len(candidates)
        return candidates[start:] + candidates[:start]


class Random(_InOrder):
    name = "random"

    def order(self, candidates: list[Backend]) -> Iterator[Backend]:
        # A shuffle drawn lazily (Fisher-Yates, one step per backend tried): the first try,
        # which nearly always reserves, costs O(1) whatever the pool size.
        rng, n = self.ctx.rng, len(candidates)
        for i in range(n):
            j = rng.randrange(i, n)
            candidates[i], candidates[j] = candidates[j], candidates[i]
            yield candidates[i]
