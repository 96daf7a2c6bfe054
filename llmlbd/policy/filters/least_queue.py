"""least_queue: the first queue-length bucket.

Formula: with ``q(b) = waiting(b) + max(0, inflight(b) - (running(b) + waiting(b)))``
(see ``_load``), keep ``b`` iff ``min q <= q(b) <= min q + (max q - min q) // N``,
N the number of candidates, integer division. Examples: q = [0, 3, 10] keeps
{0, 3}; q = [2, 3, 4] keeps {2}. Never empties a non-empty list. Keeping a
bucket rather than the single minimum leaves choices for the next filter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmlbd.policy.filters._base import least_bucket
from llmlbd.policy.filters._load import queue
from llmlbd.policy.framework import BackendState, FilterResult
from llmlbd.request import RoutingRequest

__all__ = ["LeastQueue", "TYPE"]

TYPE = "least_queue"


class LeastQueue:
    def __init__(self, name: str = TYPE) -> None:
        self.name = name

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None, **_: Any) -> LeastQueue:
        return cls(**dict(params or {}))

    def filter(self, request: RoutingRequest, candidates: Sequence[BackendState]) -> FilterResult:
        return least_bucket(candidates, queue, integer=True, label="queue")
