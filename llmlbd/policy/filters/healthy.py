"""healthy: drop backends that are drained, marked down by the collector, or ejected.

Formula: keep ``b`` iff ``b ∉ drained``, ``health(b) != "down"`` and ``b`` is not
in an outlier cool-down (or waiting on its probe; docs/reliability.md). A
backend whose health is "unknown" (or never checked) is kept: only evidence
removes it. Runs first, before any metric is looked at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmlbd.policy.filters._base import by_predicate
from llmlbd.policy.framework import BackendState, FilterResult
from llmlbd.request import RoutingRequest
from llmlbd.state import backend_fields as F

__all__ = ["Healthy", "TYPE", "why_not"]

TYPE = "healthy"


class Healthy:
    def __init__(self, name: str = TYPE) -> None:
        self.name = name

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None, **_: Any) -> Healthy:
        return cls(**dict(params or {}))

    def filter(self, request: RoutingRequest, candidates: Sequence[BackendState]) -> FilterResult:
        return by_predicate(candidates, why_not)


def why_not(state: BackendState) -> str | None:
    """ "drained", "down", "ejected", or None when the backend may serve."""
    if state.drained:
        return "drained"
    if state.metrics.get(F.HEALTH) == F.HEALTH_DOWN:
        return "down"
    if state.ejected_until_ms is not None:
        return "ejected"
    return None
