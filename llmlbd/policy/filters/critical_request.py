"""critical_request: the root of the decision tree, a per-backend predicate on the request.

Formula: keep ``b`` iff ``request.criticality == "critical"``, for every ``b``;
so the filter keeps all candidates (success: low-latency branch) or none
(failure: the combinator passes the original candidates to the
shed-able branch). The policy resolves the criticality first
(``llmlbd.policy.criticality``); standard and sheddable both fail here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmlbd.policy.criticality import CRITICAL
from llmlbd.policy.framework import BackendState, FilterResult
from llmlbd.request import RoutingRequest

__all__ = ["CriticalRequest", "TYPE"]

TYPE = "critical_request"


class CriticalRequest:
    def __init__(self, name: str = TYPE) -> None:
        self.name = name

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None, **_: Any) -> CriticalRequest:
        return cls(**dict(params or {}))

    def filter(self, request: RoutingRequest, candidates: Sequence[BackendState]) -> FilterResult:
        if request.criticality == CRITICAL:
            return FilterResult(list(candidates))
        level = request.criticality or "unmarked"
        return FilterResult([], {s.name: f"request is {level}, not critical" for s in candidates})
