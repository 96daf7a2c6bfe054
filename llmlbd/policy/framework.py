"""The units policies are made of, as in the inference-extension scheduler.

A policy is a short composition of **filters** that drop backends that
cannot or should not take the request, then a choice among the rest.
Policies whose whole decision must be atomic with the reservation
(global_least_request, prefix_cache) filter, score and pick inside one Lua
script, in one Redis round trip; the Python filters serve the policies that
decide on a metrics snapshot (least_busy), `llmlbctl explain`, and are the
definition of eligibility the scripts are tested against
(tests/policy/test_eligibility.py). There are no Scorer/Picker protocols:
nothing in Python scores in [0, 1] (docs/design.md, "Policies as pipelines").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from llmlbd.request import RoutingRequest
from llmlbd.state.types import Backend, BackendState

__all__ = ["BackendState", "Decision", "Filter", "Policy", "FilterResult"]


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
    # The pool it was made in (set by PoolRouters; its router releases it).
    pool: str = ""


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
class Policy(Protocol):
    name: str

    def pick(self, request: RoutingRequest, exclude: frozenset[str]) -> Decision:
        """Choose and reserve a backend; raise an llmlbd.errors.LLMLBError when none fits."""
        ...
