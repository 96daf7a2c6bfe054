"""fresh_metrics: prefer backends whose load metrics are fresh; never disable the policy.

A backend is *fresh* iff its metrics were scraped at most ``stale_after_ms``
ago (Redis clock) and report both ``waiting`` and ``kv_usage``.

Formula:
* some candidate is fresh -> keep exactly the fresh ones (a stale or silent
  backend is excluded only because fresher ones exist);
* no candidate is fresh -> keep every candidate, with its load fields
  (waiting, running, kv_usage, LoRA, speed) treated as unknown: the tree then
  decides on the in-flight counts alone (queue = in-flight; see ``_load``)
  and sheds nothing, because it cannot tell a queue from a running batch.

This replaces Higress's all-or-nothing rule, where one backend missing one
metric family turned the policy off for every backend.

``unscraped`` gives the candidates with no metrics at all yet (blinded as
above): the policy sends a request there rather than shed it, since a backend
never scraped is not known to be busy (GIE v0.3 read its zero-valued metrics
as idle).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from llmlbd.policy.filters._load import knows_load
from llmlbd.policy.framework import BackendState, FilterResult
from llmlbd.request import RoutingRequest
from llmlbd.state import backend_fields as F

__all__ = ["FreshMetrics", "TYPE", "LOAD_FIELDS"]

TYPE = "fresh_metrics"
LOAD_FIELDS = frozenset(
    {
        F.WAITING,
        F.RUNNING,
        F.KV_USAGE,
        F.LORA_RUNNING,
        F.LORA_WAITING,
        F.MAX_LORA,
        F.SERVICE_S,
        F.PREFILL_S,
        F.SLOTS,
    }
)


class FreshMetrics:
    def __init__(self, stale_after_ms: int = 2000, name: str = TYPE) -> None:
        self.name = name
        self.stale_after_ms = stale_after_ms

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None, **_: Any) -> FreshMetrics:
        return cls(**dict(params or {}))

    def why_stale(self, state: BackendState) -> str | None:
        if state.metrics_age_ms is None:
            return "no metrics"
        if state.metrics_age_ms > self.stale_after_ms:
            return f"stale metrics ({state.metrics_age_ms} ms old > {self.stale_after_ms} ms)"
        if not knows_load(state):
            return "metrics lack waiting or kv_usage"
        return None

    def filter(self, request: RoutingRequest, candidates: Sequence[BackendState]) -> FilterResult:
        reasons = {state.name: self.why_stale(state) for state in candidates}
        fresh = [state for state in candidates if reasons[state.name] is None]
        if fresh:
            return FilterResult(fresh, {name: why for name, why in reasons.items() if why})
        return FilterResult([blind(state) for state in candidates])

    def unscraped(self, candidates: Sequence[BackendState]) -> list[BackendState]:
        """The candidates with no metrics yet (never scraped), their load unknown."""
        return [blind(state) for state in candidates if state.metrics_age_ms is None]


def blind(state: BackendState) -> BackendState:
    """A copy of *state* whose load metrics are unknown (health and models are kept)."""
    metrics = {key: value for key, value in state.metrics.items() if key not in LOAD_FIELDS}
    return replace(state, metrics=metrics)
