"""The collector's KV-event subscribers: one thread per backend that publishes KV events."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from collector.kv_events import LIVE_TTL_MS, KVSubscriber
from collector.metrics import CollectorMetrics
from llmlbd.config.kv_events import KVEventsSource
from llmlbd.state.keys import PoolKeys
from llmlbd.state.kv_index import KVIndexWriter

__all__ = ["KVEventHub"]


class KVEventHub:
    """The collector's subscribers: one thread per backend that publishes KV events."""

    def __init__(
        self,
        client: Any,
        keys: PoolKeys,
        owner: str,
        sources: dict[str, KVEventsSource],
        metrics: CollectorMetrics,
        is_owned: Callable[[str], bool],
        max_blocks: int,
        silent_clear_s: float,
    ) -> None:
        self.client = client
        self.keys = keys
        self.owner = owner
        self.sources = sources
        self.metrics = metrics
        self.is_owned = is_owned
        self.max_blocks = max_blocks
        self.silent_clear_s = silent_clear_s
        self.threads: dict[str, tuple[threading.Thread, threading.Event]] = {}

    def writer(self, name: str) -> KVIndexWriter:
        return KVIndexWriter(self.client, self.keys, name, self.owner, self.max_blocks, LIVE_TTL_MS)

    def add(self, name: str) -> None:
        source = self.sources.get(name)
        if source is None or name in self.threads:
            return
        subscriber = KVSubscriber(
            name, source, self.writer(name), self.metrics, self.is_owned, self.silent_clear_s
        )
        stop = threading.Event()
        thread = threading.Thread(
            target=subscriber.run, args=(stop,), name=f"kv-{name}", daemon=True
        )
        thread.start()
        self.threads[name] = (thread, stop)

    def remove(self, name: str) -> None:
        """The backend left the pool: stop listening and drop its index."""
        entry = self.threads.pop(name, None)
        if entry is None:
            return
        thread, stop = entry
        stop.set()
        thread.join(2.0)
        try:
            self.writer(name).clear("removed")
            self.metrics.kv_resyncs.labels(name, "removed").inc()
        except Exception:
            self.metrics.redis_errors.labels("kv_index").inc()

    def stop(self) -> None:
        for _, stop in self.threads.values():
            stop.set()
        for thread, _ in self.threads.values():
            thread.join(2.0)
        self.threads.clear()
