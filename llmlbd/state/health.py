"""Backend health as the collector left it in Redis, read in one round trip.

The proxy's fallback needs the backends it must avoid while Redis is away
(`unavailable`); a collector taking over a backend resumes its health
counters from the previous owner (`previous_health`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmlbd.state import backend_fields as F
from llmlbd.state.keys import PoolKeys
from llmlbd.state.scripts import reply_text

__all__ = ["unavailable", "previous_health"]


def unavailable(client: Any, keys: PoolKeys, names: Sequence[str]) -> set[str]:
    """The backends among *names* (plus any other) that are drained, marked down or ejected
    (in a cool-down or half-open: the fallback cannot run a probe, so it avoids both)."""
    pipe = client.pipeline(transaction=False)
    pipe.smembers(keys.drained)
    pipe.zrange(keys.ejected, 0, -1)
    for name in names:
        pipe.hget(keys.backend(name), F.HEALTH)
    drained, ejected, *health = pipe.execute()
    down = {name for name, state in zip(names, health) if state == F.HEALTH_DOWN}
    return {reply_text(name) for name in (*drained, *ejected)} | down


def previous_health(
    client: Any, keys: PoolKeys, names: Sequence[str]
) -> dict[str, tuple[str | None, str | None, str | None]]:
    """name -> (health, consecutive fails, consecutive successes) as last published."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hmget(keys.backend(name), F.HEALTH, F.FAILS, F.SUCCESSES)
    return {
        name: tuple(None if v is None else reply_text(v) for v in values)  # type: ignore[misc]
        for name, values in zip(names, pipe.execute())
    }
