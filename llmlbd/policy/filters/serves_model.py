"""serves_model: drop backends known not to serve the requested model.

Formula: keep ``b`` iff the request names no model, or ``models(b)`` is
unknown (empty), or ``model ∈ models(b)``, where ``models(b)`` is the
collector's list of ids from the backend's /v1/models (base models and
adapters). Same rule as the lease scripts' ``ineligible()``, so a backend
kept here is not refused later for its model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmlbd.policy.filters._base import by_predicate
from llmlbd.policy.framework import BackendState, FilterResult
from llmlbd.request import RoutingRequest
from llmlbd.state import backend_fields as F

__all__ = ["ServesModel", "TYPE", "serves"]

TYPE = "serves_model"


class ServesModel:
    def __init__(self, name: str = TYPE) -> None:
        self.name = name

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None, **_: Any) -> ServesModel:
        return cls(**dict(params or {}))

    def filter(self, request: RoutingRequest, candidates: Sequence[BackendState]) -> FilterResult:
        model = request.model
        return by_predicate(
            candidates, lambda s: None if serves(s, model) else f"does not serve model {model!r}"
        )


def serves(state: BackendState, model: str) -> bool:
    """True when the request names no model, the list is unknown, or it lists *model*."""
    if not model:
        return True
    served = state.names(F.MODELS)
    return not served or model in served
