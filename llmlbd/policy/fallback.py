"""Worker-local least-request: how requests keep flowing while Redis is unavailable.

Each worker counts only its own requests, so the choice is local, not
global; it is the documented degraded mode. Backends drained or marked down
in Redis cannot be seen from here, so the fallback uses the last health
view the worker read while Redis was up.
"""

from __future__ import annotations

from collections import Counter

from llmlbd.config.loader import Backend
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.framework import Decision
from llmlbd.policy.outcomes import no_route
from llmlbd.request import RoutingRequest

__all__ = ["LocalLeastRequest"]


class LocalLeastRequest:
    name = "local_least_request"

    def __init__(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        self.inflight: Counter[str] = Counter()
        self.held: dict[str, str] = {}
        # Backends known (from Redis, while it answered) to be down, drained or ejected.
        self.unavailable: set[str] = set()

    def pick(self, request: RoutingRequest, exclude: frozenset[str]) -> Decision:
        candidates = [b for b in self.ctx.candidates(exclude) if b.name not in self.unavailable]
        if not candidates:
            candidates = self.ctx.candidates(exclude)
        if not candidates:
            raise no_route("none" if self.ctx.backends else "empty", request)
        self.ctx.rng.shuffle(candidates)
        backend: Backend = min(candidates, key=lambda b: self.inflight[b.name] / b.weight)
        self.inflight[backend.name] += 1
        self.held[request.request_id] = backend.name
        return Decision(
            backend,
            request.request_id,
            self.name,
            reason="redis_unavailable",
            inflight=self.inflight[backend.name],
            local=True,
        )

    def release(self, request_id: str) -> bool:
        name = self.held.pop(request_id, None)
        if name is None:
            return False
        self.inflight[name] -= 1
        if self.inflight[name] <= 0:
            del self.inflight[name]
        return True
