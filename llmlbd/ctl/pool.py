"""Read a pool's state for `status`, `watch` and `inspect`: plain dicts, JSON-ready.

Ages are computed against Redis's clock (TIME), the clock the collector and
the lease scripts write with, so the host llmlbctl runs on may be skewed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmlbd.policy.filters.healthy import why_not
from llmlbd.state import backend_fields as F
from llmlbd.state.inspection import heartbeat_deadlines, pool_counters, redis_info, redis_now_ms
from llmlbd.state.keys import PoolKeys
from llmlbd.state.members import effective_backends
from llmlbd.state.outlier import OutlierRecord, outlier_view
from llmlbd.state.snapshot import read_pool
from llmlbd.state.types import Backend, ClaimRecord

__all__ = [
    "heartbeats",
    "backend_rows",
    "pool_status",
    "replica_of",
    "serving",
    "outlier_column",
]


def replica_of(worker_id: str) -> str:
    """The replica (host) a worker or collector id belongs to: the part before the first ':'."""
    return worker_id.split(":", 1)[0]


def heartbeats(client: Any, key: str, now_ms: int) -> dict[str, list[dict[str, Any]]]:
    """A heartbeat ZSET (id -> deadline ms) split into live and expired entries."""
    live: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []
    for member, deadline in heartbeat_deadlines(client, key).items():
        entry = {
            "id": member,
            "replica": replica_of(member),
            "expires_in_ms": int(deadline) - now_ms,
        }
        (live if deadline >= now_ms else dead).append(entry)
    return {"live": live, "dead": dead}


def serving(row: dict[str, Any]) -> bool:
    """Would an acquire script consider this backend? (not drained, down or ejected)"""
    return row["unavailable"] is None


def outlier_column(
    name: str, now_ms: int, ejected: dict[str, int], records: dict[str, OutlierRecord]
) -> dict[str, Any] | None:
    """A backend's outlier state for status and inspect, or None when nothing failed."""
    record = records.get(name)
    until = ejected.get(name)
    if record is None and until is None:
        return None
    state = "streak"
    if until is not None:
        state = (
            "half_open"
            if until <= now_ms
            else ("probing" if record and record.probe else "ejected")
        )
    return {
        "state": state,
        "remaining_ms": max(0, until - now_ms) if until is not None else None,
        "failures": record.streak if record else 0,
        "ejections_in_a_row": record.level if record else 0,
        "last_failure": record.kind if record else None,
        "probe": record.probe if record else None,
    }


def backend_rows(
    client: Any, keys: PoolKeys, backends: Sequence[Backend], stale_after_ms: int
) -> list[dict[str, Any]]:
    """One dict per backend: health, drained, ejection, load, engine metrics and their age."""
    rows = []
    ejected, records = outlier_view(client, keys)
    now = redis_now_ms(client)
    for state in read_pool(client, keys, backends):
        age = state.metrics_age_ms
        rows.append(
            {
                "name": state.name,
                "url": state.backend.url,
                "weight": state.backend.weight,
                "health": state.metrics.get(F.HEALTH) or F.HEALTH_UNKNOWN,
                "drained": state.drained,
                "unavailable": why_not(state),
                "outlier": outlier_column(state.name, now, ejected, records),
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
    client, keys, config, pool = ctl.client, ctl.keys, ctl.config, ctl.pool
    info = redis_info(client)
    backends, source = effective_backends(client, keys, pool.backends)
    stale_after = config.collector.stale_after_ms
    rows = backend_rows(client, keys, backends, stale_after)
    counters = pool_counters(client, keys)
    now = redis_now_ms(client)
    workers = heartbeats(client, keys.workers, now)
    collectors = heartbeats(client, keys.collectors, now)
    replicas: dict[str, int] = {}
    for worker in workers["live"]:
        replicas[worker["replica"]] = replicas.get(worker["replica"], 0) + 1
    scrape_owners = {}
    for name, value in counters.scrape_owners.items():
        claim = ClaimRecord.parse(value)
        expires = None if claim.deadline_ms is None else claim.deadline_ms - now
        scrape_owners[name] = {"collector": claim.collector, "expires_in_ms": expires}
    names = {row["name"] for row in rows}
    return {
        "pool": keys.pool,
        "policy": pool.lb_policy,
        "models": list(pool.models),  # what the proxy routes here ([]: every model)
        # Takes the models no other pool lists (only meaningful with several pools).
        "default": pool.default and config.multi_pool,
        "redis": {"url": ctl.describe_redis(), "mode": config.redis.mode, **info},
        "redis_time_ms": now,
        "membership": source,
        "stale_after_ms": stale_after,
        "backends": rows,
        "serving": sum(1 for row in rows if serving(row)),
        "drained_not_members": sorted(counters.drained - names),
        "leases": counters.leases,
        "workers": workers,
        "replicas": [{"host": host, "workers": count} for host, count in sorted(replicas.items())],
        "collectors": collectors,
        "scrape_owners": scrape_owners,
    }
