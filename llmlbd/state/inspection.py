"""Reads of a pool's shared state for llmlbctl (status, watch, inspect, drain).

Plain values out, no formatting: llmlbctl words them. Each function is one
round trip unless its doc says otherwise. Times are Redis's clock (TIME),
the clock the collector and the lease scripts write with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from llmlbd.state.keys import PoolKeys
from llmlbd.state.types import LeaseRecord

__all__ = [
    "BackendRecord",
    "PoolCounters",
    "redis_now_ms",
    "redis_info",
    "heartbeat_deadlines",
    "backend_record",
    "leases",
    "lease_of",
    "worker_deadline",
    "inflight_of",
    "pool_counters",
]


def redis_now_ms(client: Any) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def redis_info(client: Any, pings: int = 3) -> dict[str, Any]:
    """Role, version and round-trip latency (best of *pings* PINGs) of the Redis we talk to."""
    samples = []
    for _ in range(pings):
        start = time.perf_counter()
        client.ping()
        samples.append((time.perf_counter() - start) * 1000)
    info: dict[str, Any] = {}
    for section in ("server", "replication"):
        try:
            part = client.info(section)
        except Exception:
            continue
        if part and all(isinstance(value, dict) for value in part.values()):
            part = next(iter(part.values()))  # RedisCluster answers per node: take one
        info.update(part or {})
    return {
        "role": info.get("role", "unknown"),
        "version": str(info.get("valkey_version") or info.get("redis_version") or "unknown"),
        "latency_ms": round(min(samples), 3),
        "latency_max_ms": round(max(samples), 3),
        "connected_replicas": info.get("connected_slaves"),
    }


def heartbeat_deadlines(client: Any, key: str) -> dict[str, int]:
    """A heartbeat ZSET (workers or collectors): id -> deadline (ms), expired ones included."""
    return {
        member: int(deadline) for member, deadline in client.zrange(key, 0, -1, withscores=True)
    }


@dataclass(frozen=True)
class BackendRecord:
    """Everything Redis holds about one backend name."""

    exists: bool
    metrics: dict[str, str]
    drained: bool
    inflight: int | None
    scrape_owner: str | None


def backend_record(client: Any, keys: PoolKeys, name: str) -> BackendRecord:
    pipe = client.pipeline(transaction=False)
    pipe.exists(keys.backend(name))
    pipe.hgetall(keys.backend(name))
    pipe.sismember(keys.drained, name)
    pipe.hget(keys.inflight, name)
    pipe.hget(keys.scrape_owners, name)
    exists, metrics, drained, inflight, owner = pipe.execute()
    return BackendRecord(
        bool(exists), metrics, bool(drained), None if inflight is None else int(inflight), owner
    )


def leases(client: Any, keys: PoolKeys) -> dict[str, LeaseRecord]:
    """Every lease of the pool: request id -> record (HSCAN, several round trips)."""
    return {rid: LeaseRecord.parse(v) for rid, v in client.hscan_iter(keys.leases, count=1000)}


def lease_of(client: Any, keys: PoolKeys, request_id: str) -> LeaseRecord | None:
    value = client.hget(keys.leases, request_id)
    return None if value is None else LeaseRecord.parse(value)


def worker_deadline(client: Any, keys: PoolKeys, worker: str) -> int | None:
    deadline = client.zscore(keys.workers, worker)
    return None if deadline is None else int(deadline)


def inflight_of(client: Any, keys: PoolKeys, name: str) -> int:
    return int(client.hget(keys.inflight, name) or 0)


@dataclass(frozen=True)
class PoolCounters:
    drained: set[str]
    leases: int
    workers: int
    rotation: int | None
    # backend -> raw claim "collector deadline_ms" (parse with types.ClaimRecord)
    scrape_owners: dict[str, str]


def pool_counters(client: Any, keys: PoolKeys) -> PoolCounters:
    pipe = client.pipeline(transaction=False)
    pipe.smembers(keys.drained)
    pipe.hlen(keys.leases)
    pipe.zcard(keys.workers)
    pipe.get(keys.rr_counter)
    pipe.hgetall(keys.scrape_owners)
    drained, lease_count, workers, rotation, owners = pipe.execute()
    return PoolCounters(
        set(drained),
        int(lease_count),
        int(workers),
        None if rotation is None else int(rotation),
        owners,
    )
