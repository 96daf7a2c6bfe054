"""Every "no backend" outcome becomes the client's error here, and only here.

The reasons are those of the acquire scripts: "cap" (429), "model" (404
model_not_found), "none" (503: all down, drained or ejected) and "empty" (503: no
backend configured). When several backends were refused for different
reasons, `combined_reason` decides in the scripts' order: a backend at the
cap means the pool serves the request but is full; else a backend without
the model means the model is not served; else none can serve.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from llmlbd.errors import LLMLBError, ModelNotFound, NoBackend, OverCapacity
from llmlbd.request import RoutingRequest

__all__ = [
    "no_route",
    "combined_reason",
    "error_outcome",
    "no_route_outcome",
    "refuse_empty_pool",
]


def combined_reason(reasons: Iterable[str]) -> str:
    """One reason for a pool whose backends each refused for *reasons* (see the module doc)."""
    seen = set(reasons)
    if "cap" in seen:
        return "cap"
    if "model" in seen:
        return "model"
    return "none"


def no_route(reason: str, request: RoutingRequest) -> LLMLBError:
    """The error a client gets when no backend can take *request*, for *reason*."""
    if reason == "cap":
        return OverCapacity(
            "every backend is at its maximum number of requests in flight "
            "(lb_config.maxRequestCount); retry later"
        )
    if reason == "model":
        return ModelNotFound(f"the model '{request.model}' does not exist on any backend")
    if reason == "empty":
        return NoBackend("no backend is configured")
    return NoBackend("no healthy backend is available (all down, drained or ejected)")


def refuse_empty_pool(
    names: Iterable[str], exclude: Collection[str], request: RoutingRequest
) -> None:
    """Raise `no_route`'s error when the pool (backend *names*) is empty ("empty") or
    every backend is excluded for this attempt ("none")."""
    empty = True
    for name in names:  # stops at the first backend not excluded: O(1) per request as a rule
        if name not in exclude:
            return
        empty = False
    raise no_route("empty" if empty else "none", request)


def error_outcome(error: LLMLBError) -> dict[str, Any]:
    """*error* as explain's "outcome": {"status", "code", "message"}."""
    return {"status": error.status, "code": error.code, "message": error.message}


def no_route_outcome(reason: str, request: RoutingRequest) -> dict[str, Any]:
    """explain's "outcome" for the error `no_route` gives for *reason*."""
    return error_outcome(no_route(reason, request))
