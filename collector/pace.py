"""Is the collector keeping up? Achieved against configured scrape rate.

Every worker counts the /metrics reads it attempted and the ticks it had
to skip because the previous read overran (`collector.worker.next_tick`).
The daemon's main loop hands the totals to `Pace.observe` a few times a
second; every `WINDOW_S` it publishes both rates as gauges and, when more
than `BEHIND_FRACTION` of the ticks were skipped, logs ``collector_behind``
once (not per tick, not per window) with the figures and what to do, and
``collector_caught_up`` once when that ends.
"""

from __future__ import annotations

from typing import Any

from collector.metrics import CollectorMetrics

__all__ = ["Pace", "WINDOW_S", "BEHIND_FRACTION"]

WINDOW_S = 5.0
# A few skipped ticks are noise (a GC pass, a slow Redis reply); a steady
# twentieth of them is a collector that cannot do what it is configured to.
BEHIND_FRACTION = 0.05


class Pace:
    def __init__(self, metrics: CollectorMetrics, log: Any, interval_s: float) -> None:
        self.metrics = metrics
        self.log = log
        self.interval_s = interval_s
        self.behind = False
        self._start: tuple[float, int, int] | None = None  # time, scrapes, skipped

    def observe(self, now: float, scrapes: int, skipped: int, owned: int) -> None:
        """Totals since start (monotonic *now*); acts once per window."""
        if self._start is None:
            self._start = (now, scrapes, skipped)
            return
        then, scrapes0, skipped0 = self._start
        elapsed = now - then
        if elapsed < WINDOW_S:
            return
        self._start = (now, scrapes, skipped)
        achieved = (scrapes - scrapes0) / elapsed
        target = owned / self.interval_s
        missed = skipped - skipped0
        self.metrics.scrape_rate.labels("achieved").set(achieved)
        self.metrics.scrape_rate.labels("target").set(target)
        behind = missed > BEHIND_FRACTION * target * elapsed
        if behind and not self.behind:
            self.log.warning(
                "collector_behind",
                achieved_per_s=round(achieved, 1),
                target_per_s=round(target, 1),
                skipped_ticks=missed,
                owned=owned,
                hint="each backend is scraped less often than collector.interval_ms; add "
                "collector processes (collector.processes) or hosts, or raise interval_ms",
            )
        elif self.behind and not behind:
            self.log.info(
                "collector_caught_up",
                achieved_per_s=round(achieved, 1),
                target_per_s=round(target, 1),
            )
        self.behind = behind
