"""Reconciliation of the proxy's in-flight counts, run by the collector.

A proxy worker killed with SIGKILL cannot release its leases. Its heartbeat
stops, and `llmlbd.state.leases.reap` (one atomic script) drops the leases
of workers whose heartbeat expired and rewrites the in-flight counts from
the live leases. Calling it every second bounds a dead worker's phantom load
to the lease TTL plus one second; every tenth call also recounts when no
worker died, repairing any drift. Every collector may run it: the script is
atomic and idempotent, so concurrent calls are harmless.
"""

from __future__ import annotations

import threading
from typing import Any

from collector.logs import get_logger
from collector.metrics import CollectorMetrics
from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import reap

__all__ = ["Reaper", "REAP_EVERY_S", "RECOUNT_EVERY"]

REAP_EVERY_S = 1.0
RECOUNT_EVERY = 10


class Reaper:
    def __init__(self, client: Any, keys: PoolKeys, metrics: CollectorMetrics) -> None:
        self.client = client
        self.keys = keys
        self.metrics = metrics
        self.log = get_logger(component="reaper")
        self._calls = 0
        self._failing = False

    def once(self) -> int:
        """One reconciliation; returns the number of leases dropped (0 on error)."""
        self._calls += 1
        try:
            reaped, workers = reap(self.client, self.keys, recount=self._calls % RECOUNT_EVERY == 0)
        except Exception as exc:  # Redis down: the next second tries again
            self.metrics.redis_errors.labels("reap").inc()
            if not self._failing:
                self.log.warning("reap_failed", error=str(exc))
            self._failing = True
            return 0
        self._failing = False
        if reaped:
            self.metrics.reaped.inc(reaped)
            self.log.info("leases_reaped", leases=reaped, workers=workers)
        return reaped

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(REAP_EVERY_S):
            try:
                self.once()
            except Exception:  # a bug must not stop reconciliation for good: log, keep the loop
                self.log.exception("reap_error")
