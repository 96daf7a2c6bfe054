"""Read a pool's shared state in one round trip, for policies that decide in Python."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmlbd.state import backend_fields as F
from llmlbd.state.keys import PoolKeys
from llmlbd.state.scripts import ScriptSet, reply_text
from llmlbd.state.types import Backend, BackendState

__all__ = ["read_pool"]


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {reply_text(flat[i]): reply_text(flat[i + 1]) for i in range(0, len(flat), 2)}


def read_pool(client: Any, keys: PoolKeys, backends: Sequence[Backend]) -> list[BackendState]:
    """Every backend with its in-flight count, drained flag, metrics and their age.

    Metric age uses Redis's clock (TIME), the clock the collector's
    `scraped_at` is compared with, so no host's clock skew matters.
    """
    reply = ScriptSet(client).snapshot(
        keys=[keys.inflight, keys.drained, *(keys.backend(b.name) for b in backends)]
    )
    now_ms, inflight, drained = int(reply[0]), _pairs(reply[1]), set(map(reply_text, reply[2]))
    hashes = [_pairs(flat) for flat in reply[3:]]
    states = []
    for backend, metrics in zip(backends, hashes):
        scraped_at = metrics.get(F.SCRAPED_AT)
        age = now_ms - int(float(scraped_at)) if scraped_at else None
        states.append(
            BackendState(
                backend,
                inflight=int(inflight.get(backend.name, 0)),
                drained=backend.name in drained,
                metrics=metrics,
                metrics_age_ms=age,
            )
        )
    return states
