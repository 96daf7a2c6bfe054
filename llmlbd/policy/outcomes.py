"""Turn a script's "no backend" reason into the error the client gets."""

from __future__ import annotations

from llmlbd.errors import LLMLBError, ModelNotFound, NoBackend, OverCapacity
from llmlbd.request import RoutingRequest


def no_route(reason: str, request: RoutingRequest) -> LLMLBError:
    if reason == "cap":
        return OverCapacity(
            "every backend is at its maximum number of requests in flight "
            "(lb_config.maxRequestCount); retry later"
        )
    if reason == "model":
        return ModelNotFound(f"the model '{request.model}' does not exist on any backend")
    if reason == "empty":
        return NoBackend("no backend is configured")
    return NoBackend("no healthy backend is available (all down or drained)")
