"""What every `llmlbctl` command shares: the config, the pool's keys, a Redis client.

Everything is built on first use, not in the root callback, so that
`llmlbctl <command> --help` never needs a config or a Redis server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from llmlbd.config.names import redact_url
from llmlbd.exits import ConfigProblem, RuntimeProblem

__all__ = ["Ctl", "pass_ctl", "DEFAULT_CONFIG", "redact_url", "runtime_socket_candidates"]

DEFAULT_CONFIG = "/etc/llmlbd/llmlbd.yaml"


def runtime_socket_candidates() -> list[Path]:
    """Where `llmlbd start` puts its embedded Redis socket, most specific first."""
    dirs = []
    if os.environ.get("RUNTIME_DIRECTORY"):
        dirs.append(Path(os.environ["RUNTIME_DIRECTORY"]))
    dirs.append(Path("/run/llmlbd"))
    if os.environ.get("XDG_RUNTIME_DIR"):
        dirs.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "llmlbd")
    dirs.append(Path(f"/tmp/llmlbd-{os.getuid()}"))
    return [d / "redis" / "redis.sock" for d in dirs]


class Ctl:
    """The global options of one `llmlbctl` run and what is built from them."""

    def __init__(
        self, config_path: str | None = None, redis_url: str | None = None, pool: str | None = None
    ) -> None:
        self.config_path = config_path
        self.redis_url_option = redis_url
        self.pool_option = pool
        self._pool: Any = None
        self._config: Any = None
        self._keys: Any = None
        self._client: Any = None
        self._url: str | None = None

    # config ------------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        if self._config is None:
            from llmlbd.config import ConfigError, load_config

            path = self.config_path
            if path is None and os.path.exists(DEFAULT_CONFIG):
                path = DEFAULT_CONFIG
            try:
                self._config = load_config(path)
            except ConfigError as exc:
                raise ConfigProblem(str(exc)) from None
        return self._config

    # pools -------------------------------------------------------------------------------
    @property
    def pool(self) -> Any:
        """The pool (`PoolSpec`) a command works on: --pool, or the config's only pool.

        With several pools and no --pool this is a usage error (exit 2): an action
        (drain, backend add) must never guess its pool. Views iterate `view_pools()`.
        """
        if self._pool is None:
            if self.pool_option is None and len(self.config.pools) > 1:
                names = ", ".join(p.name for p in self.config.pools)
                raise click.UsageError(
                    f"the config has {len(self.config.pools)} pools ({names}): "
                    "choose one with --pool"
                )
            self._pool = self._named(self.pool_option)
        return self._pool

    def _named(self, name: str | None) -> Any:
        import dataclasses

        pools = self.config.pools
        if name is None:
            return pools[0]
        for pool in pools:
            if pool.name == name:
                return pool
        if not self.config.multi_pool:
            # The single-pool file's backends and policy, under another pool name.
            return dataclasses.replace(pools[0], name=name)
        raise ConfigProblem(
            f"no pool named {name!r} in the config (pools: {', '.join(p.name for p in pools)})"
        )

    def view_pools(self) -> list[Any]:
        """The pools a read-only view shows: --pool's, else every pool of the config."""
        if self.pool_option is not None or len(self.config.pools) == 1:
            return [self.pool]
        return list(self.config.pools)

    def pool_for_model(self, model: str) -> Any:
        """--pool's pool, the only pool, or the one the proxy would send *model* to (None:
        no pool takes it)."""
        if self.pool_option is not None or len(self.config.pools) == 1:
            return self.pool
        return self.config.pool_map().select(model)

    def use(self, pool: Any) -> Ctl:
        """Work on *pool* from now on (a view walking every pool); returns self."""
        self._pool, self._keys = pool, None
        return self

    @property
    def keys(self) -> Any:
        if self._keys is None:
            from llmlbd.state.keys import PoolKeys

            try:
                self._keys = PoolKeys(self.pool.name)
            except ValueError as exc:
                raise ConfigProblem(str(exc)) from None
        return self._keys

    # redis -------------------------------------------------------------------------------
    @property
    def url(self) -> str | None:
        """The Redis URL used (None with Sentinel, which finds the master itself)."""
        if self._url is None:
            from llmlbd.state.client import resolved_url

            url = self.redis_url_option or resolved_url(self.config)
            if url is None and self.config.redis_target().embedded:
                for candidate in runtime_socket_candidates():
                    if candidate.exists():
                        url = f"unix://{candidate}"
                        break
            self._url = url
        return self._url

    @property
    def client(self) -> Any:
        if self._client is None:
            from llmlbd.state.client import connect

            config = self.config
            if self.url is None and config.redis.mode != "sentinel":
                raise RuntimeProblem(
                    "no Redis to read: the config uses an embedded Redis and no running "
                    "`llmlbd start` socket was found; pass --redis-url (or set "
                    "LLMLBD_REDIS_URL), or give --config the file the proxy runs with"
                )
            try:
                self._client = connect(config, url=self.url)
            except (RuntimeError, ValueError) as exc:
                raise RuntimeProblem(str(exc)) from None
        return self._client

    def describe_redis(self) -> str:
        if self.url:
            return redact_url(self.url) or ""
        r = self.config.redis
        return f"sentinel master {r.sentinel_master} via {', '.join(r.sentinels)}"

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
            self._client = None


pass_ctl = click.make_pass_decorator(Ctl)
