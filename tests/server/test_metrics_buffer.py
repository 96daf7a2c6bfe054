"""Per-request metrics kept in the worker and flushed: the same numbers prometheus_client's
own calls would write, nothing before a flush, nothing lost or counted twice after one."""

from __future__ import annotations

import random

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from llmlbd import metrics
from llmlbd.metrics import LocalCounter, LocalGauge, LocalHistogram

BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.5)


def _metrics(registry: CollectorRegistry) -> tuple[Histogram, Counter, Gauge]:
    return (
        Histogram("h_seconds", "h", ["op"], buckets=BUCKETS, registry=registry),
        Counter("c", "c", ["status"], registry=registry),
        Gauge("g", "g", registry=registry),
    )


def _text(registry: CollectorRegistry) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if "_created" not in line and "_sum{" not in line]


def _sum(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("h_seconds_sum", {"op": "pick"}) or 0.0


def test_flushed_values_equal_direct_observations() -> None:
    direct, buffered = CollectorRegistry(), CollectorRegistry()
    h, c, g = _metrics(direct)
    bh, bc, bg = _metrics(buffered)
    local_h, local_c, local_g = (
        LocalHistogram(bh.labels("pick")),
        LocalCounter(bc.labels("200")),
        LocalGauge(bg),
    )
    empty = _text(buffered)
    rng = random.Random(7)
    # Bucket bounds themselves included: a value equal to a bound counts in that bucket.
    values = list(BUCKETS) + [rng.uniform(0, 0.02) for _ in range(200)] + [3.0, 0.0]
    for round_ in range(3):
        for value in values:
            h.labels("pick").observe(value)
            local_h.observe(value)
            c.labels("200").inc()
            local_c.inc()
            g.inc()
            local_g.inc()
        for _ in range(round_ + 5):
            g.dec()
            local_g.dec()
        if round_ == 0:
            assert _text(buffered) == empty  # nothing written before a flush
        local_h.flush()
        local_c.flush()
        local_g.flush()
        local_h.flush()  # a second flush adds nothing
        local_c.flush()
        assert _text(buffered) == _text(direct)
        # Summed in another order: equal up to rounding.
        assert abs(_sum(buffered) - _sum(direct)) < 1e-9 * _sum(direct)
    assert 'h_seconds_bucket{le="0.0002",op="pick"}' in "\n".join(_text(buffered))


def test_the_module_flush_writes_what_changed_once() -> None:
    labels = {"backend": "flush-test", "policy": "p", "status": "200"}
    inflight_before = REGISTRY.get_sample_value("llmlbd_worker_inflight") or 0.0
    metrics.requests_by("flush-test", "p", "200").inc()
    metrics.requests_by("flush-test", "p", "200").inc()
    metrics.inflight.inc()
    assert REGISTRY.get_sample_value("llmlbd_requests_total", labels) == 0  # not yet
    metrics.flush()
    assert REGISTRY.get_sample_value("llmlbd_requests_total", labels) == 2
    assert REGISTRY.get_sample_value("llmlbd_worker_inflight") == inflight_before + 1
    metrics.flush()  # nothing changed since: nothing added
    assert REGISTRY.get_sample_value("llmlbd_requests_total", labels) == 2
    metrics.inflight.dec()
    metrics.requests_by("flush-test", "p", "200").inc()
    metrics.flush()
    assert REGISTRY.get_sample_value("llmlbd_requests_total", labels) == 3
    assert REGISTRY.get_sample_value("llmlbd_worker_inflight") == inflight_before
