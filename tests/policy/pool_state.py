"""Writing a drawn pool state into Redis, and counting Redis's work, for the flat-cost
tests of the prefix indexes and session affinity (one copy of what each of them needs)."""

from __future__ import annotations

from typing import Any

from llmlbd.state import backend_fields as F
from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases


def write_backend(
    client: Any, keys: PoolKeys, leases: Leases, name: str, s: dict[str, Any], now: int
) -> None:
    """One backend as drawn: in-flight leases, health, models, metrics (fresh or an hour
    old), KV use, the KV cache's size when drawn (``gpu_blocks``) and the drained flag."""
    for k in range(s["inflight"]):
        assert leases.acquire(f"{name}-held-{k}", name).backend == name
    fields: dict[str, Any] = {}
    if s["health"]:
        fields[F.HEALTH] = s["health"]
    if s["models"]:
        fields["models"] = s["models"]
    fields["scraped_at"] = now if s["fresh"] else now - 3_600_000
    fields["waiting"] = s["queued"] // 2
    fields["running"] = s["queued"] - s["queued"] // 2
    if s["kv"] is not None:
        fields["kv_usage"] = s["kv"]
    if s.get("gpu_blocks"):
        fields.update(num_gpu_blocks=s["gpu_blocks"], block_size=16)
    client.hset(keys.backend(name), mapping=fields)
    if s["drained"]:
        client.sadd(keys.drained, name)


def redis_commands(client: Any) -> int:
    """Commands Redis has run so far, including those called by scripts."""
    return sum(int(v["calls"]) for v in client.info("commandstats").values())
