"""The collector's own Prometheus metrics, in a registry of its own.

Its own registry (not prometheus_client's global one) so that nothing else
imported into the process leaks series into it, and tests can build many.
Ages and staleness are computed when Prometheus scrapes, from the
workers' last good scrape, so they are exact at read time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CollectorMetrics", "Freshness"]

# (backend, owned by this collector, monotonic time of the last good scrape or None)
Freshness = tuple[str, bool, "float | None"]


class _AgeCollector(Collector):
    def __init__(self, source: Callable[[], Iterable[Freshness]], stale_after_s: float) -> None:
        self.source = source
        self.stale_after_s = stale_after_s

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.monotonic()
        age = GaugeMetricFamily(
            "llmlbd_collector_metrics_age_seconds",
            "Time since the last good scrape of each backend this collector owns (+Inf: none yet).",
            labels=["backend"],
        )
        stale = GaugeMetricFamily(
            "llmlbd_collector_backend_stale",
            "1 when the backend's metrics are older than collector.stale_after_ms.",
            labels=["backend"],
        )
        owned = stale_count = 0
        for backend, is_owned, last in self.source():
            if not is_owned:
                continue
            owned += 1
            seconds = float("inf") if last is None else now - last
            is_stale = seconds > self.stale_after_s
            stale_count += is_stale
            age.add_metric([backend], seconds)
            stale.add_metric([backend], 1.0 if is_stale else 0.0)
        yield age
        yield stale
        yield GaugeMetricFamily(
            "llmlbd_collector_stale_backends",
            "Owned backends whose metrics are stale.",
            value=stale_count,
        )
        yield GaugeMetricFamily(
            "llmlbd_collector_owned_backends",
            "Backends this collector currently scrapes.",
            value=owned,
        )


class CollectorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=r)  # the collector's own CPU and memory
        self.scrapes = Counter(
            "llmlbd_collector_scrapes",
            "Scrapes of a backend's /metrics, by outcome "
            "(ok, or the failure kind: timeout, refused, http_503, too_large, ...).",
            ["backend", "outcome"],
            registry=r,
        )
        self.scrape_seconds = Histogram(
            "llmlbd_collector_scrape_duration_seconds",
            "Time to fetch and parse one /metrics page.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.health_checks = Counter(
            "llmlbd_collector_health_checks",
            "Active health checks, by outcome.",
            ["backend", "outcome"],
            registry=r,
        )
        self.up = Gauge(
            "llmlbd_collector_backend_up",
            "Health state: 1 up, 0 down, -1 unknown.",
            ["backend"],
            registry=r,
        )
        self.field_missing = Gauge(
            "llmlbd_collector_field_missing",
            "1 when no known source for the field is on the backend's page (the field "
            "is unknown to the policies).",
            ["backend", "field"],
            registry=r,
        )
        self.publishes = Counter(
            "llmlbd_collector_publishes",
            "Backend hash writes, by outcome (ok, not_owner, error).",
            ["outcome"],
            registry=r,
        )
        self.redis_errors = Counter(
            "llmlbd_collector_redis_errors", "Failed Redis calls, by operation.", ["op"], registry=r
        )
        # Overload: what the collector could not do, and how far behind it is.
        self.skipped_ticks = Counter(
            "llmlbd_collector_skipped_ticks",
            "Scheduled /metrics scrapes skipped because the previous one ran past the tick "
            "(the collector cannot keep up with collector.interval_ms).",
            registry=r,
        )
        self.scrape_rate = Gauge(
            "llmlbd_collector_scrape_rate",
            "/metrics scrapes per second over the last few seconds: achieved, and target "
            "(owned backends / interval).",
            ["kind"],
            registry=r,
        )
        self.pending_writes = Gauge(
            "llmlbd_collector_pending_writes",
            "Backends with a hash write waiting for the publisher (at most one each).",
            registry=r,
        )
        self.coalesced = Counter(
            "llmlbd_collector_coalesced_writes",
            "Updates merged into a write still waiting for the same backend.",
            registry=r,
        )
        # KV events (collector/kv_events.py) ---------------------------------------------
        self.kv_events = Counter(
            "llmlbd_collector_kv_events",
            "KV-cache events applied to the precise prefix index, by type "
            "(BlockStored, BlockRemoved, AllBlocksCleared).",
            ["backend", "type"],
            registry=r,
        )
        self.kv_batches = Counter(
            "llmlbd_collector_kv_batches",
            "KV-event batches received, by outcome (applied, replayed, duplicate, bad).",
            ["backend", "outcome"],
            registry=r,
        )
        self.kv_resyncs = Counter(
            "llmlbd_collector_kv_resyncs",
            "Times a backend's index was rebuilt or dropped, by reason (connect, gap_replayed, "
            "gap_lost, restart, silent, removed).",
            ["backend", "reason"],
            registry=r,
        )
        self.kv_lag = Histogram(
            "llmlbd_collector_kv_index_lag_seconds",
            "From a batch's server timestamp to its application in Redis (clocks of the "
            "backend and Redis; NTP skew adds to it).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
            registry=r,
        )
        self.kv_connected = Gauge(
            "llmlbd_collector_kv_stream_connected",
            "1 while this collector is subscribed and connected to the backend's KV events.",
            ["backend"],
            registry=r,
        )
        self.reaped = Counter(
            "llmlbd_collector_reaped_leases",
            "In-flight leases of dead proxy workers dropped.",
            registry=r,
        )

    def watch_freshness(
        self, source: Callable[[], Iterable[Freshness]], stale_after_s: float
    ) -> None:
        self.registry.register(_AgeCollector(source, stale_after_s))
