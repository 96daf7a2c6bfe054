"""What the load filters read from a backend's state: one definition for all of them.

The collector's hash holds what the engine reported at ``scraped_at``; the
in-flight count is what llmlbd holds open on the backend *now*. The collector
also records llmlbd's own in-flight count at the moment it publishes a scrape
(``inflight_at_scrape``), so the net change since the scrape,
``delta = inflight - inflight_at_scrape``, is known exactly: each request sent
since joins the queue, each one finished since lets a waiting one start. The
queue every load filter uses is

    queue = max(0, waiting + delta, inflight - running)

``waiting + delta`` is the scraped queue moved by what llmlbd did since; it keeps
traffic that does not pass through llmlbd (that stays in ``waiting``).
``inflight - running`` is what llmlbd holds beyond the engine's running batch:
it catches requests sent in the few milliseconds between the scrape and its
publish (in ``inflight_at_scrape`` but not in ``waiting``). Without
``inflight_at_scrape`` (hand-written state, a collector that predates it) delta
is taken as 0, which is the older rule ``max(waiting, inflight - running)``,
i.e. ``waiting + max(0, inflight - (running + waiting))``.

An absent field counts as 0 here, so a backend with no metrics at all has
``queue = inflight``. Without this correction every pick made between two
scrapes sees the same snapshot and herds onto the same "least busy" backend,
and a fast server that has worked off its queue since the scrape still looks
queued until the next one (the workers' copy of the metrics can be a few
hundred milliseconds old: ``state/snapshot.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

from llmlbd.policy.framework import BackendState
from llmlbd.request import RoutingRequest
from llmlbd.state import backend_fields as F

__all__ = [
    "queue",
    "pending",
    "occupancy",
    "wait_s",
    "request_adapter",
    "kv",
    "adapters",
    "max_lora",
    "knows_load",
]


def pending(state: BackendState) -> int:
    """Net requests llmlbd sent to the backend since its last scrape (negative: finished);
    0 when the scrape did not record llmlbd's in-flight count."""
    baseline = state.metric(F.INFLIGHT_AT_SCRAPE)
    return 0 if baseline is None else state.inflight - int(baseline)


def queue(state: BackendState) -> int:
    """Waiting requests now: the scraped queue moved by what llmlbd sent and saw finish
    since, and at least what llmlbd holds beyond the engine's running batch."""
    waiting = int(state.metric(F.WAITING) or 0)
    running = int(state.metric(F.RUNNING) or 0)
    return max(0, waiting + pending(state), state.inflight - running)


def occupancy(state: BackendState) -> int:
    """Requests on the backend now, running or waiting: the scraped ones moved by what
    llmlbd sent and saw finish since, and at least llmlbd's own in-flight count."""
    waiting = int(state.metric(F.WAITING) or 0)
    running = int(state.metric(F.RUNNING) or 0)
    return max(state.inflight, running + waiting + pending(state))


def wait_s(
    state: BackendState,
    adapter: str | None = None,
    default_speed: tuple[float, float] | None = None,
) -> float | None:
    """Expected seconds from sending one more request to its first token; None when the
    backend's speed is unknown (no ``service_s`` or ``prefill_s``) and no
    *default_speed* ``(service_s, prefill_s)`` stands in for it.

    With ``n`` requests on the backend (``occupancy``), ``S`` running slots and a slot
    held ``service_s`` seconds per request, the new request starts once
    ``max(0, n + 1 - S)`` of them have finished, which takes ``service_s / S`` each
    when every slot is busy; its first token then comes ``prefill_s`` later::

        wait = max(0, n + 1 - S) * service_s / S + prefill_s

    Unknown ``slots``: the queue ahead is taken as empty. A backend of unknown speed
    is given *default_speed* and taken to run one request at a time (``S = 1``),
    so that it is sent little until its own figures come in. A request for LoRA
    *adapter* on a backend where it would make more adapters active than the
    backend has adapter slots (``max_lora``) waits for another adapter's requests
    to drain first: one more ``service_s``.
    """
    service = state.metric(F.SERVICE_S)
    prefill = state.metric(F.PREFILL_S)
    slots = int(state.metric(F.SLOTS) or 0)
    if service is None or prefill is None:
        if default_speed is None:
            return None
        service, prefill = default_speed
        slots = 1  # unknown speed: probed one request at a time
    wait = prefill
    if slots > 0:
        wait += max(0, occupancy(state) + 1 - slots) * service / slots
    if adapter is not None and 0 < max_lora(state) < len(adapters(state) | {adapter}):
        wait += service
    return wait


def request_adapter(request: RoutingRequest, candidates: Sequence[BackendState]) -> str | None:
    """The request's LoRA adapter: its model when that is an active adapter somewhere in
    the pool (``request.pool_adapters``, set by the policy from the whole snapshot; else
    among *candidates*); None for a base-model request."""
    model = request.model
    if not model:
        return None
    pool: frozenset[str] | None = getattr(request, "pool_adapters", None)
    if pool is not None:
        return model if model in pool else None
    return model if any(model in adapters(state) for state in candidates) else None


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
