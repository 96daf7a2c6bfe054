"""global_least_request: the fewest requests in flight across every worker and replica.

Filter (healthy, not drained, serves the model), pick (least in-flight per
unit of weight, random among ties) and reserve all happen in one Lua script,
so two workers can never both see the same idle backend. The script picks
from the ordered index (llmlbd.state.ordered_index), so a decision costs
O(log n) whatever the pool size; the worker passes only its membership's
digest, a random seed and the backends excluded for this request.
"""

from __future__ import annotations

from llmlbd.policy.context import PolicyContext
from llmlbd.policy.framework import Decision
from llmlbd.policy.outcomes import no_route
from llmlbd.request import RoutingRequest

__all__ = ["GlobalLeastRequest"]


class GlobalLeastRequest:
    name = "global_least_request"

    def __init__(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        self.cap = ctx.lb_config.maxRequestCount

    def pick(self, request: RoutingRequest, exclude: frozenset[str]) -> Decision:
        ctx = self.ctx
        assert ctx.leases is not None
        if not ctx.backends:
            raise no_route("empty", request)
        # The members as of now: the Redis call below yields, and the membership may change
        # meanwhile (set_backends); the reply names a member of this view.
        by_name = ctx.by_name
        reservation = ctx.leases.acquire_least_request(
            request.request_id,
            ctx.membership,
            seed=ctx.rng.getrandbits(31),
            model=request.model,
            cap=self.cap,
            exclude=sorted(exclude),
        )
        if reservation.backend is None:
            raise no_route(reservation.reason, request)
        return Decision(
            by_name[reservation.backend],
            request.request_id,
            self.name,
            reason="least_inflight",
            inflight=reservation.inflight,
        )
