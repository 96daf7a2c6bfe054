"""Read a pool's shared state in one round trip, for policies that decide in Python."""

from __future__ import annotations

from typing import Any, Sequence

from llmlbd.config.loader import Backend
from llmlbd.policy.framework import BackendState
from llmlbd.state import backend_fields as F
from llmlbd.state.keys import PoolKeys

__all__ = ["read_pool"]


def read_pool(client: Any, keys: PoolKeys, backends: Sequence[Backend]) -> list[BackendState]:
    """Every backend with its in-flight count, drained flag, metrics and their age.

    Metric age uses Redis's clock (TIME), the clock the collector's
    `scraped_at` is compared with, so no host's clock skew matters.
    """
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.hgetall(keys.inflight)
    pipe.smembers(keys.drained)
    for backend in backends:
        pipe.hgetall(keys.backend(backend.name))
    (seconds, micros), inflight, drained, *hashes = pipe.execute()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    states = []
    for backend, metrics in zip(backends, hashes):
        scraped_at = metrics.get(F.SCRAPED_AT)
        age = now_ms - int(float(scraped_at)) if scraped_at else None
        states.append(BackendState(backend, inflight=int(inflight.get(backend.name, 0)),
                                   drained=backend.name in drained, metrics=metrics,
                                   metrics_age_ms=age))
    return states
