"""The ``llmlbd`` command: start the proxy, the collector, simulated backends."""

from __future__ import annotations

import click

from llmlbd import __version__
from llmlbd._lazy import LazyGroup


@click.group(
    cls=LazyGroup,
    lazy_subcommands={
        "start": "llmlbd.server.master.cli:start_command",
        "config": "llmlbd.config.cli:config_group",
        "collector": "collector.cli:collector_command",
        "sim": "llmlbd.sim.cli:sim_command",
    },
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="llmlbd")
def main() -> None:
    """llmlbd: an LLM-aware load balancer for vLLM and SGLang fleets.

    Run `llmlbd start` for the proxy (on an embedded Redis and simulated
    backends when the config names none), `llmlbd collector` for the metrics
    collector and `llmlbd sim` for simulated vLLM servers.
    """
