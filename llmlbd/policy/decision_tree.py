"""A tree of filters, run as the inference-extension v0.1–v0.3 scheduler runs it.

Each node runs one filter on its input. The filter *succeeds* when it keeps at
least one backend, and *fails* when it keeps none.

* success: go to ``on_success`` (else ``on_either``) with the **kept** backends;
  with no next node, the kept backends are the result;
* failure: go to ``on_failure`` (else ``on_either``) with the node's
  **original input**, not the empty list; with no next node, the result is
  empty, and ``shed`` is set when the node says failing means shedding.

A failed filter therefore passes its input on. The caller then picks
uniformly at random among the result (see ``least_busy``). Every node that
ran is recorded in the trace, which ``llmlbctl explain`` prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmlbd.policy.framework import BackendState, Filter
from llmlbd.request import RoutingRequest

__all__ = ["Node", "TreeOutcome", "TreeRequest", "run_tree"]


@dataclass
class TreeRequest(RoutingRequest):
    """The request as the tree sees it: criticality resolved, plus pool-wide facts.

    ``pool_adapters`` holds every LoRA adapter active on some backend of the
    snapshot, so the LoRA filter knows a request is for an adapter even when
    an earlier filter removed every backend holding it. None: unknown (the
    filter then looks at its own input only).
    """

    pool_adapters: frozenset[str] | None = None


@dataclass
class Node:
    filter: Filter
    on_success: Node | None = None
    on_failure: Node | None = None
    on_either: Node | None = None
    # A failure with nowhere to go means "shed the request" rather than "no backend".
    shed_on_failure: bool = False


@dataclass
class TreeOutcome:
    survivors: list[BackendState]
    trace: list[dict[str, Any]] = field(default_factory=list)
    shed: bool = False
    # Name of the last node that ran.
    last: str = ""


def run_tree(
    root: Node, request: RoutingRequest, candidates: Sequence[BackendState]
) -> TreeOutcome:
    """Run the tree from *root*; iterative, so a deep tree cannot overflow the stack."""
    outcome = TreeOutcome([])
    node: Node | None = root
    current = list(candidates)
    while node is not None:
        result = node.filter.filter(request, current)
        ok = bool(result.kept)
        outcome.trace.append(
            {
                "filter": node.filter.name,
                "in": [state.name for state in current],
                "kept": [state.name for state in result.kept],
                "removed": dict(result.removed),
                "outcome": "success" if ok else "failure",
            }
        )
        outcome.last = node.filter.name
        if ok:
            following = node.on_success or node.on_either
            if following is None:
                outcome.survivors = list(result.kept)
                return outcome
            current = list(result.kept)
        else:
            following = node.on_failure or node.on_either
            if following is None:
                outcome.shed = node.shed_on_failure
                return outcome
            # current (the node's input) passes on unchanged
        node = following
    return outcome
