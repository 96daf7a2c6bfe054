"""What the load filters read from a backend's state: one definition for all of them.

The collector's hash holds what the engine reported at ``scraped_at``; the
in-flight count is what llmlbd holds open on the backend *now*. Their gap is
the requests dispatched since the scrape that the engine had not yet
reported (minus those finished since), and it is counted as queued:

    queue = waiting + max(0, inflight - (running + waiting))

An absent field counts as 0 here, so a backend with no metrics at all has
``queue = inflight``. Without this correction every pick made between two
scrapes sees the same snapshot and herds onto the same "least busy" backend.
"""

from __future__ import annotations

from llmlbd.policy.framework import BackendState
from llmlbd.state import backend_fields as F

__all__ = ["queue", "pending", "kv", "adapters", "max_lora", "knows_load"]


def pending(state: BackendState) -> int:
    """Requests llmlbd holds on the backend beyond what its last scrape reported."""
    reported = int(state.metric(F.RUNNING) or 0) + int(state.metric(F.WAITING) or 0)
    return max(0, state.inflight - reported)


def queue(state: BackendState) -> int:
    """Waiting requests, corrected by the requests dispatched since the scrape."""
    return int(state.metric(F.WAITING) or 0) + pending(state)


def kv(state: BackendState) -> float | None:
    """KV-cache use in 0..1, or None when unknown."""
    return state.metric(F.KV_USAGE)


def knows_load(state: BackendState) -> bool:
    """True when the backend reported the two numbers the tree decides on."""
    return state.metric(F.WAITING) is not None and state.metric(F.KV_USAGE) is not None


def adapters(state: BackendState) -> set[str]:
    """LoRA adapters active on the backend (running or waiting to run)."""
    return {*state.names(F.LORA_RUNNING), *state.names(F.LORA_WAITING)}


def max_lora(state: BackendState) -> int:
    """Adapter slots on the backend; 0 when unknown or LoRA is off."""
    return int(state.metric(F.MAX_LORA) or 0)
