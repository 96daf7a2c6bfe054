"""Every config key of llmlbd, declared once.

Each `Setting` names its dotted path, default, validator and a one-line doc
(the first sentence is the --help text and the reference entry). The YAML
loader, `llmlbd config check`, `llmlbd config show` and the generated
docs/reference/config.md all read this list; nothing else declares a key.
Units are in the key's name (`_s` seconds, `_ms` milliseconds, `_bytes`).
Keys under `lb_config` keep Higress's camelCase spelling so that a Higress
`ai-load-balancer` plugin config is accepted unchanged.
"""

from __future__ import annotations

from typing import Any

from llmlbd.config import kv_events, lb_least_busy, lb_prefix_cache, lb_session
from llmlbd.config import validators as v
from llmlbd.config.setting import Setting

__all__ = ["Setting", "SETTINGS", "SECTIONS", "by_path", "default_of"]


SECTIONS = {
    "server": "The proxy process: listening socket, workers, limits and timeouts.",
    "redis": "Where the shared state lives. Without `url` (and without Higress's "
    "`lb_config.serviceFQDN`), llmlbd starts a private embedded server.",
    "lb_config": "Policy options. Higress `ai-load-balancer` keys are accepted as they are.",
    "collector": "The metrics and health collector (`llmlbd collector`).",
    "logging": "Structured logs.",
    "demo": "What `llmlbd start` runs when the config lists no backends.",
}


SETTINGS: list[Setting] = [
    # server -------------------------------------------------------------------------------
    Setting(
        "server.bind",
        "127.0.0.1:8000",
        v.bind_address,
        "Address the proxy listens on: HOST:PORT or unix:PATH.",
    ),
    Setting(
        "server.workers",
        None,
        v.optional_positive_int,
        "Number of gunicorn worker processes (gevent). Default: one per core the process "
        "may run on (a worker uses one core; more than the cores costs CPU per request, "
        "see docs/benchmarks.md).",
    ),
    Setting(
        "server.worker_connections",
        None,
        v.optional_positive_int,
        "Most concurrent client connections per worker. Default: 1000, so the host's total "
        "grows with the worker count (one worker per core).",
    ),
    Setting(
        "server.api_keys_file",
        None,
        v.optional_string,
        "File of client API keys, one a line (# comments); when set, every request but "
        "/healthz, /readyz and /metrics needs `Authorization: Bearer <key>` (401 otherwise). "
        "Re-read on SIGHUP.",
    ),
    Setting(
        "server.forward_client_key",
        None,
        v.optional_boolean,
        "Pass the client's Authorization header on to backends. Default: yes without "
        "api_keys_file, no with it (the key is llmlbd's, not the backends').",
    ),
    Setting(
        "server.public_metrics",
        False,
        v.boolean,
        "Answer /metrics to any client; by default only to loopback peers (an admin surface "
        "on the public port: others get 403).",
    ),
    Setting(
        "server.max_concurrent_requests",
        0,
        v.non_negative_int,
        "Most requests one worker serves at once; beyond it a request gets a fast 503 with "
        "Retry-After. 0: nine tenths of worker_connections, so the last tenth of the "
        "connection slots can still say no instead of leaving clients in the listen queue.",
    ),
    Setting(
        "server.client_header_timeout_s",
        5.0,
        v.positive_float,
        "Deadline for a new connection's first request line and headers; a client that has "
        "not sent them by then is disconnected (later requests on a kept-alive connection "
        "get keepalive_s).",
        "s",
    ),
    Setting(
        "server.client_body_timeout_s",
        10.0,
        v.positive_float,
        "Longest silence allowed from a client while it sends the request body; then it gets "
        "408 and the connection is closed.",
        "s",
    ),
    Setting(
        "server.client_body_total_s",
        60.0,
        v.positive_float,
        "Deadline for a request's whole body, however steadily it trickles in (a client "
        "sending a byte just within client_body_timeout_s still gets 408 after this).",
        "s",
    ),
    Setting(
        "server.client_write_timeout_s",
        60.0,
        v.positive_float,
        "Longest time a client may leave response bytes unread (a stalled stream reader); "
        "then its connection is closed and its backend slot released.",
        "s",
    ),
    Setting(
        "server.keepalive_s",
        5,
        v.positive_int,
        "How long an idle client connection stays open. Shutdown and reload wait for idle "
        "connections to time out, so keep this short.",
        "s",
    ),
    Setting(
        "server.max_body_bytes",
        10 * 1024 * 1024,
        v.byte_size,
        "Largest request body accepted; larger bodies get 413.",
        "bytes",
    ),
    Setting(
        "server.connect_timeout_s",
        2.0,
        v.positive_float,
        "Time allowed to open a connection to a backend.",
        "s",
    ),
    Setting(
        "server.read_timeout_s",
        600.0,
        v.positive_float,
        "Longest silence allowed from a backend while waiting for response bytes; "
        "before the first byte this gives 504.",
        "s",
    ),
    Setting(
        "server.max_retries",
        2,
        v.non_negative_int,
        "Other backends tried when one fails before sending any response byte.",
    ),
    Setting(
        "server.eject_after_failures",
        5,
        v.non_negative_int,
        "Outlier ejection: consecutive failed requests (connection refused or reset, a 5xx, "
        "a read timeout) after which every worker and replica stops sending to a backend "
        "for a cool-down; 0 turns ejection off.",
        "requests",
    ),
    Setting(
        "server.eject_cooldown_s",
        5.0,
        v.positive_float,
        "First cool-down of an ejected backend; it doubles with each ejection in a row "
        "(a failed probe) up to `eject_max_cooldown_s`.",
        "s",
    ),
    Setting(
        "server.eject_max_cooldown_s",
        300.0,
        v.positive_float,
        "Longest cool-down of an ejected backend.",
        "s",
    ),
    Setting(
        "server.eject_probe_s",
        30.0,
        v.positive_float,
        "After a cool-down one request probes the backend; if its outcome is not known "
        "within this long, another request may probe.",
        "s",
    ),
    Setting(
        "server.upstream_pool_size",
        256,
        v.positive_int,
        "Keep-alive connections kept per backend in each worker.",
    ),
    Setting(
        "server.graceful_timeout_s",
        30.0,
        v.positive_float,
        "On SIGTERM or reload, how long in-flight requests may run before workers stop.",
        "s",
    ),
    Setting(
        "server.backend_header",
        True,
        v.boolean,
        "Add `x-llmlbd-backend: <name>` and `x-llmlbd-request-id: <id>` (the id in the "
        "log line and in `llmlbctl inspect request`) to every proxied response.",
    ),
    Setting(
        "server.pool",
        "default",
        v.string,
        "Name of this fleet; replicas that share a pool name share their state. With "
        "`pools:`, each pool names itself instead.",
    ),
    Setting(
        "server.lease_ttl_s",
        5.0,
        v.positive_float,
        "A worker that stops heart-beating for this long has its in-flight leases reclaimed.",
        "s",
    ),
    # redis --------------------------------------------------------------------------------
    Setting(
        "redis.url",
        None,
        v.redis_url,
        "redis://, rediss:// or unix:// URL of the shared Redis (or Valkey). Unset: "
        "embedded server.",
    ),
    Setting(
        "redis.embedded",
        False,
        v.boolean,
        "Start a private Redis-compatible server even if a URL is configured.",
    ),
    Setting(
        "redis.mode",
        "standalone",
        v.one_of("standalone", "sentinel", "cluster"),
        "standalone (one server), sentinel (url names none; see `sentinels`) or cluster.",
    ),
    Setting(
        "redis.sentinels", [], v.string_list, "HOST:PORT of each Sentinel, with mode: sentinel."
    ),
    Setting(
        "redis.sentinel_master", "mymaster", v.string, "Name of the master the Sentinels watch."
    ),
    Setting("redis.username", None, v.optional_string, "ACL user name."),
    Setting("redis.password", None, v.optional_string, "Password (prefer an env file)."),
    Setting("redis.db", 0, v.non_negative_int, "Database number (standalone and sentinel)."),
    Setting(
        "redis.tls_ca_file",
        None,
        v.optional_string,
        "PEM file of the CA that signed the Redis server's certificate. Setting any "
        "`tls_*` key turns TLS on (as a rediss:// URL does); unset with TLS on: the "
        "system's CAs.",
    ),
    Setting(
        "redis.tls_cert_file",
        None,
        v.optional_string,
        "PEM client certificate, for a Redis that requires one (`tls-auth-clients yes`).",
    ),
    Setting("redis.tls_key_file", None, v.optional_string, "PEM private key of `tls_cert_file`."),
    Setting(
        "redis.socket_timeout_s",
        0.5,
        v.positive_float,
        "Longest wait for one Redis reply before the request falls back.",
        "s",
    ),
    Setting(
        "redis.connect_timeout_s", 0.5, v.positive_float, "Longest wait to connect to Redis.", "s"
    ),
    Setting("redis.max_connections", 64, v.positive_int, "Redis connections per worker process."),
    Setting(
        "redis.local_unix_socket",
        True,
        v.boolean,
        "When the URL names loopback TCP (127.0.0.1, localhost, ::1) and that Redis also "
        "listens on a unix socket (CONFIG GET unixsocket) this process may open, send the "
        "request path's scripts through the socket: less CPU and latency per call. Not tried "
        "with an ACL user (redis.username): CONFIG is outside its rule set. Turn off when "
        "something else (a proxy, a tunnel) listens on the loopback port.",
    ),
    Setting(
        "redis.breaker_failures",
        3,
        v.positive_int,
        "Consecutive Redis failures that open the circuit breaker (local fallback).",
    ),
    Setting(
        "redis.breaker_reset_s",
        2.0,
        v.positive_float,
        "How long the breaker stays open before one request probes Redis again.",
        "s",
    ),
    # lb_config (Higress names) ------------------------------------------------------------
    Setting(
        "lb_config.serviceFQDN",
        None,
        v.optional_string,
        "Higress: Redis host. Used when the `redis` section has no url.",
    ),
    Setting("lb_config.servicePort", 6379, v.positive_int, "Higress: Redis port."),
    Setting("lb_config.username", None, v.optional_string, "Higress: Redis user."),
    Setting("lb_config.password", None, v.optional_string, "Higress: Redis password."),
    Setting(
        "lb_config.timeout",
        3000,
        v.positive_int,
        "Higress: Redis timeout; llmlbd caps its per-call wait at this.",
        "ms",
    ),
    Setting("lb_config.database", 0, v.non_negative_int, "Higress: Redis database."),
    Setting(
        "lb_config.maxRequestCount",
        0,
        v.non_negative_int,
        "Most requests in flight per backend across the fleet; 0 means no cap. When every "
        "backend is at the cap, requests get 429.",
    ),
    Setting(
        "lb_config.cleanInterval",
        60,
        v.positive_int,
        "Higress: stale-host cleanup period. Accepted for compatibility; llmlbd's leases "
        "and the collector's reconciliation replace it.",
        "min",
    ),
    Setting(
        "lb_config.enableDetailLog",
        False,
        v.boolean,
        "Higress: log every backend's in-flight count with each decision.",
    ),
    # collector ----------------------------------------------------------------------------
    Setting(
        "collector.enabled",
        None,
        v.optional_boolean,
        "Run the collector as a child of `llmlbd start`. Default: on with the embedded "
        "Redis, off otherwise (run `llmlbd collector` under systemd).",
    ),
    Setting(
        "collector.processes",
        None,
        v.optional_positive_int,
        "How many collector processes `llmlbd start` runs; they split the backends through "
        "their ownership leases. Default: half the cores, 1 to 8.",
    ),
    Setting(
        "collector.interval_ms",
        200,
        v.positive_int,
        "Time between two scrapes of one backend's /metrics.",
        "ms",
    ),
    Setting(
        "collector.timeout_ms",
        1000,
        v.positive_int,
        "Longest wait for one backend's /metrics or /health.",
        "ms",
    ),
    Setting("collector.health_path", "/health", v.string, "Path of the active health check."),
    Setting(
        "collector.health_interval_ms",
        1000,
        v.positive_int,
        "Time between two health checks of one backend.",
        "ms",
    ),
    Setting(
        "collector.down_after",
        3,
        v.positive_int,
        "Consecutive failed checks that mark a backend down.",
    ),
    Setting(
        "collector.up_after",
        2,
        v.positive_int,
        "Consecutive good checks that mark a down backend up again.",
    ),
    Setting(
        "collector.stale_after_ms",
        2000,
        v.positive_int,
        "Metrics older than this are stale: policies treat them as unknown.",
        "ms",
    ),
    Setting(
        "collector.max_page_bytes",
        4 * 1024 * 1024,
        v.byte_size,
        "Largest /metrics page read; a larger page is a failed scrape.",
        "bytes",
    ),
    Setting(
        "collector.models_refresh_s",
        5.0,
        v.positive_float,
        "Time between two reads of a backend's /v1/models.",
        "s",
    ),
    Setting(
        "collector.metrics_port",
        9101,
        v.non_negative_int,
        "Port of the collector's own Prometheus /metrics; 0 turns it off.",
    ),
    Setting(
        "collector.metrics_host",
        "127.0.0.1",
        v.string,
        "Address the collector's own /metrics listens on; loopback by default (an admin "
        "surface). 0.0.0.0 exposes it to the network.",
    ),
    Setting(
        "collector.metric_map",
        {},
        v.mapping,
        "Per-field metric names for servers llmlbd does not know, e.g. "
        "`waiting: 'queue_len{engine=\"0\"}'`.",
    ),
    # logging ------------------------------------------------------------------------------
    Setting(
        "logging.level",
        "info",
        v.one_of("debug", "info", "warning", "error"),
        "Lowest level logged.",
    ),
    Setting(
        "logging.format",
        "auto",
        v.one_of("auto", "json", "console"),
        "json (one object per line), console (for people), or auto: console on a "
        "terminal, json under systemd or when piped.",
    ),
    Setting("logging.access_log", True, v.boolean, "Log one line per request."),
    # demo ---------------------------------------------------------------------------------
    Setting(
        "demo.backends",
        2,
        v.positive_int,
        "Simulated vLLM servers started when the config lists no backends.",
    ),
    Setting(
        "demo.base_port",
        8100,
        v.positive_int,
        "Port of the first simulated server; the others follow.",
    ),
    # policy-specific lb_config keys live beside each other in their own modules
    *lb_prefix_cache.SETTINGS,
    *lb_least_busy.SETTINGS,
    *kv_events.SETTINGS,
    *lb_session.SETTINGS,
]

_BY_PATH = {setting.path: setting for setting in SETTINGS}
# Alternative spellings (e.g. the inference-extension's environment variable names).
_BY_PATH.update({f"{s.section}.{alias}": s for s in SETTINGS for alias in s.aliases})


def by_path(path: str) -> Setting | None:
    return _BY_PATH.get(path)


def default_of(path: str) -> Any:
    """The default of the setting at *path* (e.g. ``lb_config.maxLoadGap``): the one place
    other layers take a default from, so theirs cannot drift from the config's."""
    setting = _BY_PATH.get(path)
    if setting is None:
        raise KeyError(f"no setting {path!r}")
    return setting.default
