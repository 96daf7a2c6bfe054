"""Read a pool's state for `status`, `watch` and `inspect`: plain dicts, JSON-ready.

Ages are computed against Redis's clock (TIME), the clock the collector and
the lease scripts write with, so the host llmlbctl runs on may be skewed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from llmlbd.config.loader import Backend
from llmlbd.ctl.members import effective_backends
from llmlbd.state import backend_fields as F
from llmlbd.state.keys import PoolKeys
from llmlbd.state.snapshot import read_pool

__all__ = [
    "redis_now_ms",
    "redis_info",
    "heartbeats",
    "backend_rows",
    "pool_status",
    "replica_of",
    "serving",
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


def replica_of(worker_id: str) -> str:
    """The replica (host) a worker or collector id belongs to: the part before the first ':'."""
    return worker_id.split(":", 1)[0]


def heartbeats(client: Any, key: str, now_ms: int) -> dict[str, list[dict[str, Any]]]:
    """A heartbeat ZSET (id -> deadline ms) split into live and expired entries."""
    live, dead = [], []
    for member, deadline in client.zrange(key, 0, -1, withscores=True):
        entry = {
            "id": member,
            "replica": replica_of(member),
            "expires_in_ms": int(deadline) - now_ms,
        }
        (live if deadline >= now_ms else dead).append(entry)
    return {"live": live, "dead": dead}


def serving(row: dict[str, Any]) -> bool:
    """Would an acquire script consider this backend? (not drained, not down)"""
    return not row["drained"] and row["health"] != F.HEALTH_DOWN


def backend_rows(
    client: Any, keys: PoolKeys, backends: Sequence[Backend], stale_after_ms: int
) -> list[dict[str, Any]]:
    """One dict per backend: health, drained, load, engine metrics and their age."""
    rows = []
    for state in read_pool(client, keys, backends):
        age = state.metrics_age_ms
        rows.append(
            {
                "name": state.name,
                "url": state.backend.url,
                "weight": state.backend.weight,
                "health": state.metrics.get(F.HEALTH) or F.HEALTH_UNKNOWN,
                "drained": state.drained,
                "inflight": state.inflight,
                "waiting": state.metric(F.WAITING),
                "running": state.metric(F.RUNNING),
                "kv_usage": state.metric(F.KV_USAGE),
                "metrics_age_ms": age,
                "stale": age is None or age > stale_after_ms,
                "models": state.names(F.MODELS),
                "last_error": state.metrics.get(F.LAST_ERROR) or None,
            }
        )
    return rows


def pool_status(ctl: Any) -> dict[str, Any]:
    """Everything `llmlbctl status` shows, as one JSON-ready dict."""
    client, keys, config = ctl.client, ctl.keys, ctl.config
    info = redis_info(client)
    backends, source = effective_backends(client, keys, config.backends)
    stale_after = config.collector.stale_after_ms
    rows = backend_rows(client, keys, backends, stale_after)
    pipe = client.pipeline(transaction=False)
    pipe.smembers(keys.drained)
    pipe.hlen(keys.leases)
    pipe.hgetall(keys.scrape_owners)
    drained, leases, owners = pipe.execute()
    now = redis_now_ms(client)
    workers = heartbeats(client, keys.workers, now)
    collectors = heartbeats(client, keys.collectors, now)
    replicas: dict[str, int] = {}
    for worker in workers["live"]:
        replicas[worker["replica"]] = replicas.get(worker["replica"], 0) + 1
    scrape_owners = {}
    for name, value in owners.items():
        collector, _, deadline = value.partition(" ")
        try:
            expires = int(float(deadline)) - now
        except ValueError:
            expires = None
        scrape_owners[name] = {"collector": collector, "expires_in_ms": expires}
    names = {row["name"] for row in rows}
    return {
        "pool": keys.pool,
        "policy": config.lb_policy,
        "redis": {"url": ctl.describe_redis(), "mode": config.redis.mode, **info},
        "redis_time_ms": now,
        "membership": source,
        "stale_after_ms": stale_after,
        "backends": rows,
        "serving": sum(1 for row in rows if serving(row)),
        "drained_not_members": sorted(set(drained) - names),
        "leases": leases,
        "workers": workers,
        "replicas": [{"host": host, "workers": count} for host, count in sorted(replicas.items())],
        "collectors": collectors,
        "scrape_owners": scrape_owners,
    }
