"""Coalesced, batched writes of backend fields to Redis, fenced by ownership.

Workers hand an `Update` to `Publisher.submit` and go back to scraping. The
publisher keeps **at most one pending update per backend**: a newer update
for a backend merges into the one still waiting (later values win, deletes
and sets cancel out in order), so the pending work is bounded by the number
of backends however far the publisher falls behind. Every `PUBLISH_EVERY_S`
one thread takes everything pending and sends it as pipelines of
``collector_publish`` script calls. At 10 Hz x 256 backends that is 100
round trips a second instead of 2,560.

Why not a queue: an unbounded queue was the collector's cliff. Once the
publisher thread (one of 257 contending for the GIL) drained slower than
the workers filled it, every update waited behind all older ones and the
ages of every backend's metrics grew without bound (6-18 s measured at
256 x 10 Hz). With coalescing an overloaded publisher sends fewer, fresher
writes instead.

Ages are measured on the monotonic clock and converted to ``scraped_at`` on
Redis's clock at send time, so the time an update waits counts in its age.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from collector.logs import get_logger
from collector.metrics import CollectorMetrics
from llmlbd.state.collectors import CollectorLeases, FieldWrite

__all__ = ["Update", "Publisher", "PUBLISH_EVERY_S"]

# A send every 10 ms adds at most that to an age, and costs 100 wake-ups a
# second whatever the load (one per update, before).
PUBLISH_EVERY_S = 0.01
# Commands per pipeline: one round trip stays a few milliseconds of Redis time.
_MAX_BATCH = 512


@dataclass
class Update:
    backend: str
    fields: dict[str, str] = field(default_factory=dict)
    delete: tuple[str, ...] = ()
    scraped_mono: float | None = None  # when the page was read (sets scraped_at)
    models_mono: float | None = None  # when /v1/models was read (sets models_at)

    def then(self, later: Update) -> Update:
        """This update followed by *later*, as one write with the same end result."""
        fields = {k: v for k, v in self.fields.items() if k not in later.delete}
        fields.update(later.fields)
        delete = tuple(d for d in self.delete if d not in later.fields and d not in later.delete)
        return Update(
            self.backend,
            fields,
            delete + later.delete,
            later.scraped_mono if later.scraped_mono is not None else self.scraped_mono,
            later.models_mono if later.models_mono is not None else self.models_mono,
        )


class Publisher:
    """Pending writes, one per backend, sent by one thread in pipelines."""

    def __init__(
        self,
        leases: CollectorLeases,
        metrics: CollectorMetrics,
        on_not_owner: Callable[[str], None],
    ) -> None:
        self.leases = leases
        self.metrics = metrics
        self.on_not_owner = on_not_owner
        self._pending: dict[str, Update] = {}
        self._lock = threading.Lock()  # a plain lock: submit must stay cheap
        self.first_write = threading.Event()  # set after the first batch reached Redis
        self.log = get_logger(component="publisher")
        self._failing = False
        metrics.pending_writes.set_function(self.pending)

    def submit(self, update: Update) -> None:
        with self._lock:
            waiting = self._pending.get(update.backend)
            if waiting is not None:
                self.metrics.coalesced.inc()
                update = waiting.then(update)
            self._pending[update.backend] = update

    def pending(self) -> int:
        """Backends with a write waiting (never more than the backends)."""
        return len(self._pending)

    def take(self) -> list[Update]:
        with self._lock:
            batch, self._pending = list(self._pending.values()), {}
        return batch

    def run(self, stop: threading.Event) -> None:
        """Thread body: send what is pending every PUBLISH_EVERY_S; after *stop*, once more."""
        while True:
            stopping = stop.wait(PUBLISH_EVERY_S)
            batch = self.take()
            for i in range(0, len(batch), _MAX_BATCH):
                chunk = batch[i : i + _MAX_BATCH]
                try:
                    self.send(chunk)
                except Exception:  # a bug must not stop every write for good
                    self.metrics.publishes.labels("error").inc(len(chunk))
                    self.log.exception("publish_error", dropped=len(chunk))
            if stopping:
                return

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
