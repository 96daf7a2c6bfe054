"""`llmlbd config check|show`: validate a config file, print its effective values."""

from __future__ import annotations

from typing import Any

import click

from llmlbd.exits import ConfigProblem

__all__ = ["config_group", "redact"]

# Keys whose values never reach the terminal.
SECRET_KEYS = frozenset({"password", "api_key"})
REDACTED = "***"


def redact(data: Any) -> Any:
    """A copy of *data* with passwords (keys and URL user-info) replaced by ***."""
    from llmlbd.config.names import redact_url

    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key in SECRET_KEYS and value is not None:
                out[key] = REDACTED
            elif isinstance(value, str) and "://" in value:
                out[key] = redact_url(value)
            else:
                out[key] = redact(value)
        return out
    if isinstance(data, list):
        return [redact(item) for item in data]
    return data


def _load(path: str) -> Any:
    from llmlbd.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None


@click.group("config")
def config_group() -> None:
    """Check a config file, or print the values llmlbd would use."""


@config_group.command("check")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False))
def check_command(path: str) -> None:
    """Validate FILE: print OK and a summary, or the error as FILE:LINE: key: problem.

    Exits 0 when valid, 2 when not.
    """
    config = _load(path)
    target = config.redis_target()
    redis = (
        "embedded (started by `llmlbd start`)"
        if target.embedded
        else f"{target.mode} via {target.source}"
    )
    if config.multi_pool:
        pools = "; ".join(
            f"{pool.name}{' (default)' if pool.default else ''}: policy {pool.lb_policy}, "
            f"{len(pool.backends)} backend(s), models {', '.join(pool.models) or '-'}"
            for pool in config.pools
        )
        click.echo(f"OK: {path}: {len(config.pools)} pools: {pools}; Redis {redis}")
        return
    backends = (
        f"{len(config.backends)} backend(s)"
        if config.backends
        else f"no backends: {config.demo.backends} simulated demo backends"
    )
    click.echo(
        f"OK: {path}: policy {config.lb_policy}, {backends}, pool "
        f"{config.server.pool}, Redis {redis}"
    )


@config_group.command("show")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
@click.option("--explicit", is_flag=True, help="Only the keys FILE sets (no defaults).")
def show_command(path: str, as_json: bool, explicit: bool) -> None:
    """Print the effective config of FILE: every key with its default filled
    in, as YAML (passwords shown as ***), except the keys of policies other
    than FILE's. Exits 2 when FILE is invalid.
    """
    import json

    import yaml

    from llmlbd.config.settings import SETTINGS

    config = _load(path)
    data = config.to_dict()
    # Keys of other policies cannot be set with this one: leave them out, so
    # that the output is itself a valid config.
    for setting in SETTINGS:
        if setting.policies and config.lb_policy not in setting.policies:
            data[setting.section].pop(setting.key, None)
    if explicit:
        kept: dict[str, Any] = {}
        for dotted in sorted(config.explicit):
            section, key = dotted.split(".", 1)
            kept.setdefault(section, {})[key] = data[section][key]
        if "lb_policy" in _top_keys(path):
            kept["lb_policy"] = data["lb_policy"]
        if config.backends:
            kept["backends"] = data["backends"]
        if config.multi_pool:
            kept["pools"] = data["pools"]
        data = kept
    data = redact(data)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(
            f"# effective config of {path}"
            + (" (explicit keys only)" if explicit else " (defaults filled in)")
        )
        click.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip())


def _top_keys(path: str) -> set[str]:
    import yaml

    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    return set(data) if isinstance(data, dict) else set()
