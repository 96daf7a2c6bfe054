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
    "tls_options",
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


def tls_options(r: Any, url: str | None) -> dict[str, Any]:
    """redis-py TLS arguments from redis.tls_* (empty when TLS is off).

    A rediss:// URL or any tls_* key turns TLS on; the server's certificate is
    always verified (against tls_ca_file, else the system's CAs) because a
    load balancer's routing state is worth a man in the middle's while.
    """
    files = (r.tls_ca_file, r.tls_cert_file, r.tls_key_file)
    if (url or "").startswith("unix://"):
        return {}  # the embedded server's socket: TLS has nothing to protect there
    if not any(files) and not (url or "").startswith("rediss://"):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required"}
    if r.tls_ca_file:
        options["ssl_ca_certs"] = r.tls_ca_file
    if r.tls_cert_file:
        options["ssl_certfile"] = r.tls_cert_file
        options["ssl_keyfile"] = r.tls_key_file
    if not (url or "").startswith("rediss://"):
        # A redis:// URL (or Sentinel/Cluster hosts) with tls_* keys: the
        # connection class must be told, the URL scheme does not say it.
        options["ssl"] = True
    return options


def connect(config: Any, url: str | None = None, decode_responses: bool = True) -> Any:
    """Return a redis-py client (standalone, Sentinel master or Cluster) for *config*."""
    r = config.redis
    timeout = min(r.socket_timeout_s, config.lb_config.timeout / 1000.0)
    common: dict[str, Any] = dict(
        socket_timeout=timeout,
        socket_connect_timeout=r.connect_timeout_s,
        # One retry on a broken connection (a pooled socket that died with a
        # restarted Redis), never on a timeout: the timed-out command may still
        # run, and running an acquire script twice counted the request once and
        # answered the client 503 (the second run finds its own lease).
        retry=Retry(
            ExponentialBackoff(cap=0.05, base=0.005), 1, supported_errors=(redis.ConnectionError,)
        ),
        retry_on_timeout=False,
        decode_responses=decode_responses,
        health_check_interval=0,
    )
    if r.username and not (url and "@" in url):
        common["username"] = r.username
    if r.password and not (url and "@" in url):
        common["password"] = r.password
    target = config.redis_target()
    url = url or resolved_url(config)
    common.update(tls_options(r, url))
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
    if common.pop("ssl", False):
        common["connection_class"] = redis.SSLConnection
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=r.max_connections, timeout=timeout, **common
    )
    return redis.Redis(connection_pool=pool)
