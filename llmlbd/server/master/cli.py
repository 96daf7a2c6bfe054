"""`llmlbd start`: the proxy in the foreground, ready for systemd (Type=notify)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from llmlbd.exits import AddressInUse, ConfigProblem, RuntimeProblem

if TYPE_CHECKING:
    from llmlbd.config.loader import Config

# This module runs in the gunicorn master: it imports no HTTP or Redis client
# (see llmlbd.server.master.app for why).

__all__ = ["start_command", "runtime_directory"]

# The model the demo backends serve (what the README's first curl asks for).
DEMO_MODEL = "sim-llama"


def runtime_directory(explicit: str | None) -> Path:
    """systemd's RUNTIME_DIRECTORY, else $XDG_RUNTIME_DIR/llmlbd, else /tmp/llmlbd-<uid>."""
    if explicit:
        path = Path(explicit)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "llmlbd"
    else:
        path = Path(f"/tmp/llmlbd-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def check_bind_free(bind: str) -> None:
    """Raise AddressInUse when HOST:PORT is taken, before anything else starts.

    gunicorn would retry the bind five times, log a line each, and leave the
    embedded Redis and demo backends started for nothing; one clear line is better.
    """
    import errno
    import socket

    if bind.startswith("unix:"):
        return  # gunicorn replaces a stale socket file itself
    host, _, port = bind.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return  # gunicorn reports anything else in its own words
            raise AddressInUse(
                "llmlbd",
                bind,
                "another llmlbd (or another server) is running there; stop it or set "
                "server.bind (or --bind) to a free address",
            ) from None


def secrets_in(config: Config) -> list[str]:
    """The config keys that hold a secret (never their values)."""
    found = [
        path
        for path, value in (
            ("redis.password", config.redis.password),
            ("lb_config.password", config.lb_config.password),
            ("redis.url", "@" in (config.redis.url or "") and ":" in (config.redis.url or "")),
        )
        if value
    ]
    found += [f"backends[{b.name}].api_key" for b in config.all_backends() if b.api_key]
    return found


def warn_if_secrets_readable(config: Config) -> None:
    """A config file that holds a secret must not be readable by group or others."""
    import stat

    import structlog

    if not config.path:
        return
    try:
        mode = os.stat(config.path).st_mode
    except OSError:
        return
    secrets = secrets_in(config)
    if secrets and mode & (stat.S_IRWXG | stat.S_IRWXO):
        structlog.get_logger("llmlbd.master").warning(
            "config_file_readable_by_others",
            path=config.path,
            mode=oct(stat.S_IMODE(mode)),
            holds=secrets,
            hint=f"chmod 600 {config.path}, or move the secrets to an environment file",
        )


def _all_healthy(ports: list[int]) -> bool:
    """GET /health on each local port with a bare socket (no HTTP library in the master)."""
    import socket

    for port in ports:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
                if not sock.recv(64).startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
                    return False
        except OSError:
            return False
    return True


@click.command("start")
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="LLMLBD_CONFIG",
    show_envvar=True,
    help="YAML config file. Without one: embedded Redis and simulated backends.",
)
@click.option("-b", "--bind", help="HOST:PORT or unix:PATH to listen on (overrides server.bind).")
@click.option(
    "-w",
    "--workers",
    type=click.IntRange(min=1),
    help="Number of worker processes (overrides server.workers).",
)
@click.option(
    "--runtime-dir",
    envvar="RUNTIME_DIRECTORY",
    help="Where sockets, the embedded Redis and metrics files live "
    "[default: $XDG_RUNTIME_DIR/llmlbd or /tmp/llmlbd-UID].",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "console"]),
    help="Log lines as JSON or for people; auto: console on a terminal, JSON under "
    "systemd or when piped (overrides logging.format) [default: auto].",
)
def start_command(
    config_path: str | None,
    bind: str | None,
    workers: int | None,
    runtime_dir: str | None,
    log_format: str | None,
) -> None:
    """Run the proxy (gunicorn master + gevent workers) in the foreground.

    Stops gracefully on SIGTERM (in-flight requests finish within
    server.graceful_timeout_s); SIGHUP re-reads the config file and replaces the
    workers without dropping a stream (an invalid file is logged and ignored).
    """
    import yaml

    from llmlbd.config import Backend, ConfigError, load_config

    try:
        overrides = {
            "server__bind": bind,
            "server__workers": workers,
            "logging__format": log_format,
        }
        config = load_config(config_path).with_overrides(**overrides)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None

    check_bind_free(config.server.bind)
    if config.server.api_keys_file:
        from llmlbd.server.auth import read_keys

        try:
            read_keys(config.server.api_keys_file)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise ConfigProblem(f"server.api_keys_file: {exc}") from None

    from llmlbd import logs

    # Resolved once here, so the workers and the collector child log the same way.
    config.logging.format = logs.configure(config.logging.level, config.logging.format)
    warn_if_secrets_readable(config)

    run_dir = runtime_directory(runtime_dir)
    prometheus_dir = run_dir / "prometheus"
    shutil.rmtree(prometheus_dir, ignore_errors=True)
    prometheus_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prometheus_dir)

    # Imported after PROMETHEUS_MULTIPROC_DIR is set: metrics are created in multiprocess mode.
    from llmlbd.embedded import EMBEDDED_URL_ENV, EmbeddedRedis, EmbeddedRedisError
    from llmlbd.server.master.app import LLMLBApplication
    from llmlbd.server.master.children import Child, CommandChild, RedisChild

    children: list[Child] = []
    demo_models: list[str] = []  # configured backends' models are known only after fork
    try:
        target = config.redis_target()
        if target.embedded:
            redis_child = RedisChild(EmbeddedRedis(runtime_dir=str(run_dir / "redis")))
            redis_child.start()
            children.append(redis_child)
            os.environ[EMBEDDED_URL_ENV] = redis_child.server.url
        if config.uses_demo_backends:
            count, base = config.demo.backends, config.demo.base_port
            urls = [f"http://127.0.0.1:{base + i}" for i in range(count)]
            sims = CommandChild(
                "demo-backends",
                [
                    sys.executable,
                    "-m",
                    "llmlbd.sim",
                    "--count",
                    str(count),
                    "--base-port",
                    str(base),
                    "--model",
                    DEMO_MODEL,
                ],
                ready=lambda: _all_healthy([base + i for i in range(count)]),
            )
            sims.start()
            children.append(sims)
            config.backends = [Backend(f"sim-{i}", url) for i, url in enumerate(urls)]
            demo_models = [DEMO_MODEL]
        collector_on = config.collector.enabled
        if collector_on is None:
            collector_on = target.embedded
        if collector_on:
            effective = run_dir / "effective-config.yaml"
            effective.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
            # Several processes split the backends through the ownership leases;
            # each needs a metrics port of its own (9101, 9102, ...).
            port = config.collector.metrics_port
            count = config.collector.processes or default_collector_processes()
            for i in range(count):
                collector = CommandChild(
                    "collector" if count == 1 else f"collector-{i + 1}",
                    [sys.executable, "-m", "collector", "--config", str(effective)]
                    + ["--metrics-port", str(port + i if port else 0)],
                )
                collector.start()
                children.append(collector)
    except (EmbeddedRedisError, RuntimeError, OSError) as exc:
        for child in reversed(children):
            child.stop()
        raise RuntimeProblem(str(exc)) from None

    LLMLBApplication(config, children, overrides=overrides, models=demo_models).run()


def default_collector_processes() -> int:
    """Half the cores, 1 to 8: the other half is the proxy workers' and Redis's.

    One process reads ~256 backends at 10 Hz with one core (docs/collector.md);
    past 8, every extra process mostly adds claim and reap calls to Redis.
    """
    return max(1, min(8, (os.cpu_count() or 2) // 2))
