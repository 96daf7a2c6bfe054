"""`llmlbctl backend add|remove|list`: pool membership, shared by every replica.

Membership lives in the pool's `members` HASH (see llmlbd/state/members.py for
the semantics); the config file's `backends` list is only the seed.
"""

from __future__ import annotations

from typing import Any

import click

from llmlbd.config import validators as v
from llmlbd.config.loader import Backend, _backend_name
from llmlbd.ctl.context import Ctl, pass_ctl
from llmlbd.ctl.inspect import NotFound
from llmlbd.ctl.members import SOURCES
from llmlbd.ctl.output import emit, fmt_num, json_option, table
from llmlbd.exits import BAD_CONFIG, RuntimeProblem
from llmlbd.state.inspection import inflight_of
from llmlbd.state.keys import validate_name
from llmlbd.state.members import MembersError, change_members, effective_backends

__all__ = ["backend_group"]


class BadArgument(click.ClickException):
    exit_code = BAD_CONFIG


@click.group("backend")
def backend_group() -> None:
    """Add, remove and list the pool's backends (stored in Redis, seen by every replica)."""


def _members_json(backends: list[Backend], source: str) -> dict[str, Any]:
    return {
        "membership": source,
        "backends": [{"name": b.name, "url": b.url, "weight": b.weight} for b in backends],
    }


def _render_list(data: dict[str, Any]) -> str:
    rows = [[b["name"], b["url"], fmt_num(b["weight"])] for b in data["backends"]]
    return f"{len(rows)} backend(s), from {SOURCES[data['membership']]}\n" + table(
        ["NAME", "URL", "WEIGHT"], rows
    )


@backend_group.command("list")
@json_option
@pass_ctl
def backend_list(ctl: Ctl, as_json: bool) -> None:
    """The pool's members and where the list comes from (Redis or the config's seed).
    With several pools and no --pool, every pool's (JSON: {"pools": {NAME: ...}})."""
    found = {}
    for pool in ctl.view_pools():
        backends, source = effective_backends(ctl.client, ctl.use(pool).keys, pool.backends)
        found[pool.name] = _members_json(backends, source)
    if len(found) == 1:
        emit(next(iter(found.values())), as_json, _render_list)
    else:
        emit({"pools": found}, as_json, _render_pools)


def _render_pools(data: dict[str, Any]) -> str:
    return "\n\n".join(
        f"pool {name}: " + _render_list(members) for name, members in data["pools"].items()
    )


def _same_server_in_other_pools(ctl: Ctl, name: str, url: str) -> None:
    """A backend name is one server in every pool (the loader's rule, kept at run time:
    workers key their connection pools, metrics and logs on it)."""
    chosen = ctl.pool
    if not ctl.config.multi_pool:
        return  # one pool (--pool may name another fleet, configured elsewhere)
    for pool in ctl.config.pools:
        if pool.name == chosen.name:
            continue
        backends, _ = effective_backends(ctl.client, ctl.use(pool).keys, pool.backends)
        for other in backends:
            if other.name == name and other.url != url:
                raise RuntimeProblem(
                    f"backend {name} is {other.url} in pool {pool.name}: a name is one "
                    "server in every pool; use another --name"
                )
    ctl.use(chosen)


@backend_group.command("add")
@click.argument("url")
@click.option("--name", help="Backend name [default: HOST:PORT of the URL].")
@click.option(
    "--weight",
    type=float,
    default=1.0,
    show_default=True,
    help="Relative capacity: least-request compares in-flight/weight.",
)
@click.option(
    "--replace", is_flag=True, help="Change the URL or weight of an existing backend NAME."
)
@json_option
@pass_ctl
def backend_add(
    ctl: Ctl, url: str, name: str | None, weight: float, replace: bool, as_json: bool
) -> None:
    """Add the backend at URL to the pool; every worker and replica starts
    using it within a second.

    The first change writes the config's backends and this one together, so
    nothing is dropped. Exits 2 on a bad URL, name or weight, and 1 when NAME
    exists with another URL or weight (use --replace).
    """
    try:
        url = v.http_url(url)
        name = validate_name("backend name", name or _backend_name(url))
        weight = v.positive_float(weight)
    except ValueError as exc:
        raise BadArgument(str(exc)) from None
    new = Backend(name, url, weight)
    outcome = {"action": "added"}
    _same_server_in_other_pools(ctl, name, url)

    def change(members: dict[str, Backend]) -> dict[str, Backend]:
        old = members.get(name)
        if old == new:
            outcome["action"] = "unchanged"
        elif old is not None:
            if not replace:
                raise MembersError(
                    f"backend {name} exists ({old.url}, weight {old.weight:g}); "
                    "--replace changes it"
                )
            outcome["action"] = "replaced"
        else:
            for other in members.values():
                if other.url == url:
                    raise MembersError(f"{url} is already in the pool as {other.name}")
            outcome["action"] = "added"
        members[name] = new
        return members

    try:
        members = change_members(ctl.client, ctl.keys.members, ctl.pool.backends, change)
    except MembersError as exc:
        raise RuntimeProblem(str(exc)) from None
    data = {
        "action": outcome["action"],
        "backend": {"name": name, "url": url, "weight": weight},
        **_members_json(list(members.values()), "redis"),
    }
    emit(
        data,
        as_json,
        lambda d: (
            f"{d['action']} {name} ({url}, weight {weight:g}); "
            f"the pool has {len(d['backends'])} backend(s)"
        ),
    )


@backend_group.command("remove")
@click.argument("name")
@json_option
@pass_ctl
def backend_remove(ctl: Ctl, name: str, as_json: bool) -> None:
    """Remove backend NAME from the pool: no new request goes to it within a
    second; requests in flight finish. Drain it first (`drain NAME --wait`)
    to see them finish.

    Exits 3 when the pool has no backend NAME, 1 when it is the last one.
    Its drained flag, if any, is kept: a backend added again under the same
    name stays drained until `undrain`.
    """

    def change(members: dict[str, Backend]) -> dict[str, Backend]:
        if name not in members:
            raise NotFound(
                f"no backend named {name!r} in pool {ctl.keys.pool} "
                f"(backends: {', '.join(members) or 'none'})"
            )
        del members[name]
        return members

    try:
        members = change_members(ctl.client, ctl.keys.members, ctl.pool.backends, change)
    except MembersError as exc:
        raise RuntimeProblem(str(exc)) from None
    inflight = inflight_of(ctl.client, ctl.keys, name)
    data = {
        "action": "removed",
        "backend": name,
        "inflight": inflight,
        **_members_json(list(members.values()), "redis"),
    }
    emit(
        data,
        as_json,
        lambda d: (
            f"removed {name}; {inflight} request(s) still in flight on it; "
            f"the pool has {len(d['backends'])} backend(s)"
        ),
    )
