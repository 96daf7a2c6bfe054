"""`llmlbctl drain|undrain NAME`: stop (or resume) sending new requests to a backend.

The whole mechanism is one SADD/SREM on the pool's `drained` SET: every
acquire script checks it atomically with the reservation, and the worker-
local fallback re-reads it every second, so the change reaches every worker
and replica within a second. Requests in flight are not touched.
"""

from __future__ import annotations

import time
from typing import Any

import click

from llmlbd.ctl.context import Ctl, pass_ctl
from llmlbd.ctl.inspect import NotFound
from llmlbd.ctl.output import emit, json_option
from llmlbd.exits import RuntimeProblem
from llmlbd.state.inspection import inflight_of
from llmlbd.state.members import effective_backends, set_drained

__all__ = ["drain_command", "undrain_command"]


def _known(ctl: Ctl) -> list[str]:
    backends, _ = effective_backends(ctl.client, ctl.keys, ctl.pool.backends)
    return [b.name for b in backends]


def _inflight(ctl: Ctl, name: str) -> int:
    return inflight_of(ctl.client, ctl.keys, name)


@click.command("drain")
@click.argument("name")
@click.option("--wait", is_flag=True, help="Wait until no request is in flight on NAME.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="With --wait: give up (exit 1) after this many seconds [default: never].",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=0.5,
    show_default=True,
    help="With --wait: seconds between two checks.",
)
@click.option("--force", is_flag=True, help="Drain NAME even if it is not a backend of the pool.")
@json_option
@pass_ctl
def drain_command(
    ctl: Ctl,
    name: str,
    wait: bool,
    timeout: float | None,
    interval: float,
    force: bool,
    as_json: bool,
) -> None:
    """Send no new request to backend NAME, on every worker and replica,
    within one second; requests in flight finish normally.

    Prints the number of requests still in flight on NAME. With --wait,
    prints progress (to stderr) until it reaches 0. Exits 3 when the pool
    has no backend NAME (unless --force), 1 when --timeout expires first.
    The flag lives in Redis until `llmlbctl undrain NAME`: it survives
    restarts of llmlbd and of the backend.
    """
    names = _known(ctl)
    if name not in names and not force:
        raise NotFound(
            f"no backend named {name!r} in pool {ctl.keys.pool} "
            f"(backends: {', '.join(names) or 'none'}); --force drains it anyway"
        )
    added = set_drained(ctl.client, ctl.keys, name, True)
    inflight = _inflight(ctl, name)
    started = time.monotonic()
    if not wait:
        emit(
            {"backend": name, "drained": True, "was_drained": not added, "inflight": inflight},
            as_json,
            _render_drain,
        )
        return
    if not as_json:
        click.echo(
            f"{name} {'drained' if added else 'was already drained'}; "
            f"waiting for {inflight} request(s) in flight to finish"
        )
    last = None
    while inflight > 0:
        elapsed = time.monotonic() - started
        if timeout is not None and elapsed >= timeout:
            if as_json:
                emit(
                    {
                        "backend": name,
                        "drained": True,
                        "was_drained": not added,
                        "inflight": inflight,
                        "waited_s": round(elapsed, 2),
                        "done": False,
                    },
                    True,
                    _render_drain,
                )
            raise RuntimeProblem(
                f"{inflight} request(s) still in flight on {name} after "
                f"{timeout:g} s (it stays drained)"
            )
        if inflight != last:
            click.echo(f"  {elapsed:6.1f}s  {inflight} in flight", err=True)
            last = inflight
        time.sleep(interval)
        inflight = _inflight(ctl, name)
    waited = round(time.monotonic() - started, 2)
    emit(
        {
            "backend": name,
            "drained": True,
            "was_drained": not added,
            "inflight": 0,
            "waited_s": waited,
            "done": True,
        },
        as_json,
        lambda d: (
            f"{name}: no request in flight after {d['waited_s']:g} s; safe to stop or remove it"
        ),
    )


def _render_drain(data: dict[str, Any]) -> str:
    state = "was already drained" if data["was_drained"] else "drained"
    return (
        f"{data['backend']} {state}: no new requests; {data['inflight']} request(s) still in flight"
    )


@click.command("undrain")
@click.argument("name")
@json_option
@pass_ctl
def undrain_command(ctl: Ctl, name: str, as_json: bool) -> None:
    """Send requests to backend NAME again (on every worker and replica within
    one second). Exits 3 when NAME is neither a backend nor drained.
    """
    removed = set_drained(ctl.client, ctl.keys, name, False)
    if not removed and name not in _known(ctl):
        raise NotFound(f"no backend named {name!r} in pool {ctl.keys.pool}")
    emit(
        {
            "backend": name,
            "drained": False,
            "was_drained": removed,
            "inflight": _inflight(ctl, name),
        },
        as_json,
        lambda d: (
            f"{name} {'undrained' if removed else 'was not drained'}: "
            f"takes new requests; {d['inflight']} in flight"
        ),
    )
