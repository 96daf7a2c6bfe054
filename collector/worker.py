"""One backend's schedule: /metrics every interval, the health path, /v1/models.

A worker runs in its own thread (a greenlet under ``--concurrency gevent``),
so a backend that hangs only delays itself. It does work only while this
collector owns the backend; ownership changes wake it up. All three reads
share one keep-alive connection to the backend.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from collector.exposition import ScanMemo
from collector.health import Health
from collector.http11 import FetchError, HTTPConnection
from collector.logs import get_logger
from collector.metrics import CollectorMetrics
from collector.parse import Reading, read_metrics
from collector.publish import Update
from collector.scrape import check_health, get_metrics_text, get_models
from collector.sources import METRIC_FIELDS, RAW_FIELDS, Plan, Source
from collector.speed import Speed
from llmlbd.state import backend_fields as F

__all__ = ["Settings", "BackendWorker", "next_tick"]

_HEALTH_VALUE = {F.HEALTH_UP: 1.0, F.HEALTH_DOWN: 0.0, F.HEALTH_UNKNOWN: -1.0}
_IDLE_WAIT_S = 1.0  # a worker whose backend another collector owns re-checks this often


@dataclass(frozen=True)
class Settings:
    """The ``collector`` config section in the units the workers use."""

    interval_s: float
    timeout_s: float
    health_path: str
    health_interval_s: float
    down_after: int
    up_after: int
    stale_after_s: float
    max_page_bytes: int
    models_refresh_s: float

    @classmethod
    def from_config(cls, section: Any) -> Settings:
        return cls(
            interval_s=section.interval_ms / 1000.0,
            timeout_s=section.timeout_ms / 1000.0,
            health_path=section.health_path
            if section.health_path.startswith("/")
            else "/" + section.health_path,
            health_interval_s=section.health_interval_ms / 1000.0,
            down_after=section.down_after,
            up_after=section.up_after,
            stale_after_s=section.stale_after_ms / 1000.0,
            max_page_bytes=section.max_page_bytes,
            models_refresh_s=section.models_refresh_s,
        )


class BackendWorker:
    def __init__(
        self,
        name: str,
        url: str,
        settings: Settings,
        plan: Plan,
        submit: Callable[[Update], None],
        metrics: CollectorMetrics,
        is_owned: Callable[[str], bool] = lambda name: True,
        restore: Callable[[str], Any] | None = None,
        cpu_slots: Any = None,
        scrape_slots: Any = None,
    ) -> None:
        self.name = name
        self.url = url
        self.settings = settings
        self.plan = plan
        self.submit = submit
        self.metrics = metrics
        self.is_owned = is_owned
        self.restore = restore
        self.cpu_slots = cpu_slots if cpu_slots is not None else contextlib.nullcontext()
        self.scrape_slots = scrape_slots
        self.failing = False  # the last /metrics read failed
        self.conn = HTTPConnection(url)
        self.health = Health(settings.down_after, settings.up_after)
        self.memo = ScanMemo()
        self.learned: dict[str, Source] = {}
        self.missing: set[str] = set()
        self.speed = Speed()  # learns service_s, prefill_s and slots over the scrapes
        self.last_ok: float | None = None  # monotonic time of the last good scrape
        # /metrics reads attempted and ticks skipped; written by this worker only.
        self.scrapes = 0
        self.skipped = 0
        self.active = False
        self.wake = threading.Event()
        self.log = get_logger(backend=name)

    # the loop ------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        s = self.settings
        next_metrics = next_health = next_models = 0.0
        while not stop.is_set():
            if not self.is_owned(self.name):
                if self.active:
                    self._deactivate()
                self.wake.wait(_IDLE_WAIT_S)
                self.wake.clear()
                continue
            now = time.monotonic()
            if not self.active:
                self._activate()
                # Spread each schedule's phase at random: 256 backends taken
                # at once would otherwise be scraped, checked and refreshed in
                # one burst, every period, forever after (measured: it was
                # the collector's worst-case metrics age). The model list, which
                # routing needs first, is read within a second.
                next_metrics = now + random.uniform(0, s.interval_s)
                next_health = now + random.uniform(0, s.health_interval_s)
                next_models = now + random.uniform(0, min(1.0, s.models_refresh_s))
            if now >= min(next_metrics, next_health, next_models):
                # One turn for everything due: a worker queueing once per read
                # would wait in line twice when its health check is due too.
                with self._turn():
                    if now >= next_health:
                        self._guarded(self.check_health)
                        next_health, _ = next_tick(
                            next_health, s.health_interval_s, time.monotonic()
                        )
                    if now >= next_metrics:
                        self._guarded(self.scrape_metrics)
                        next_metrics = self._count_tick(next_metrics)
                    if now >= next_models:
                        self._guarded(self.refresh_models)
                        next_models, _ = next_tick(
                            next_models, s.models_refresh_s, time.monotonic()
                        )
            wait = min(next_metrics, next_health, next_models) - time.monotonic()
            if wait > 0 and self.wake.wait(wait):
                self.wake.clear()
        self.conn.close()

    def _turn(self) -> Any:
        """A place among the few workers allowed to read from a backend at once, in arrival order.

        With all 256 workers runnable together, thread switching cost more CPU
        than reading the pages, and which thread got the GIL next was luck: an
        overloaded collector starved some backends for seconds. A backend whose
        last metrics read or health check failed goes around the gate: its next
        read will most likely wait on a timeout, not the CPU, and must not hold
        a place meanwhile.
        """
        if self.scrape_slots is None or self.failing or self.health.fails:
            return contextlib.nullcontext()
        return self.scrape_slots

    def _count_tick(self, planned: float) -> float:
        """After a /metrics read planned for *planned*: count it and any skipped ticks."""
        self.scrapes += 1
        tick, missed = next_tick(planned, self.settings.interval_s, time.monotonic())
        if missed:
            self.skipped += missed
            self.metrics.skipped_ticks.inc(missed)
        return tick

    def _guarded(self, step: Callable[[], Any]) -> None:
        """Run one read; a bug must cost one scrape, never the backend's thread."""
        try:
            step()
        except Exception:
            self.metrics.scrapes.labels(self.name, "internal_error").inc()
            self.log.exception("worker_error", step=step.__name__)
            self.conn.close()

    def _activate(self) -> None:
        self.active = True
        if self.restore is not None:
            try:
                state = self.restore(self.name)
            except Exception as exc:  # Redis down: start from "unknown"
                self.log.warning("restore_failed", error=str(exc))
            else:
                if state:
                    self.health.restore(*state)
        self.metrics.up.labels(self.name).set(_HEALTH_VALUE[self.health.state])
        self.log.debug("backend_owned", health=self.health.state)

    def _deactivate(self) -> None:
        self.active = False
        self.last_ok = None
        self.conn.close()
        self.health = Health(self.settings.down_after, self.settings.up_after)
        self.speed.reset()
        self.log.debug("backend_released")

    # the three reads -----------------------------------------------------------
    def scrape_metrics(self) -> Reading | None:
        """Read /metrics once and submit the fields; None when the scrape failed."""
        s = self.settings
        started = time.monotonic()
        try:
            text = get_metrics_text(self.conn, s.timeout_s, s.max_page_bytes)
        except FetchError as exc:
            self._scrape_failed(exc.kind, str(exc))
            return None
        received = time.monotonic()
        with self.cpu_slots:
            reading = read_metrics(text, self.plan, self.memo, self.learned)
        if reading.empty:
            # An answer with none of the families we know is not a metrics
            # page (an error page, a proxy's default site): keep the last
            # values and let them go stale rather than calling them unknown.
            self._scrape_failed("no_known_metrics", "no known metric family on the page")
            return None
        elapsed = time.monotonic() - started
        fields = dict(reading.values)
        derived, unknown = self.speed.derive(fields)
        fields.update(derived)
        fields[F.SCRAPE_MS] = f"{elapsed * 1000:.1f}"
        fields[F.URL] = self.url
        delete = [f for f in reading.missing if f not in RAW_FIELDS] + unknown
        self.submit(Update(self.name, fields, (*delete, F.LAST_ERROR), scraped_mono=received))
        self.failing = False
        self.last_ok = received
        self.metrics.scrapes.labels(self.name, "ok").inc()
        self.metrics.scrape_seconds.observe(elapsed)
        self._note_missing(reading)
        return reading

    def _scrape_failed(self, kind: str, message: str) -> None:
        self.failing = True
        self.metrics.scrapes.labels(self.name, kind).inc()
        self.submit(Update(self.name, {F.LAST_ERROR: f"metrics: {message}"[:200], F.URL: self.url}))
        self.log.debug("scrape_failed", kind=kind, error=message)

    def _note_missing(self, reading: Reading) -> None:
        missing = set(reading.missing)
        if missing == self.missing:
            return
        for fname in METRIC_FIELDS:
            self.metrics.field_missing.labels(self.name, fname).set(1 if fname in missing else 0)
        if missing - self.missing:
            self.log.info("fields_missing", fields=sorted(missing - self.missing))
        if self.missing - missing:
            self.log.info("fields_found", fields=sorted(self.missing - missing))
        self.missing = missing

    def check_health(self) -> bool:
        s = self.settings
        try:
            check_health(self.conn, s.health_path, s.timeout_s)
            ok, error = True, ""
            self.metrics.health_checks.labels(self.name, "ok").inc()
        except FetchError as exc:
            ok, error = False, f"health: {exc}"
            self.metrics.health_checks.labels(self.name, exc.kind).inc()
        changed = self.health.observe(ok)
        fields = self.health.fields()
        fields[F.URL] = self.url
        if error:
            fields[F.LAST_ERROR] = error[:200]
        self.submit(Update(self.name, fields))
        if changed:
            self.metrics.up.labels(self.name).set(_HEALTH_VALUE[self.health.state])
            log = self.log.warning if self.health.state == F.HEALTH_DOWN else self.log.info
            log(
                "health_changed",
                health=self.health.state,
                fails=self.health.fails,
                error=error or None,
            )
        return ok

    def refresh_models(self) -> list[str] | None:
        try:
            ids = get_models(self.conn, self.settings.timeout_s)
        except FetchError as exc:
            # Keep the last list: models_at shows its age.
            self.log.debug("models_failed", kind=exc.kind, error=str(exc))
            return None
        if ids is None:
            self.submit(Update(self.name, {}, (F.MODELS, F.MODELS_AT)))
        else:
            self.submit(Update(self.name, {F.MODELS: ",".join(ids)}, models_mono=time.monotonic()))
        return ids

    def once(self) -> dict[str, Any]:
        """Scrape everything once without Redis (``llmlbd collector --once``)."""
        out: dict[str, Any] = {"url": self.url}
        updates: list[Update] = []
        submit, self.submit = self.submit, updates.append
        try:
            self.check_health()
            reading = self.scrape_metrics()
            models = self.refresh_models()
        finally:
            self.submit = submit
            self.conn.close()
        for u in updates:
            out.update(u.fields)
        out[F.HEALTH] = self.health.state
        if reading is not None:
            out["missing"] = reading.missing
            out["sources"] = reading.used
        if models is not None:
            out[F.MODELS] = ",".join(models)
        return out


def next_tick(previous: float, interval: float, now: float) -> tuple[float, int]:
    """When to read next, and how many ticks passed while busy are skipped.

    On time, the next tick of the schedule. Late (the previous read ran past
    the tick, or waited that long for its turn): read again at once, and skip
    every other tick that passed, never queue them. An overloaded collector
    thus reads each backend once per round of its first-come, first-served
    turns, less often than configured but never with a backlog, so every
    backend's age stays about backends / achieved reads per second.
    """
    planned = previous + interval
    if planned > now:
        return planned, 0
    return now, int((now - planned) // interval)
