"""Build the Redis client of a process from the config.

Call `connect()` after fork (gunicorn's post_worker_init, the collector's
start): importing this module opens nothing. Timeouts are short on purpose:
a request must never wait seconds on Redis (the breaker and the local
fallback take over instead).
"""

from __future__ import annotations

import os
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from llmlbd.config.loader import RedisTarget
from llmlbd.embedded import EMBEDDED_URL_ENV

__all__ = [
    "connect",
    "EMBEDDED_URL_ENV",
    "resolved_url",
    "REDIS_ERRORS",
    "UNREACHABLE",
    "AuthenticationError",
    "ResponseError",
]

# Redis cannot be reached (or refuses for now): callers fall back or retry later.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)
# Network trouble or a Redis that cannot serve yet: the router falls back on these.
# A ResponseError is a bug (a script error) and is deliberately not among them.
REDIS_ERRORS = (
    *UNREACHABLE,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,
)
AuthenticationError = redis.exceptions.AuthenticationError
ResponseError = redis.exceptions.ResponseError


def resolved_url(config: Any) -> str | None:
    """The URL this process should use: the embedded server's if one runs, else the config's."""
    target: RedisTarget = config.redis_target()
    if target.embedded:
        return os.environ.get(EMBEDDED_URL_ENV)
    return target.url


def connect(config: Any, url: str | None = None, decode_responses: bool = True) -> Any:
    """Return a redis-py client (standalone, Sentinel master or Cluster) for *config*."""
    r = config.redis
    timeout = min(r.socket_timeout_s, config.lb_config.timeout / 1000.0)
    common: dict[str, Any] = dict(
        socket_timeout=timeout,
        socket_connect_timeout=r.connect_timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.005), 1),
        decode_responses=decode_responses,
        health_check_interval=0,
    )
    if r.username and not (url and "@" in url):
        common["username"] = r.username
    if r.password and not (url and "@" in url):
        common["password"] = r.password
    target = config.redis_target()
    url = url or resolved_url(config)
    if target.mode == "sentinel":
        from redis.sentinel import Sentinel

        hosts = [(h.rpartition(":")[0], int(h.rpartition(":")[2])) for h in r.sentinels]
        sentinel = Sentinel(
            hosts, socket_timeout=timeout, socket_connect_timeout=r.connect_timeout_s
        )
        return sentinel.master_for(r.sentinel_master, db=r.db, **common)
    if not url:
        raise RuntimeError(
            "no Redis URL: set redis.url in the config, or run under `llmlbd start`, "
            f"which starts an embedded server and exports {EMBEDDED_URL_ENV}"
        )
    if target.mode == "cluster":
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url, **common)
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=r.max_connections, timeout=timeout, **common
    )
    return redis.Redis(connection_pool=pool)
