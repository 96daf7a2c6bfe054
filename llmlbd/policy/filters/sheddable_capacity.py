"""sheddable_capacity: backends with room for a request that may be shed.

Formula: keep ``b`` iff ``queue(b) <= queueThresholdCritical`` (default 5) and
``kv(b) <= kvCacheThreshold`` (default 0.8), both inclusive, with ``queue``
corrected by the in-flight count (see ``_load``). When it keeps none, the
tree sheds the request (429 with Retry-After).

A backend whose ``waiting`` is unknown (every backend stale or silent: see
``fresh_metrics``) is kept: llmlbd never sheds on numbers it does not have,
because a running batch and a queue look the same from the in-flight count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmlbd.policy.filters._base import by_predicate
from llmlbd.policy.filters._load import kv, queue
from llmlbd.policy.framework import BackendState, FilterResult
from llmlbd.request import RoutingRequest
from llmlbd.state import backend_fields as F

__all__ = ["SheddableCapacity", "TYPE"]

TYPE = "sheddable_capacity"


class SheddableCapacity:
    def __init__(
        self, queue_threshold: int = 5, kv_threshold: float = 0.8, name: str = TYPE
    ) -> None:
        self.name = name
        self.queue_threshold = queue_threshold
        self.kv_threshold = kv_threshold

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None, **_: Any) -> SheddableCapacity:
        return cls(**dict(params or {}))

    def filter(self, request: RoutingRequest, candidates: Sequence[BackendState]) -> FilterResult:
        return by_predicate(candidates, self._why_not)

    def _why_not(self, state: BackendState) -> str | None:
        if state.metric(F.WAITING) is None:
            return None
        reasons = []
        if queue(state) > self.queue_threshold:
            reasons.append(f"queue {queue(state)} > {self.queue_threshold}")
        usage = kv(state)
        if usage is not None and usage > self.kv_threshold:
            reasons.append(f"kv_usage {usage:g} > {self.kv_threshold:g}")
        return "; ".join(reasons) or None
