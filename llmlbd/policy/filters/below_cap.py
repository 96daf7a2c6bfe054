"""below_cap: drop backends already at ``lb_config.maxRequestCount`` requests in flight.

Formula: keep ``b`` iff ``cap == 0`` or ``inflight(b) < cap``. The snapshot may
be a few milliseconds old; the reservation script re-checks the cap
atomically, so this filter only avoids choosing a backend that would refuse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmlbd.policy.filters._base import by_predicate
from llmlbd.policy.framework import BackendState, FilterResult
from llmlbd.request import RoutingRequest

__all__ = ["BelowCap", "TYPE", "below"]

TYPE = "below_cap"


class BelowCap:
    def __init__(self, cap: int = 0, name: str = TYPE) -> None:
        self.name = name
        self.cap = cap

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None, **_: Any) -> BelowCap:
        return cls(**dict(params or {}))

    def filter(self, request: RoutingRequest, candidates: Sequence[BackendState]) -> FilterResult:
        return by_predicate(
            candidates,
            lambda s: None if below(s, self.cap) else f"{s.inflight} in flight >= cap {self.cap}",
        )


def below(state: BackendState, cap: int) -> bool:
    """True when there is no cap (0) or the backend has a free slot under it."""
    return cap <= 0 or state.inflight < cap
