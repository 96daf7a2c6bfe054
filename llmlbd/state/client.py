"""Build the Redis client of a process from the config.

Call `connect()` after fork (gunicorn's post_worker_init, the collector's
start): importing this module opens nothing. Timeouts are short on purpose:
a request must never wait seconds on Redis (the breaker and the local
fallback take over instead).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from llmlbd.config.loader import RedisTarget
from llmlbd.embedded import EMBEDDED_URL_ENV

T = TypeVar("T")

__all__ = [
    "connect",
    "tls_options",
    "EMBEDDED_URL_ENV",
    "resolved_url",
    "REDIS_ERRORS",
    "UNREACHABLE",
    "AuthenticationError",
    "ResponseError",
    "script_pipeline",
    "execute_script_pipeline",
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
        retry=_Retry(
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
        return _Cluster.from_url(url, **common)
    if common.pop("ssl", False):
        common["connection_class"] = redis.SSLConnection
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=r.max_connections, timeout=timeout, **common
    )
    return redis.Redis(connection_pool=pool)


class _Retry(Retry):
    """redis-py's Retry, that also closes the connection of a command that timed out.

    redis-py's Sentinel connections do not close themselves when a read times
    out (they read with ``disconnect_on_error=False``), and given only
    ConnectionError to retry, Retry re-raises a timeout without calling its
    failure handler, which is what closes the connection. So the connection
    went back to the pool owing a reply, and the next command on it read that
    reply as its own: with a paused Sentinel master, heartbeats answered
    "PONG", an acquire read "OK" (a 500), and leases were left behind. Now the
    connection is closed and the timeout raised.
    """

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        try:
            return super().call_with_retry(do, fail, is_retryable, with_failure_count)
        except redis.TimeoutError as error:
            try:
                if with_failure_count:
                    fail(error, 1)
                else:
                    fail(error)
            except redis.RedisError:
                pass  # fail() closed the connection, then raised its own error: keep ours
            raise


class _Cluster(redis.RedisCluster):
    """redis-py's cluster client, minus its retry of a command that timed out.

    redis-py retries a cluster command on a timeout whatever `retry` says
    (`ERRORS_ALLOW_RETRY`): on a stalled node a request waited two socket
    timeouts and a slot-map refresh before the local fallback, and a
    timed-out acquire that still runs next to its retry counts once and
    answers "duplicate" (a 503), as the standalone client's comment above
    says. A broken connection, CLUSTERDOWN and an uncovered slot (a
    failover under way) are still retried once, after the client re-read
    the slot map; MOVED and ASK are followed as before.
    """

    # A narrower tuple than the base class's, on purpose: TimeoutError is left out.
    ERRORS_ALLOW_RETRY = (  # type: ignore[assignment]
        redis.ConnectionError,
        redis.exceptions.ClusterDownError,
        redis.exceptions.SlotNotCoveredError,
    )


def script_pipeline(client: Any, key: str) -> Any:
    """A pipeline that may carry EVALSHA, on the server that holds *key*.

    redis-py refuses scripts in a cluster pipeline; every key of a pool
    shares one slot, so a pool's pipeline goes to the node that serves it.
    Run it with `execute_script_pipeline`, which re-reads the slot map when
    that node failed or no longer serves the slot.
    """
    if not isinstance(client, redis.RedisCluster):
        return client.pipeline(transaction=False)
    node = client.get_node_from_key(key)
    return client.get_redis_connection(node).pipeline(transaction=False)


def execute_script_pipeline(client: Any, pipe: Any) -> list[Any]:
    """`pipe.execute(raise_on_error=False)`; on a cluster, a failed node or a moved slot
    refreshes the slot map and raises ConnectionError (nothing is known to be written)."""
    if not isinstance(client, redis.RedisCluster):
        return list(pipe.execute(raise_on_error=False))
    try:
        results = list(pipe.execute(raise_on_error=False))
    except UNREACHABLE:
        client.nodes_manager.initialize()
        raise
    moved = (
        redis.exceptions.MovedError,
        redis.exceptions.AskError,
        redis.exceptions.ClusterDownError,
    )
    if any(isinstance(result, moved) for result in results):
        client.nodes_manager.initialize()
        raise redis.ConnectionError("the pool's slot moved (a cluster failover): retry")
    return results
