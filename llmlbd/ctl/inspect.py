"""`llmlbctl inspect backend|request|prefix`: one part of the shared state, in detail."""

from __future__ import annotations

from typing import Any

import click

from llmlbd.ctl.context import Ctl, pass_ctl
from llmlbd.ctl.members import SOURCES, effective_backends
from llmlbd.ctl.output import emit, fmt_age, fmt_list, fmt_num, json_option, table
from llmlbd.ctl.pool import redis_now_ms, replica_of
from llmlbd.exits import NOT_FOUND
from llmlbd.state import backend_fields as F

__all__ = ["inspect_group"]


class NotFound(click.ClickException):
    exit_code = NOT_FOUND


@click.group("inspect")
def inspect_group() -> None:
    """Show one part of the pool's shared state in detail."""


# backend ----------------------------------------------------------------------------------
def _lease_parts(value: str) -> tuple[str, str, int | None]:
    """A lease value "backend worker since_ms" (since_ms may be absent in old leases)."""
    parts = value.split(" ")
    backend = parts[0] if parts else ""
    worker = parts[1] if len(parts) > 1 else ""
    try:
        since = int(float(parts[2])) if len(parts) > 2 else None
    except ValueError:
        since = None
    return backend, worker, since


def _ms(value: str | None) -> int | None:
    """A stored millisecond timestamp, or None when absent or malformed."""
    try:
        return int(float(value)) if value else None
    except ValueError:
        return None


def _leases(client: Any, key: str) -> dict[str, str]:
    return dict(client.hscan_iter(key, count=1000))


def backend_detail(ctl: Ctl, name: str) -> dict[str, Any]:
    client, keys = ctl.client, ctl.keys
    backends, source = effective_backends(client, keys, ctl.config.backends)
    member = next((b for b in backends if b.name == name), None)
    pipe = client.pipeline(transaction=False)
    pipe.exists(keys.backend(name))
    pipe.hgetall(keys.backend(name))
    pipe.sismember(keys.drained, name)
    pipe.hget(keys.inflight, name)
    pipe.hget(keys.scrape_owners, name)
    exists, metrics, drained, inflight, owner = pipe.execute()
    if member is None and not exists and inflight is None and not drained:
        known = ", ".join(b.name for b in backends) or "none"
        raise NotFound(f"no backend named {name!r} in pool {keys.pool} (backends: {known})")
    now = redis_now_ms(client)
    workers = {m: int(d) for m, d in client.zrange(keys.workers, 0, -1, withscores=True)}
    leases = []
    for request_id, value in _leases(client, keys.leases).items():
        backend, worker, since = _lease_parts(value)
        if backend != name:
            continue
        leases.append(
            {
                "request_id": request_id,
                "worker": worker,
                "age_ms": None if since is None else now - since,
                "worker_alive": workers.get(worker, 0) >= now,
            }
        )
    leases.sort(key=lambda lease: -(lease["age_ms"] or 0))
    by_worker: dict[str, int] = {}
    for lease in leases:
        by_worker[lease["worker"]] = by_worker.get(lease["worker"], 0) + 1
    scraped_at = metrics.get(F.SCRAPED_AT)
    models_at = metrics.get(F.MODELS_AT)
    owner_id, _, owner_deadline = (owner or "").partition(" ")
    return {
        "name": name,
        "member": member is not None,
        "membership": source,
        "url": member.url if member else metrics.get(F.URL),
        "weight": member.weight if member else None,
        "drained": bool(drained),
        "inflight": int(inflight or 0),
        "leases": len(leases),
        "leases_by_worker": by_worker,
        "leases_of_dead_workers": sum(1 for lease in leases if not lease["worker_alive"]),
        "oldest_leases": leases[:10],
        "metrics_age_ms": now - _ms(scraped_at) if _ms(scraped_at) is not None else None,
        "models_age_ms": now - _ms(models_at) if _ms(models_at) is not None else None,
        "stale_after_ms": ctl.config.collector.stale_after_ms,
        "scrape_owner": (
            {
                "collector": owner_id,
                "expires_in_ms": _ms(owner_deadline) - now
                if _ms(owner_deadline) is not None
                else None,
            }
            if owner
            else None
        ),
        "metrics": dict(sorted(metrics.items())),
    }


def _render_backend(data: dict[str, Any]) -> str:
    lines = [
        f"backend {data['name']}  {data['url'] or '(no URL known)'}  weight {fmt_num(data['weight'])}"
        + ("" if data["member"] else "  NOT A MEMBER (leftover state)"),
        f"drained: {'yes' if data['drained'] else 'no'}   in flight: {data['inflight']} "
        f"({data['leases']} leases, {data['leases_of_dead_workers']} held by dead workers)",
        f"metrics age: {fmt_age(data['metrics_age_ms']) if data['metrics_age_ms'] is not None else 'never scraped'}"
        f" (stale after {fmt_age(data['stale_after_ms'])})   models age: {fmt_age(data['models_age_ms'])}",
    ]
    owner = data["scrape_owner"]
    lines.append(
        f"scraped by: {owner['collector']} (claim expires in {fmt_age(owner['expires_in_ms'])})"
        if owner
        else "scraped by: no collector claims it"
    )
    if data["metrics"]:
        lines += ["", table(["FIELD", "VALUE"], sorted(data["metrics"].items()))]
    if data["leases_by_worker"]:
        lines += ["", table(["WORKER", "LEASES"], sorted(data["leases_by_worker"].items()))]
    if data["oldest_leases"]:
        lines += [
            "",
            "oldest leases:",
            table(
                ["REQUEST", "WORKER", "AGE", "WORKER ALIVE"],
                [
                    [
                        lease["request_id"],
                        lease["worker"],
                        fmt_age(lease["age_ms"]),
                        "yes" if lease["worker_alive"] else "NO",
                    ]
                    for lease in data["oldest_leases"]
                ],
                indent="  ",
            ),
        ]
    return "\n".join(lines)


@inspect_group.command("backend")
@click.argument("name")
@json_option
@pass_ctl
def inspect_backend(ctl: Ctl, name: str, as_json: bool) -> None:
    """One backend: membership, drained flag, leases (by worker, oldest first),
    every field the collector wrote and its age, the collector that scrapes it.

    Exits 3 when the pool has no backend NAME.
    """
    emit(backend_detail(ctl, name), as_json, _render_backend)


# request ----------------------------------------------------------------------------------
def routing_state(ctl: Ctl, model: str) -> dict[str, Any]:
    from llmlbd.policy.explain import eligibility
    from llmlbd.state.snapshot import read_pool

    client, keys, config = ctl.client, ctl.keys, ctl.config
    backends, source = effective_backends(client, keys, config.backends)
    states = read_pool(client, keys, backends)
    cap = config.lb_config.maxRequestCount
    stale_after = config.collector.stale_after_ms
    rows = []
    for state in states:
        rows.append(
            {
                "name": state.name,
                "weight": state.backend.weight,
                "inflight": state.inflight,
                "drained": state.drained,
                "health": state.metrics.get(F.HEALTH) or F.HEALTH_UNKNOWN,
                "models": state.names(F.MODELS),
                "metrics_age_ms": state.metrics_age_ms,
                "stale": state.metrics_age_ms is None or state.metrics_age_ms > stale_after,
                "eligible": eligibility(state, model, cap) or "yes",
            }
        )
    pipe = client.pipeline(transaction=False)
    pipe.hlen(keys.leases)
    pipe.zcard(keys.workers)
    pipe.get(keys.rr_counter)
    leases, workers, rr = pipe.execute()
    return {
        "pool": keys.pool,
        "policy": config.lb_policy,
        "membership": source,
        "model": model,
        "max_request_count": cap,
        "stale_after_ms": stale_after,
        "lease_ttl_s": config.server.lease_ttl_s,
        "leases": leases,
        "workers": workers,
        "round_robin_counter": int(rr) if rr is not None else None,
        "keys": {
            "inflight": keys.inflight,
            "drained": keys.drained,
            "leases": keys.leases,
            "workers": keys.workers,
            "members": keys.members,
            "backend": keys.backend("<name>"),
        },
        "backends": rows,
    }


def lease_detail(ctl: Ctl, request_id: str) -> dict[str, Any]:
    client, keys = ctl.client, ctl.keys
    value = client.hget(keys.leases, request_id)
    if value is None:
        raise NotFound(
            f"request {request_id!r} holds no lease in pool {keys.pool} "
            "(finished, never reserved, or reaped)"
        )
    backend, worker, since = _lease_parts(value)
    now = redis_now_ms(client)
    deadline = client.zscore(keys.workers, worker)
    return {
        "request_id": request_id,
        "backend": backend,
        "worker": worker,
        "replica": replica_of(worker),
        "age_ms": None if since is None else now - since,
        "worker_alive": deadline is not None and deadline >= now,
        "worker_expires_in_ms": None if deadline is None else int(deadline) - now,
    }


def _render_routing(data: dict[str, Any]) -> str:
    cap = data["max_request_count"]
    lines = [
        f"pool {data['pool']}   policy {data['policy']}   model {data['model'] or '(any)'}   "
        f"cap {cap or 'none'} per backend   {data['leases']} leases, {data['workers']} workers",
        f"backends from {SOURCES[data['membership']]};",
        "what the acquire script reads for each:",
        "",
        table(
            [
                "BACKEND",
                "WEIGHT",
                "INFLIGHT",
                "DRAINED",
                "HEALTH",
                "MODELS",
                "METRICS AGE",
                "ELIGIBLE",
            ],
            [
                [
                    r["name"],
                    fmt_num(r["weight"]),
                    r["inflight"],
                    "yes" if r["drained"] else "no",
                    r["health"],
                    fmt_list(r["models"]),
                    fmt_age(r["metrics_age_ms"]) + (" STALE" if r["stale"] else ""),
                    r["eligible"],
                ]
                for r in data["backends"]
            ],
        ),
    ]
    return "\n".join(lines)


def _render_lease(data: dict[str, Any]) -> str:
    alive = "alive" if data["worker_alive"] else "DEAD (the lease will be reaped)"
    return (
        f"request {data['request_id']} -> backend {data['backend']}\n"
        f"held by worker {data['worker']} on {data['replica']} ({alive}) "
        f"for {fmt_age(data['age_ms'])}"
    )


@inspect_group.command("request")
@click.argument("request_id", required=False)
@click.option("--model", default="", help="Show eligibility for this model.")
@json_option
@pass_ctl
def inspect_request(ctl: Ctl, request_id: str | None, model: str, as_json: bool) -> None:
    """The state a routing decision reads now, or the lease of REQUEST_ID.

    Without REQUEST_ID: for each backend, exactly what the acquire scripts
    read (in-flight count, weight, drained flag, health, models) and whether
    it could take a request (for --model), plus the cap and lease counts.
    With REQUEST_ID (llmlbd's id of a request in flight, as listed by
    `inspect backend` and logged as request_id): the backend and worker
    holding its lease, and whether that worker is alive. Exits 3 when the
    request holds no lease.
    """
    if request_id:
        emit(lease_detail(ctl, request_id), as_json, _render_lease)
    else:
        emit(routing_state(ctl, model), as_json, _render_routing)


# prefix -----------------------------------------------------------------------------------
def prefix_usage(ctl: Ctl, sample: int, batch: int = 1000) -> dict[str, Any]:
    """Count prefix keys and each backend's entries in them with SCAN (never KEYS);
    estimate memory with MEMORY USAGE on a sample."""
    client, keys = ctl.client, ctl.keys
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
    backends, _ = effective_backends(client, keys, ctl.config.backends)
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


def _render_prefix(data: dict[str, Any]) -> str:
    from llmlbd.ctl.output import fmt_bytes

    lines = [f"{data['keys']} prefix keys in pool {data['pool']} ({data['pattern']})"]
    if data["keys"]:
        lines.append(
            f"memory: about {fmt_bytes(data['estimated_bytes'])} "
            f"({data['avg_bytes']:.0f} bytes/key, MEMORY USAGE on {data['sampled']} keys)"
        )
        if data["sampled_without_ttl"]:
            lines.append(f"WARNING: {data['sampled_without_ttl']} sampled keys have no TTL")
    names = sorted(set(data["keys_by_backend"]) | set(data["owned_index_by_backend"]))
    if names:
        lines += [
            "",
            table(
                ["BACKEND", "ENTRIES", "OWNED INDEX"],
                [
                    [n, data["keys_by_backend"].get(n, 0), data["owned_index_by_backend"].get(n)]
                    for n in names
                ],
            ),
        ]
    return "\n".join(lines)


@inspect_group.command("prefix")
@click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="Keys measured with MEMORY USAGE to estimate the total.",
)
@json_option
@pass_ctl
def inspect_prefix(ctl: Ctl, sample: int, as_json: bool) -> None:
    """Prefix-affinity keys (prefix_cache policy): how many prefixes each
    backend holds, and about how much memory the keys use.

    Walks the keys with SCAN (never KEYS, so Redis is never blocked) and
    measures MEMORY USAGE on a sample. OWNED INDEX is the size of each
    backend's capped index of its prefixes.
    """
    emit(prefix_usage(ctl, sample), as_json, _render_prefix)
