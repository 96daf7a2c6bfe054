"""Batched writes of backend fields to Redis, fenced by ownership.

Workers hand an `Update` to `Publisher.submit` and go back to scraping; one
publisher thread drains the queue and sends everything waiting as one
pipeline of ``collector_publish`` script calls. At 10 Hz x 256 backends that
is a few dozen round trips a second instead of 2,560, and a slow Redis
delays writes without ever blocking a scrape. Ages are measured on the
monotonic clock and converted to ``scraped_at`` on Redis's clock at send
time, so the time an update waits in the queue counts in its age.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from collector.logs import get_logger
from collector.metrics import CollectorMetrics
from llmlbd.state.collectors import CollectorLeases, FieldWrite

__all__ = ["Update", "Publisher"]

_MAX_BATCH = 1024


@dataclass
class Update:
    backend: str
    fields: dict[str, str] = field(default_factory=dict)
    delete: tuple[str, ...] = ()
    scraped_mono: float | None = None  # when the page was read (sets scraped_at)
    models_mono: float | None = None  # when /v1/models was read (sets models_at)


class Publisher:
    """One thread that sends the workers' updates in pipelines."""

    def __init__(
        self,
        leases: CollectorLeases,
        metrics: CollectorMetrics,
        on_not_owner: Callable[[str], None],
    ) -> None:
        self.leases = leases
        self.metrics = metrics
        self.on_not_owner = on_not_owner
        self.queue: queue.Queue[Update | None] = queue.Queue()
        self.first_write = threading.Event()  # set after the first batch reached Redis
        self.log = get_logger(component="publisher")
        self._failing = False

    def submit(self, update: Update) -> None:
        self.queue.put(update)

    def run(self, stop: threading.Event) -> None:
        """Thread body: send batches until *stop*, then whatever is still queued."""
        while True:
            try:
                first = self.queue.get(timeout=0.2)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            batch = [first] if first is not None else []
            while len(batch) < _MAX_BATCH:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    batch.append(item)
            if batch:
                try:
                    self.send(batch)
                except Exception:  # a bug must not stop every write for good
                    self.metrics.publishes.labels("error").inc(len(batch))
                    self.log.exception("publish_error", dropped=len(batch))
            if first is None and stop.is_set() and self.queue.empty():
                return

    def wake(self) -> None:
        self.queue.put(None)

    def send(self, batch: list[Update]) -> None:
        now = time.monotonic()
        writes = [
            FieldWrite(
                u.backend,
                u.fields,
                u.delete,
                scraped_age_ms=None if u.scraped_mono is None else (now - u.scraped_mono) * 1000,
                models_age_ms=None if u.models_mono is None else (now - u.models_mono) * 1000,
            )
            for u in batch
        ]
        try:
            results = self.leases.publish_many(writes)
        except Exception as exc:  # redis ConnectionError/TimeoutError, or a cluster error
            self.metrics.redis_errors.labels("publish").inc()
            self.metrics.publishes.labels("error").inc(len(batch))
            if not self._failing:
                self.log.warning("publish_failed", error=str(exc), dropped=len(batch))
            self._failing = True
            return
        if self._failing:
            self.log.info("publish_recovered")
            self._failing = False
        ok = 0
        for u, result in zip(batch, results):
            if isinstance(result, Exception):
                self.metrics.publishes.labels("error").inc()
                self.log.error("publish_script_error", backend=u.backend, error=str(result))
            elif result:
                ok += 1
            else:
                self.metrics.publishes.labels("not_owner").inc()
                self.on_not_owner(u.backend)
        self.metrics.publishes.labels("ok").inc(ok)
        self.first_write.set()
