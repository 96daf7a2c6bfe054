"""Every Prometheus metric of the proxy, declared once.

Workers are separate processes, so `llmlbd start` sets PROMETHEUS_MULTIPROC_DIR
before forking and /metrics aggregates every worker's files
(prometheus_client multiprocess mode); the master marks dead workers' files.

The per-request series (requests, decision/TTFB/upstream/Redis seconds, prefix
blocks, in-flight) count in plain Python first (`Local*`: no lock, no mmap write
per request) and `flush()` folds them into the metric files: the worker calls it
each second, whenever it becomes idle, before it answers /metrics and when it
stops. So a value is never lost and at most about a second old under load.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "REQUESTS",
    "DECISION_SECONDS",
    "UPSTREAM_TTFB_SECONDS",
    "UPSTREAM_SECONDS",
    "RETRIES",
    "OUTLIER_EVENTS",
    "FALLBACKS",
    "REDIS_ERRORS",
    "REDIS_SECONDS",
    "PREFIX_BLOCKS",
    "SHED",
    "INFLIGHT",
    "inflight",
    "Observer",
    "PoolCollector",
    "Children",
    "flush",
    "requests_by",
    "decision_seconds_by",
    "upstream_ttfb_by",
    "upstream_seconds_by",
]

REQUESTS = Counter(
    "llmlbd_requests_total",
    "Requests answered, by backend, policy and status.",
    ["backend", "policy", "status"],
)
DECISION_SECONDS = Histogram(
    "llmlbd_decision_seconds",
    "Time to pick and reserve a backend (Redis round trip included).",
    ["policy"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
UPSTREAM_TTFB_SECONDS = Histogram(
    "llmlbd_upstream_ttfb_seconds",
    "From forwarding to the backend's first body byte.",
    ["backend"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
UPSTREAM_SECONDS = Histogram(
    "llmlbd_upstream_seconds",
    "From forwarding to the end of the backend's response.",
    ["backend"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
OUTLIER_EVENTS = Counter(
    "llmlbd_outlier_events_total",
    "Backends ejected after consecutive failures (event=ejected, kind=the last failure) "
    "and brought back by a successful probe (event=returned), counted by the worker "
    "whose release decided it.",
    ["backend", "event", "kind"],
)
RETRIES = Counter(
    "llmlbd_retries_total",
    "Requests sent to another backend after one failed before any byte.",
    ["backend", "reason"],
)
FALLBACKS = Counter(
    "llmlbd_fallback_decisions_total",
    "Decisions made by the worker-local fallback because Redis was unavailable.",
)
REDIS_ERRORS = Counter(
    "llmlbd_redis_errors_total", "Redis calls that failed, by operation.", ["op"]
)
REDIS_SECONDS = Histogram(
    "llmlbd_redis_seconds",
    "Redis round trips on the request path, by operation (pick, release).",
    ["op"],
    buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 0.5),
)
PREFIX_BLOCKS = Counter(
    "llmlbd_prefix_blocks_total",
    "Prompt blocks in prefix_cache decisions (kind=prompt) and how many of them matched a "
    "cached prefix on the chosen backend (kind=matched): matched/prompt is the hit ratio.",
    ["kind"],
)
SHED = Counter("llmlbd_shed_total", "Requests refused with 429, by reason.", ["reason"])
INFLIGHT = Gauge(
    "llmlbd_worker_inflight", "Requests this worker is forwarding now.", multiprocess_mode="livesum"
)


# The Local* that changed since the last flush(): a flush costs what changed, not what
# exists (a pool of hundreds of backends has thousands of children).
_dirty: list[Any] = []


class LocalCounter:
    """A counter child's increments, kept in this process until `flush()`."""

    __slots__ = ("child", "dirty", "pending")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.pending = 0.0
        self.dirty = False

    def inc(self, amount: float = 1.0) -> None:
        self.pending += amount
        if not self.dirty:
            self.dirty = True
            _dirty.append(self)

    def flush(self) -> None:
        pending, self.pending, self.dirty = self.pending, 0.0, False
        if pending:
            self.child.inc(pending)


class LocalHistogram:
    """A histogram child's observations, kept in this process until `flush()`.

    Bucket i counts the observations <= its bound and > the bound before, as
    Histogram.observe() does; flush() adds counts and sum to the child's values
    (the same prometheus_client value objects observe() writes).
    """

    __slots__ = ("bounds", "child", "counts", "dirty", "sum")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.bounds: list[float] = list(child._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.dirty = False

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount
        if not self.dirty:
            self.dirty = True
            _dirty.append(self)

    def flush(self) -> None:
        counts, total = self.counts, self.sum
        self.counts, self.sum, self.dirty = [0] * len(self.bounds), 0.0, False
        self.child._sum.inc(total)
        for value, count in zip(self.child._buckets, counts):
            if count:
                value.inc(count)


class LocalGauge:
    """A gauge this process alone moves (inc/dec); flush() writes its value."""

    __slots__ = ("dirty", "gauge", "value")

    def __init__(self, gauge: Any) -> None:
        self.gauge = gauge
        self.value = 0.0
        self.dirty = False

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount
        if not self.dirty:
            self.dirty = True
            _dirty.append(self)

    def dec(self, amount: float = 1.0) -> None:
        self.inc(-amount)

    def flush(self) -> None:
        self.dirty = False
        self.gauge.set(self.value)


def flush() -> None:
    """Fold every per-process count into the metric files (see the module's notes)."""
    global _dirty
    changed, _dirty = _dirty, []
    for local in changed:
        local.flush()


class Children:
    """A labelled metric's children, each a Local* made once and then found in a dict.

    labels() validates, joins and locks on every call (about 2 µs here, six times
    per proxied request); label values are few (backends, policies, statuses).
    """

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.local = LocalHistogram if isinstance(metric, Histogram) else LocalCounter
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.local(self.metric.labels(*values))
        return child


requests_by = Children(REQUESTS)
decision_seconds_by = Children(DECISION_SECONDS)
upstream_ttfb_by = Children(UPSTREAM_TTFB_SECONDS)
upstream_seconds_by = Children(UPSTREAM_SECONDS)
_redis_seconds_by = Children(REDIS_SECONDS)
_prefix_blocks_by = Children(PREFIX_BLOCKS)
inflight = LocalGauge(INFLIGHT)


class Observer:
    """The Router's hooks into the metrics."""

    def redis_error(self, op: str) -> None:
        REDIS_ERRORS.labels(op).inc()

    def redis_call(self, op: str, seconds: float) -> None:
        _redis_seconds_by(op).observe(seconds)

    def fallback(self) -> None:
        FALLBACKS.inc()

    def outlier(self, event: str, backend: str, kind: str) -> None:
        OUTLIER_EVENTS.labels(backend, event, kind).inc()

    def decided(self, details: dict[str, Any]) -> None:
        """What a policy reported about its choice (Decision.details)."""
        if "prompt_blocks" in details:
            _prefix_blocks_by("prompt").inc(details["prompt_blocks"])
            _prefix_blocks_by("matched").inc(details.get("matched_blocks", 0))


# Gauges PoolCollector exposes (name -> help), read from Redis at scrape time.
POOL_GAUGES = {
    "llmlbd_backend_inflight": "Requests in flight per backend, across every replica.",
    "llmlbd_backend_usable": "1 when the backend takes new requests (not drained, not down, "
    "not ejected).",
    "llmlbd_backend_ejected": "1 while the backend is ejected as an outlier (cool-down or "
    "probe running).",
    "llmlbd_backend_metrics_age_seconds": "Age of the collector's metrics for the backend.",
}


class PoolCollector:
    """The pool as Redis sees it, read at scrape time: one truth for every worker and replica.

    Per-worker counters can only sum what each worker did; in-flight per
    backend, drained and health are shared state, so they come from Redis.
    """

    def __init__(self, client: Any, pools: Any) -> None:
        """*pools*: (PoolKeys, backends) of every pool; each sample carries its pool."""
        self.client, self.pools = client, pools

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from llmlbd.state.snapshot import read_pool

        inflight, usable, ejected, age = (
            GaugeMetricFamily(name, doc, labels=["pool", "backend"])
            for name, doc in POOL_GAUGES.items()
        )
        for keys, backends in self.pools:
            try:
                states = read_pool(self.client, keys, backends)
            except Exception:
                return
            for state in states:
                labels = [keys.pool, state.name]
                inflight.add_metric(labels, state.inflight)
                down = state.metrics.get("health") == "down"
                out = state.ejected_until_ms is not None
                usable.add_metric(labels, 0 if state.drained or down or out else 1)
                ejected.add_metric(labels, 1 if out else 0)
                if state.metrics_age_ms is not None:
                    age.add_metric(labels, state.metrics_age_ms / 1000)
        yield from (inflight, usable, ejected, age)
