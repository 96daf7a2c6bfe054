"""`llmlbctl`: read (and carefully change) a pool's shared state in Redis.

Every subcommand lives in its own module and is imported only when it runs,
so `llmlbctl --help` is fast and nothing here imports gevent or gunicorn
(tests/ctl/test_imports.py checks it). The root callback records the global
options; the config is loaded and Redis connected on first use (see
`llmlbd.ctl.context.Ctl`), so `--help` works on every subcommand whatever
the config says.
"""

from __future__ import annotations

import click

from llmlbd import __version__
from llmlbd._lazy import LazyGroup
from llmlbd.ctl.context import Ctl

__all__ = ["main", "CtlGroup"]


class CtlGroup(LazyGroup):
    """The root group: a Redis failure anywhere below becomes exit 1 with one clear line."""

    def invoke(self, ctx: click.Context) -> object:
        from llmlbd.exits import RuntimeProblem
        from llmlbd.state.client import UNREACHABLE, AuthenticationError, ResponseError

        try:
            return super().invoke(ctx)
        except AuthenticationError as exc:
            raise RuntimeProblem(f"Redis refused our credentials ({_where(ctx)}): {exc}") from None
        except UNREACHABLE as exc:
            raise RuntimeProblem(
                f"cannot reach Redis at {_where(ctx)}: {exc or type(exc).__name__}"
            ) from None
        except ResponseError as exc:
            raise RuntimeProblem(f"Redis answered an error ({_where(ctx)}): {exc}") from None


def _where(ctx: click.Context) -> str:
    obj = ctx.find_object(Ctl)
    try:
        return obj.describe_redis() if obj is not None else "?"
    except click.ClickException:
        return "?"


@click.group(
    cls=CtlGroup,
    lazy_subcommands={
        "status": "llmlbd.ctl.status:status_command",
        "watch": "llmlbd.ctl.watch:watch_command",
        "inspect": "llmlbd.ctl.inspect:inspect_group",
        "explain": "llmlbd.ctl.explain:explain_command",
        "drain": "llmlbd.ctl.drain:drain_command",
        "undrain": "llmlbd.ctl.drain:undrain_command",
        "backend": "llmlbd.ctl.backend:backend_group",
    },
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="LLMLBD_CONFIG",
    show_envvar=True,
    help="YAML config of the pool [default: /etc/llmlbd/llmlbd.yaml if it exists, "
    "else the built-in defaults].",
)
@click.option(
    "--redis-url",
    envvar="LLMLBD_REDIS_URL",
    show_envvar=True,
    help="Redis to read instead of the config's (needed with an embedded Redis "
    "unless its socket is found in the runtime directory).",
)
@click.option("--pool", help="Pool name instead of the config's server.pool.")
@click.version_option(__version__, prog_name="llmlbctl")
@click.pass_context
def main(
    ctx: click.Context, config_path: str | None, redis_url: str | None, pool: str | None
) -> None:
    """Operate an llmlbd pool: status, inspect, explain, drain, membership.

    Reads and writes the pool's state in Redis, the same state every proxy
    worker and replica reads, so a change here (drain, backend add) reaches
    the whole fleet within a second. Read commands take --json.

    Exit codes: 0 ok, 1 failure (e.g. Redis unreachable), 2 bad config or
    command line, 3 backend or request not found, 4 no healthy backend.
    """
    ctx.obj = Ctl(config_path=config_path, redis_url=redis_url, pool=pool)
    ctx.call_on_close(ctx.obj.close)
