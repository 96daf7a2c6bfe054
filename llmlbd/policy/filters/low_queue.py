"""low_queue: backends whose queue is below ``queueingThresholdLoRA`` (default 128).

Formula: keep ``b`` iff ``queue(b) < threshold`` (strict), where
``queue(b) = waiting(b) + max(0, inflight(b) - (running(b) + waiting(b)))``
(see ``_load``). Fails (keeps none) when every backend is that queued; the
tree then ranks by queue first and LoRA affinity second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmlbd.policy.filters._base import by_predicate
from llmlbd.policy.filters._load import queue
from llmlbd.policy.framework import BackendState, FilterResult
from llmlbd.request import RoutingRequest

__all__ = ["LowQueue", "TYPE"]

TYPE = "low_queue"


class LowQueue:
    def __init__(self, threshold: int = 128, name: str = TYPE) -> None:
        self.name = name
        self.threshold = threshold

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None, **_: Any) -> LowQueue:
        return cls(**dict(params or {}))

    def filter(self, request: RoutingRequest, candidates: Sequence[BackendState]) -> FilterResult:
        return by_predicate(
            candidates,
            lambda s: (
                None if queue(s) < self.threshold else f"queue {queue(s)} >= {self.threshold}"
            ),
        )
