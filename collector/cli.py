"""``llmlbd collector``: run the collector daemon, or scrape once and print.

This module imports only click at import time: gevent must patch the
process before sockets, threads or Redis are imported, and ``llmlbd
--help`` must stay cheap.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

__all__ = ["collector_command"]


def patch_for_gevent() -> None:
    """Make sockets, threads and sleeps cooperative (``--concurrency gevent``).

    Not the default: measured with 256 backends at 10 Hz, greenlets use
    less CPU than OS threads but every backend shares one hub, and the
    worst-case metrics age was 2-3x the threads' (docs/collector.md,
    Benchmark). Done here, in the process entry point, never at import time
    of a shared module.
    """
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()


@click.command("collector", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="LLMLBD_CONFIG",
    help="YAML config file (default: built-in defaults).",
)
@click.option(
    "--id",
    "collector_id",
    default=None,
    help="This collector's id in Redis (default: host:pid:random).",
)
@click.option(
    "--once",
    is_flag=True,
    help="Scrape every backend once, print the fields as JSON, and exit (no Redis).",
)
@click.option(
    "--concurrency",
    type=click.Choice(["threads", "gevent"]),
    default="threads",
    show_default=True,
    help="One OS thread per backend, or one greenlet.",
)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Override collector.metrics_port (0 turns the own /metrics off).",
)
def collector_command(
    config_path: str | None,
    collector_id: str | None,
    once: bool,
    concurrency: str,
    metrics_port: int | None,
) -> None:
    """Scrape every backend's /metrics and health into Redis (the collector daemon).

    Runs until SIGTERM or SIGINT. Several collectors (one per VM) may run at
    once: each backend is scraped by exactly one of them, and a dead one's
    backends move to the others within 2 s.
    """
    if once:
        sys.exit(_once(config_path))
    if concurrency == "gevent":
        patch_for_gevent()
    from collector.daemon import main
    from llmlbd.config import ConfigError

    overrides: dict[str, Any] = {}
    if metrics_port is not None:
        overrides["collector__metrics_port"] = metrics_port
    try:
        sys.exit(main(config_path, collector_id, overrides))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _once(config_path: str | None) -> int:
    from collector.metrics import CollectorMetrics
    from collector.sources import build_plan
    from collector.worker import BackendWorker, Settings
    from llmlbd.config import ConfigError, load_config

    try:
        config = load_config(config_path)
        plan = build_plan(config.collector.metric_map)
    except (ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    from collector.logs import configure

    configure("warning", config.logging.format)  # stdout is for the JSON result only
    settings = Settings.from_config(config.collector)
    metrics = CollectorMetrics()
    result = {}
    for backend in config.all_backends():
        worker = BackendWorker(backend.name, backend.url, settings, plan, lambda u: None, metrics)
        result[backend.name] = worker.once()
    click.echo(json.dumps(result, indent=2, sort_keys=True))
    healthy = all(r.get("health") == "up" for r in result.values())
    return 0 if healthy else 1
