"""least_kv: the first KV-cache-use bucket.

Formula: over the candidates whose ``kv_usage`` is known, keep ``b`` iff
``min kv <= kv(b) <= min kv + (max kv - min kv) / N`` (float division, N the
number of those candidates). kv = [0.1, 0.5, 0.9] keeps {0.1}. A candidate
with unknown KV use is dropped when others report it, and when none does,
every candidate is kept (nothing to rank on).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmlbd.policy.filters._base import least_bucket
from llmlbd.policy.filters._load import kv
from llmlbd.policy.framework import BackendState, FilterResult
from llmlbd.request import RoutingRequest

__all__ = ["LeastKV", "TYPE"]

TYPE = "least_kv"


class LeastKV:
    def __init__(self, name: str = TYPE) -> None:
        self.name = name

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None, **_: Any) -> LeastKV:
        return cls(**dict(params or {}))

    def filter(self, request: RoutingRequest, candidates: Sequence[BackendState]) -> FilterResult:
        known = [state for state in candidates if kv(state) is not None]
        if not known:
            return FilterResult(list(candidates))
        result = least_bucket(known, lambda s: kv(s) or 0.0, integer=False, label="kv_usage")
        for state in candidates:
            if kv(state) is None:
                result.removed[state.name] = "kv_usage unknown"
        return result
