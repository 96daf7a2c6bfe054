"""`llmlbctl inspect backend|request|prefix`: one part of the shared state, in detail."""

from __future__ import annotations

from typing import Any

import click

from llmlbd.ctl.context import Ctl, pass_ctl
from llmlbd.ctl.members import SOURCES
from llmlbd.ctl.output import emit, fmt_age, fmt_list, fmt_num, fmt_outlier, json_option, table
from llmlbd.ctl.pool import outlier_column, replica_of
from llmlbd.exits import NOT_FOUND
from llmlbd.state import backend_fields as F
from llmlbd.state import inspection as state_reads
from llmlbd.state.members import effective_backends
from llmlbd.state.outlier import outlier_view
from llmlbd.state.prefix_usage import prefix_usage
from llmlbd.state.types import ClaimRecord, parse_ms

__all__ = ["inspect_group"]


class NotFound(click.ClickException):
    exit_code = NOT_FOUND


@click.group("inspect")
def inspect_group() -> None:
    """Show one part of the pool's shared state in detail."""


# backend ----------------------------------------------------------------------------------
def _age(now_ms: int, stamp: str | None) -> int | None:
    at = parse_ms(stamp)
    return None if at is None else now_ms - at


def backend_detail(ctl: Ctl, name: str) -> dict[str, Any]:
    client, keys = ctl.client, ctl.keys
    backends, source = effective_backends(client, keys, ctl.pool.backends)
    member = next((b for b in backends if b.name == name), None)
    record = state_reads.backend_record(client, keys, name)
    metrics, owner = record.metrics, record.scrape_owner
    if member is None and not record.exists and record.inflight is None and not record.drained:
        known = ", ".join(b.name for b in backends) or "none"
        raise NotFound(f"no backend named {name!r} in pool {keys.pool} (backends: {known})")
    now = state_reads.redis_now_ms(client)
    workers = state_reads.heartbeat_deadlines(client, keys.workers)
    leases: list[dict[str, Any]] = []
    for request_id, held in state_reads.leases(client, keys).items():
        if held.backend != name:
            continue
        leases.append(
            {
                "request_id": request_id,
                "worker": held.worker,
                "age_ms": None if held.since_ms is None else now - held.since_ms,
                "worker_alive": workers.get(held.worker, 0) >= now,
            }
        )
    leases.sort(key=lambda lease: -(lease["age_ms"] or 0))
    by_worker: dict[str, int] = {}
    for lease in leases:
        by_worker[lease["worker"]] = by_worker.get(lease["worker"], 0) + 1
    scraped_at = metrics.get(F.SCRAPED_AT)
    models_at = metrics.get(F.MODELS_AT)
    claim = ClaimRecord.parse(owner or "")
    ejected, records = outlier_view(client, keys)
    return {
        "name": name,
        "member": member is not None,
        "membership": source,
        "url": member.url if member else metrics.get(F.URL),
        "weight": member.weight if member else None,
        "drained": record.drained,
        "outlier": outlier_column(name, now, ejected, records),
        "inflight": record.inflight or 0,
        "leases": len(leases),
        "leases_by_worker": by_worker,
        "leases_of_dead_workers": sum(1 for lease in leases if not lease["worker_alive"]),
        "oldest_leases": leases[:10],
        "metrics_age_ms": _age(now, scraped_at),
        "models_age_ms": _age(now, models_at),
        "stale_after_ms": ctl.config.collector.stale_after_ms,
        "scrape_owner": (
            {
                "collector": claim.collector,
                "expires_in_ms": None if claim.deadline_ms is None else claim.deadline_ms - now,
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
        f"drained: {'yes' if data['drained'] else 'no'}   "
        f"outlier: {fmt_outlier(data['outlier']) or 'no failure since the last success'}   "
        f"in flight: {data['inflight']} "
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
    from llmlbd.policy.eligibility import ineligible
    from llmlbd.state.snapshot import read_pool

    client, keys, config, pool = ctl.client, ctl.keys, ctl.config, ctl.pool
    backends, source = effective_backends(client, keys, pool.backends)
    states = read_pool(client, keys, backends)
    cap = pool.lb_config.maxRequestCount
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
                "eligible": ineligible(state, model, cap) or "yes",
            }
        )
    counters = state_reads.pool_counters(client, keys)
    return {
        "pool": keys.pool,
        "policy": pool.lb_policy,
        "membership": source,
        "model": model,
        "max_request_count": cap,
        "stale_after_ms": stale_after,
        "lease_ttl_s": config.server.lease_ttl_s,
        "leases": counters.leases,
        "workers": counters.workers,
        "round_robin_counter": counters.rotation,
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
    client = ctl.client
    lease = None
    pools = ctl.view_pools()  # without --pool: look in every pool
    for pool in pools:
        keys = ctl.use(pool).keys
        lease = state_reads.lease_of(client, keys, request_id)
        if lease is not None:
            break
    if lease is None:
        where = f"pool {pools[0].name}" if len(pools) == 1 else "any pool"
        raise NotFound(
            f"request {request_id!r} holds no lease in {where} "
            "(finished, never reserved, or reaped)"
        )
    now = state_reads.redis_now_ms(client)
    deadline = state_reads.worker_deadline(client, keys, lease.worker)
    return {
        "request_id": request_id,
        "pool": keys.pool,
        "backend": lease.backend,
        "worker": lease.worker,
        "replica": replica_of(lease.worker),
        "age_ms": None if lease.since_ms is None else now - lease.since_ms,
        "worker_alive": deadline is not None and deadline >= now,
        "worker_expires_in_ms": None if deadline is None else deadline - now,
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
        f"request {data['request_id']} -> backend {data['backend']} (pool {data['pool']})\n"
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
        return
    pool = ctl.pool_for_model(model) if model else ctl.pool
    if pool is None:
        from llmlbd.policy.pools import no_pool

        raise NotFound(no_pool(model, ctl.config.pool_map()).message)
    emit(routing_state(ctl.use(pool), model), as_json, _render_routing)


# prefix -----------------------------------------------------------------------------------
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
    backends, _ = effective_backends(ctl.client, ctl.keys, ctl.pool.backends)
    emit(prefix_usage(ctl.client, ctl.keys, backends, sample), as_json, _render_prefix)
