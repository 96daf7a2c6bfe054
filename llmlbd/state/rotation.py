"""round_robin's shared rotation counter: one per pool, so replicas take turns together."""

from __future__ import annotations

from typing import Any

from llmlbd.state.keys import PoolKeys

__all__ = ["next_turn", "current_turn"]


def next_turn(client: Any, keys: PoolKeys) -> int:
    """Take the next turn (INCR: atomic across workers and replicas)."""
    return int(client.incr(keys.rr_counter))


def current_turn(client: Any, keys: PoolKeys) -> int | None:
    """The last turn taken, without taking one; None before the first."""
    value = client.get(keys.rr_counter)
    return None if value is None else int(value)
