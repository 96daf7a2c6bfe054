"""What a policy may use: the pool's backends, its config and the shared state."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmlbd.config.loader import Backend
from llmlbd.config.sections import LbConfigSection
from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases
from llmlbd.state.ordered_index import Membership

if TYPE_CHECKING:
    from llmlbd.request import RoutingRequest

__all__ = ["PolicyContext"]


@dataclass
class PolicyContext:
    backends: list[Backend]
    lb_config: LbConfigSection
    keys: PoolKeys
    # None when the policy runs without Redis (the local fallback).
    leases: Leases | None
    client: Any = None
    stale_after_ms: int = 2000
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.set_backends(self.backends)

    def set_backends(self, backends: list[Backend]) -> None:
        """Replace the pool's members (membership changed in Redis)."""
        self.backends = list(backends)
        self.by_name = {backend.name: backend for backend in self.backends}
        # The ordered index's view of the pool (llmlbd.state.ordered_index): its digest
        # goes with every acquire that picks from the index.
        self.membership = Membership.of(
            [b.name for b in self.backends], [b.weight for b in self.backends]
        )

    def candidates(self, exclude: frozenset[str]) -> list[Backend]:
        if not exclude:  # the first try of nearly every request: a copy at C speed
            return list(self.backends)
        return [backend for backend in self.backends if backend.name not in exclude]

    def candidates_or_raise(
        self, request: RoutingRequest, exclude: frozenset[str]
    ) -> list[Backend]:
        """The backends not excluded; raise the client's error when there are none."""
        from llmlbd.policy.outcomes import no_route

        candidates = self.candidates(exclude)
        if not candidates:
            raise no_route("none" if exclude else "empty", request)
        return candidates
