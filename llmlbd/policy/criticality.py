"""How critical a request is, from the most specific signal that says so.

Precedence (first one that speaks wins):

1. the ``x-llmlbd-criticality`` header (``critical``, ``standard``, ``sheddable``),
   already validated by the parser into ``request.criticality``;
2. vLLM's ``priority`` body field: in vLLM a *lower* value is served first,
   so ``priority < 0`` means critical and ``priority > 0`` sheddable; ``0`` (vLLM's
   default) says nothing;
3. ``lb_config.criticalModels``: the request's ``model`` is listed -> critical;
4. ``lb_config.defaultCriticality``: ``auto`` means critical while
   criticalModels is empty and standard once it lists models.

Per-request signals beat the operator's model list because they are more
specific; an edge that does not trust its clients should strip the header
and the field. As in the inference-extension v0.3 tree, standard and
sheddable requests both take the shed-able branch.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmlbd.request import RoutingRequest

__all__ = ["CRITICAL", "STANDARD", "SHEDDABLE", "Criticality", "resolve_criticality"]

CRITICAL, STANDARD, SHEDDABLE = "critical", "standard", "sheddable"
LEVELS = (CRITICAL, STANDARD, SHEDDABLE)


@dataclass(frozen=True)
class Criticality:
    level: str
    # Which signal decided: "header", "priority", "criticalModels" or "default".
    source: str

    @property
    def critical(self) -> bool:
        return self.level == CRITICAL


def resolve_criticality(
    request: RoutingRequest, critical_models: frozenset[str] | set[str], default: str = "auto"
) -> Criticality:
    """The request's criticality and the signal it came from (see the module docstring)."""
    if request.criticality in LEVELS:
        return Criticality(request.criticality, "header")
    if request.priority is not None and request.priority != 0:
        return Criticality(CRITICAL if request.priority < 0 else SHEDDABLE, "priority")
    if request.model and request.model in critical_models:
        return Criticality(CRITICAL, "criticalModels")
    if default == "auto":
        return Criticality(STANDARD if critical_models else CRITICAL, "default")
    return Criticality(default, "default")
