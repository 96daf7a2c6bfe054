"""How much of Redis the prefix_cache policy's keys use (`llmlbctl inspect prefix`).

Walks the pool's prefix keys with SCAN (never KEYS, so Redis is never
blocked), counts each backend's entries, and measures MEMORY USAGE on a
sample to estimate the total.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmlbd.state.keys import PoolKeys
from llmlbd.state.types import Backend

__all__ = ["prefix_usage"]


def prefix_usage(
    client: Any, keys: PoolKeys, backends: Sequence[Backend], sample: int, batch: int = 1000
) -> dict[str, Any]:
    """Count prefix keys and each backend's entries in them with SCAN (never KEYS);
    estimate memory with MEMORY USAGE on a sample."""
    total = 0
    per_backend: dict[str, int] = {}
    sampled: list[str] = []
    pending: list[str] = []

    def count(batch_keys: list[str]) -> None:
        # A prefix key is a HASH backend -> last use (acquire_prefix.lua); older
        # layouts stored the backend as a STRING. Count one entry per backend.
        pipe = client.pipeline(transaction=False)
        for key in batch_keys:
            pipe.hkeys(key)
        wrong_type = []
        for key, value in zip(batch_keys, pipe.execute(raise_on_error=False)):
            if isinstance(value, Exception):
                wrong_type.append(key)
                continue
            for owner in value:
                per_backend[owner] = per_backend.get(owner, 0) + 1
        if wrong_type:
            pipe = client.pipeline(transaction=False)
            for key in wrong_type:
                pipe.get(key)
            for value in pipe.execute(raise_on_error=False):
                if value is None:
                    continue  # expired between SCAN and GET
                owner = (
                    "(unknown type)"
                    if isinstance(value, Exception)
                    else str(value).split(" ", 1)[0]
                )
                per_backend[owner] = per_backend.get(owner, 0) + 1

    for key in client.scan_iter(match=keys.prefix_pattern(), count=batch):
        total += 1
        if len(sampled) < sample:
            sampled.append(key)
        pending.append(key)
        if len(pending) >= batch:
            count(pending)
            pending = []
    if pending:
        count(pending)

    sample_bytes: list[int] = []
    no_ttl = 0
    if sampled:
        pipe = client.pipeline(transaction=False)
        for key in sampled:
            pipe.memory_usage(key)
            pipe.pttl(key)
        replies = pipe.execute(raise_on_error=False)
        for usage, ttl in zip(replies[::2], replies[1::2]):
            if isinstance(usage, int):
                sample_bytes.append(usage)
            if ttl == -1:
                no_ttl += 1
    average = sum(sample_bytes) / len(sample_bytes) if sample_bytes else 0.0
    pipe = client.pipeline(transaction=False)
    for backend in backends:
        pipe.zcard(keys.prefix_owned_by(backend.name))
    owned = dict(zip((b.name for b in backends), pipe.execute()))
    return {
        "pool": keys.pool,
        "pattern": keys.prefix_pattern(),
        "keys": total,
        "keys_by_backend": dict(sorted(per_backend.items(), key=lambda kv: -kv[1])),
        "owned_index_by_backend": owned,
        "sampled": len(sample_bytes),
        "avg_bytes": round(average, 1),
        "estimated_bytes": int(average * total),
        "sampled_without_ttl": no_ttl,
    }
