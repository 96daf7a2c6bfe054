"""`llmlbctl watch`: `status`, refreshed until Ctrl-C."""

from __future__ import annotations

import json
import sys
import time

import click

from llmlbd.ctl.context import Ctl, pass_ctl
from llmlbd.ctl.pool import pool_status
from llmlbd.ctl.status import render_pools

__all__ = ["watch_command"]


@click.command("watch")
@click.option(
    "-n",
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Seconds between two refreshes.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many refreshes [default: until Ctrl-C].",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one compact JSON status per line (for piping) instead of a screen.",
)
@pass_ctl
def watch_command(ctl: Ctl, interval: float, count: int | None, as_json: bool) -> None:
    """Show `status` again every INTERVAL seconds; Ctrl-C exits with 0.

    A Redis error does not stop the watch: it is shown, and the next refresh
    tries again.
    """
    from llmlbd.state.client import UNREACHABLE

    shown = 0
    clear = not as_json and sys.stdout.isatty()
    try:
        while count is None or shown < count:
            try:
                pools = [pool_status(ctl.use(pool)) for pool in ctl.view_pools()]
                data = pools[0] if len(pools) == 1 else {"pools": pools}
                text = (
                    json.dumps(data, separators=(",", ":"), default=str)
                    if as_json
                    else render_pools({"pools": pools})
                )
            except UNREACHABLE as exc:
                data = None
                text = (
                    json.dumps({"error": str(exc)})
                    if as_json
                    else f"cannot reach Redis at {ctl.describe_redis()}: {exc}"
                )
            if clear:
                click.clear()
            elif shown and not as_json:
                click.echo()
            if not as_json:
                stamp = time.strftime("%H:%M:%S")
                text = f"{stamp}  every {interval:g}s  (Ctrl-C to quit)\n{text}"
            click.echo(text)
            shown += 1
            if count is None or shown < count:
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
