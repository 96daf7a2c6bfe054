"""least_wait: the backends where a request's first token is expected soonest.

Formula: with ``wait(b)`` the seconds a new request would wait on ``b`` for its
first token (``_load.wait_s``: the requests ahead of it over the backend's free
running slots, drained at ``slots / service_s``, plus ``prefill_s``, plus one
``service_s`` when its LoRA adapter would need an adapter slot that is taken),
keep ``b`` iff ``wait(b) <= min wait + min prefill_s``: waits within one first-token
time of the fastest candidate are alike. Waits [0.01, 0.015, 0.08, 0.6] with a
fastest ``prefill_s`` of 0.01 keep {0.01, 0.015}. Never empties a non-empty list.

Where ``least_queue`` compares queue lengths, this compares what a queue costs
on each backend: a queue of 2 on a server that finishes a request every 50 ms
is shorter than an idle slot on a server whose first token takes 80 ms. The
tolerance is absolute and small: the first bucket ``min + (max - min) / N`` of
``least_queue`` widens with the worst backend, so one long queue would let a slow
server into a fast one's bucket, and a relative one (within 2x, the first version)
treats a queue of 2 s like one of 1 s once every server queues.

A backend whose speed is unknown (no ``service_s``/``prefill_s``: it has not
finished a request since the collector started watching it) is taken to be as
slow as the slowest candidate that has one, and to run one request at a time:
it is probed with little work until its own figures come in. When no
candidate's speed is known (a collector that predates these fields, every
metric stale), the filter is ``least_queue``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmlbd.policy.filters._base import by_predicate
from llmlbd.policy.filters._load import request_adapter, wait_s
from llmlbd.policy.filters.least_queue import LeastQueue
from llmlbd.policy.framework import BackendState, FilterResult
from llmlbd.request import RoutingRequest
from llmlbd.state import backend_fields as F

__all__ = ["LeastWait", "TYPE", "waits_of", "expected_waits"]

TYPE = "least_wait"


class LeastWait:
    def __init__(self, name: str = TYPE) -> None:
        self.name = name
        self.by_queue = LeastQueue()

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None, **_: Any) -> LeastWait:
        return cls(**dict(params or {}))

    def filter(self, request: RoutingRequest, candidates: Sequence[BackendState]) -> FilterResult:
        waits = waits_of(request, candidates)
        if waits is None:
            return self.by_queue.filter(request, candidates)
        least = min(waits.values())
        tolerance = min(p for s in candidates if (p := s.metric(F.PREFILL_S)) is not None)
        ceiling = least + tolerance
        return by_predicate(
            candidates,
            lambda s: (
                None
                if waits[s.name] <= ceiling
                else f"wait_s {waits[s.name]:.3f} > {ceiling:.3f} "
                f"(least {least:.3f} + fastest first token {tolerance:.3f})"
            ),
        )


def waits_of(
    request: RoutingRequest, candidates: Sequence[BackendState]
) -> dict[str, float] | None:
    """Each candidate's expected wait for *request* (``_load.wait_s``), a backend of
    unknown speed taken as slow as the slowest known one; None when no candidate's
    speed is known."""
    return expected_waits(candidates, request_adapter(request, candidates))


def expected_waits(
    candidates: Sequence[BackendState], adapter: str | None = None
) -> dict[str, float] | None:
    """``waits_of`` for a request of LoRA *adapter* (None: a base model)."""
    speeds = [
        (service, prefill)
        for s in candidates
        if (service := s.metric(F.SERVICE_S)) is not None
        and (prefill := s.metric(F.PREFILL_S)) is not None
    ]
    if not speeds:
        return None
    slowest = (max(service for service, _ in speeds), max(prefill for _, prefill in speeds))
    waits = {}
    for state in candidates:
        wait = wait_s(state, adapter, slowest)
        assert wait is not None  # a default speed is given
        waits[state.name] = wait
    return waits
