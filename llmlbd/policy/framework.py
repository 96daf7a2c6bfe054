"""The units policies are made of, as in the inference-extension scheduler.

A policy is a short composition: **filters** drop backends that cannot or
should not take the request, **scorers** rank the rest in [0, 1], and a
**picker** chooses one. Policies whose whole decision must be atomic with the
reservation (global_least_request, prefix_cache) run their filter and pick
inside one Lua script instead; the Python units serve the policies that
decide on a metrics snapshot (least_busy) and `llmlbctl explain`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from llmlbd.config.loader import Backend
from llmlbd.request import RoutingRequest

__all__ = ["BackendState", "Decision", "Filter", "Scorer", "Picker", "Policy", "FilterResult"]


@dataclass
class BackendState:
    """One backend as a policy sees it: static config plus a snapshot of shared state."""

    backend: Backend
    inflight: int = 0
    drained: bool = False
    # The collector's hash for this backend (field names in state.backend_fields).
    metrics: dict[str, str] = field(default_factory=dict)
    # Milliseconds since the metrics were scraped; None when never scraped.
    metrics_age_ms: int | None = None

    @property
    def name(self) -> str:
        return self.backend.name

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        if value in (None, ""):
            return None
        try:
            return float(value)  # type: ignore[arg-type]
        except ValueError:
            return None

    def names(self, field_name: str) -> list[str]:
        value = self.metrics.get(field_name) or ""
        return [part for part in value.split(",") if part]


@dataclass
class Decision:
    """Where a request goes and the lease that holds its slot."""

    backend: Backend
    request_id: str
    policy: str
    reason: str
    inflight: int = 0
    # True when the lease is worker-local (Redis unavailable).
    local: bool = False
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class FilterResult:
    kept: list[BackendState]
    # Why each removed backend was removed, for explain and for the error status.
    removed: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Filter(Protocol):
    name: str

    def filter(
        self, request: RoutingRequest, candidates: Sequence[BackendState]
    ) -> FilterResult: ...


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score(
        self, request: RoutingRequest, candidates: Sequence[BackendState]
    ) -> dict[str, float]:
        """A score in [0, 1] per backend name; higher is better."""
        ...


@runtime_checkable
class Picker(Protocol):
    name: str

    def pick(self, scored: Sequence[tuple[BackendState, float]]) -> BackendState: ...


@runtime_checkable
class Policy(Protocol):
    name: str

    def pick(self, request: RoutingRequest, exclude: frozenset[str]) -> Decision:
        """Choose and reserve a backend; raise an llmlbd.errors.LLMLBError when none fits."""
        ...
