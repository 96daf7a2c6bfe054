"""`llmlbctl status`: the pool at a glance."""

from __future__ import annotations

from typing import Any

import click

from llmlbd import exits
from llmlbd.ctl.context import Ctl, pass_ctl
from llmlbd.ctl.members import SOURCES
from llmlbd.ctl.output import (
    emit,
    fmt_age,
    fmt_list,
    fmt_num,
    fmt_outlier,
    fmt_pct,
    json_option,
    table,
)
from llmlbd.ctl.pool import pool_status

__all__ = ["status_command", "render_status", "render_pools"]


def render_status(data: dict[str, Any]) -> str:
    redis = data["redis"]
    models = ", ".join(data.get("models") or [])
    if data.get("default"):
        models += (", " if models else "") + "every model no other pool takes"
    lines = [
        f"pool {data['pool']}   policy {data['policy']}   "
        + (f"models {models}   " if models else "")
        + f"backends {data['serving']}/{len(data['backends'])} serving   "
        f"in flight {sum(row['inflight'] for row in data['backends'])} "
        f"({data['leases']} leases)",
        f"redis {redis['url']}  role {redis['role']}  version {redis['version']}  "
        f"latency {redis['latency_ms']:.2f}ms",
        f"membership: {SOURCES[data['membership']]}",
        "",
    ]
    rows = []
    for row in data["backends"]:
        age = fmt_age(row["metrics_age_ms"]) if row["metrics_age_ms"] is not None else "never"
        rows.append(
            [
                row["name"],
                row["health"],
                "DRAINED" if row["drained"] else "",
                fmt_outlier(row["outlier"]),
                row["inflight"],
                fmt_num(row["waiting"]),
                fmt_num(row["running"]),
                fmt_pct(row["kv_usage"]),
                age + (" STALE" if row["stale"] else ""),
                fmt_num(row["weight"]),
                fmt_list(row["models"]),
            ]
        )
    if rows:
        lines.append(
            table(
                [
                    "BACKEND",
                    "HEALTH",
                    "DRAINED",
                    "OUTLIER",
                    "INFLIGHT",
                    "WAITING",
                    "RUNNING",
                    "KV",
                    "METRICS AGE",
                    "WEIGHT",
                    "MODELS",
                ],
                rows,
            )
        )
    else:
        lines.append(
            "no backend: the config lists none, the members hash does not exist and "
            "no backend state was found in Redis"
        )
    if data["drained_not_members"]:
        lines.append(f"drained but not members: {', '.join(data['drained_not_members'])}")
    workers, collectors = data["workers"], data["collectors"]
    lines.append("")
    replicas = ", ".join(f"{r['host']} ({r['workers']})" for r in data["replicas"]) or "none"
    lines.append(
        f"proxy workers: {len(workers['live'])} live on {len(data['replicas'])} "
        f"replica(s): {replicas}"
        + (f"; {len(workers['dead'])} expired, not yet reaped" if workers["dead"] else "")
    )
    if collectors["live"]:
        names = ", ".join(c["id"] for c in collectors["live"])
        lines.append(f"collectors: {len(collectors['live'])} live: {names}")
    else:
        lines.append("collectors: NONE live: metrics and health are not being refreshed")
    if collectors["dead"]:
        lines.append(
            f"  {len(collectors['dead'])} expired: "
            + ", ".join(c["id"] for c in collectors["dead"])
        )
    if data["serving"] == 0:
        lines.append("")
        lines.append(
            "NO BACKEND CAN TAKE REQUESTS (every backend is down, drained or ejected): "
            "clients get 503"
        )
    return "\n".join(lines)


@click.command("status")
@json_option
@pass_ctl
def status_command(ctl: Ctl, as_json: bool) -> None:
    """Show the pool: backends (health, drained, outlier ejection, load, KV use, metrics
    age, models),
    the policy, live proxy workers and replicas, collectors, Redis role and latency.
    With several pools and no --pool, every pool (JSON: {"pools": [...]}).

    Exits 4 when no backend of a shown pool can take requests (all down, drained or
    ejected).
    """
    pools = [pool_status(ctl.use(pool)) for pool in ctl.view_pools()]
    if len(pools) == 1:
        emit(pools[0], as_json, render_status)
    else:
        emit({"pools": pools}, as_json, render_pools)
    if any(data["serving"] == 0 for data in pools):
        raise SystemExit(exits.UNHEALTHY)


def render_pools(data: dict[str, Any]) -> str:
    """Several pools (a config with `pools:` and no --pool): one status after the other."""
    return "\n\n".join(render_status(pool) for pool in data["pools"])
