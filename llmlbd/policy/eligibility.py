"""Who may take a request: THE eligibility rule, written once, from the filters.

A backend is eligible for a request when it is not drained, not marked down
and not ejected as an outlier (healthy), serves the model or its model list is unknown (serves_model), and
has a free slot under ``lb_config.maxRequestCount`` (below_cap), checked in
that order so that the first reason is reported. Unknown health and stale
metrics do not make a backend ineligible: only evidence removes it.

The Lua acquire scripts apply the same rule atomically with the reservation
(``ineligible()`` in lua/_lib.lua plus their cap check);
tests/policy/test_eligibility.py runs one table of cases through both and
requires identical answers.
"""

from __future__ import annotations

from llmlbd.policy.filters import below_cap, healthy, serves_model
from llmlbd.state.types import BackendState

__all__ = ["REASONS", "ineligible"]

# Every reason, in the order the checks run (and the scripts' order).
REASONS = ("drained", "down", "ejected", "model", "cap")


def ineligible(state: BackendState, model: str, cap: int) -> str | None:
    """Why *state* cannot take a request for *model* (one of REASONS), or None when it can."""
    why = healthy.why_not(state)
    if why is not None:
        return why
    if not serves_model.serves(state, model):
        return "model"
    if not below_cap.below(state, cap):
        return "cap"
    return None
