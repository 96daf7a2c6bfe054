"""Every Prometheus metric of the proxy, declared once.

Workers are separate processes, so `llmlbd start` sets PROMETHEUS_MULTIPROC_DIR
before forking and /metrics aggregates every worker's files
(prometheus_client multiprocess mode); the master marks dead workers' files.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["REQUESTS", "DECISION_SECONDS", "UPSTREAM_TTFB_SECONDS", "UPSTREAM_SECONDS",
           "RETRIES", "FALLBACKS", "REDIS_ERRORS", "SHED", "INFLIGHT", "Observer"]

REQUESTS = Counter("llmlbd_requests_total", "Requests answered, by backend, policy and status.",
                   ["backend", "policy", "status"])
DECISION_SECONDS = Histogram(
    "llmlbd_decision_seconds", "Time to pick and reserve a backend (Redis round trip included).",
    ["policy"], buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5))
UPSTREAM_TTFB_SECONDS = Histogram(
    "llmlbd_upstream_ttfb_seconds", "From forwarding to the backend's first body byte.",
    ["backend"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
UPSTREAM_SECONDS = Histogram(
    "llmlbd_upstream_seconds", "From forwarding to the end of the backend's response.",
    ["backend"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
RETRIES = Counter("llmlbd_retries_total",
                  "Requests sent to another backend after one failed before any byte.",
                  ["backend", "reason"])
FALLBACKS = Counter("llmlbd_fallback_decisions_total",
                    "Decisions made by the worker-local fallback because Redis was unavailable.")
REDIS_ERRORS = Counter("llmlbd_redis_errors_total", "Redis calls that failed, by operation.",
                       ["op"])
SHED = Counter("llmlbd_shed_total", "Requests refused with 429, by reason.", ["reason"])
INFLIGHT = Gauge("llmlbd_worker_inflight", "Requests this worker is forwarding now.",
                 multiprocess_mode="livesum")


class Observer:
    """The Router's hooks into the metrics."""

    def redis_error(self, op: str) -> None:
        REDIS_ERRORS.labels(op).inc()

    def fallback(self) -> None:
        FALLBACKS.inc()
