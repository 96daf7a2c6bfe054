"""Read a pool's shared state in one round trip, for policies that decide in Python."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from llmlbd.state import backend_fields as F
from llmlbd.state.keys import PoolKeys
from llmlbd.state.scripts import ScriptSet, reply_text
from llmlbd.state.types import Backend, BackendState, parse_ms

__all__ = ["read_pool", "PoolSnapshot", "SOON_MS"]

# The first sooner re-read while a member has no metrics yet (PoolSnapshot).
SOON_MS = 25


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {reply_text(flat[i]): reply_text(flat[i + 1]) for i in range(0, len(flat), 2)}


def _states(
    backends: Sequence[Backend],
    now_ms: int,
    inflight: dict[str, str],
    drained: set[str],
    metrics_of: dict[str, dict[str, str]],
    ejected: dict[str, str],
) -> list[BackendState]:
    states = []
    for backend in backends:
        metrics = metrics_of.get(backend.name, {})
        scraped_at = metrics.get(F.SCRAPED_AT)
        age = now_ms - int(float(scraped_at)) if scraped_at else None
        states.append(
            BackendState(
                backend,
                inflight=int(inflight.get(backend.name, 0)),
                drained=backend.name in drained,
                metrics=metrics,
                metrics_age_ms=age,
                ejected_until_ms=parse_ms(ejected.get(backend.name)),
            )
        )
    return states


def read_pool(client: Any, keys: PoolKeys, backends: Sequence[Backend]) -> list[BackendState]:
    """Every backend with its in-flight count, drained flag, ejection, metrics and their age.

    Metric age uses Redis's clock (TIME), the clock the collector's
    `scraped_at` is compared with, so no host's clock skew matters.
    """
    reply = ScriptSet(client).snapshot(
        keys=[keys.inflight, keys.drained, *(keys.backend(b.name) for b in backends)]
    )
    now_ms, inflight, drained = int(reply[0]), _pairs(reply[1]), set(map(reply_text, reply[2]))
    metrics_of = {b.name: _pairs(flat) for b, flat in zip(backends, reply[4:])}
    return _states(backends, now_ms, inflight, drained, metrics_of, _pairs(reply[3]))


class PoolSnapshot:
    """One worker's copy of the pool's metrics, with exact in-flight counts and drains.

    The metrics hashes are re-read at most every *refresh_ms* and only when the
    collector published since (the pool's `metrics_version`): they are scrape-old
    anyway. In-flight counts and the drained set are read on every call, in the
    same single round trip (snapshot_live.lua), with the running outlier ejections; a
    re-read takes a second one.
    Metric ages are computed on Redis's clock at each call, so staleness rules see
    the true age of what this copy holds. When a held metric is older than
    *stale_after_ms* but the collector has published since, the copy is re-read at
    once: the copy's own lag must never make fresh metrics look stale.

    A member the copy holds no metrics for (no ``scraped_at``: a fleet starting, a
    backend not scraped yet) makes the copy re-read sooner after a publish: first
    after *soon_ms*, then at intervals doubling up to the refresh interval, so a
    copy read while only some backends had been scraped catches up within tens of
    milliseconds, and a member that never answers costs a handful of extra re-reads
    (about log2(refresh_ms / soon_ms)) per membership change, not one per decision.
    """

    def __init__(
        self,
        client: Any,
        keys: PoolKeys,
        refresh_ms: int,
        stale_after_ms: int | None = None,
        soon_ms: int = SOON_MS,
    ) -> None:
        self.client = client
        self.keys = keys
        self.refresh_s = refresh_ms / 1000
        self.stale_after_ms = stale_after_ms
        self.scripts = ScriptSet(client)
        self._version = ""
        self._checked_at = -math.inf  # monotonic: a per-worker rate limit, not an age
        self._metrics: dict[str, dict[str, str]] = {}
        # While a member has no metrics: the interval before the next re-read (doubles).
        self.soon_s = min(soon_ms / 1000, self.refresh_s)
        self._soon_next_s = self.soon_s
        self.metrics_reads = 0  # how many calls re-read the metrics (observability, tests)

    def read(self, backends: Sequence[Backend], chunk: int = 0) -> list[BackendState]:
        """*backends* with exact in-flight counts, drains and ejections, and this copy's
        metrics, re-read first when due (see the class). With *chunk*, a re-read asks
        for that many hashes per round trip: each reply is parsed while the others
        wait, so a background re-read of a large pool lets a worker's other greenlets
        run between the round trips (the metrics are scrape-old: no need to read them
        in one step)."""
        k = self.keys
        live = [k.inflight, k.drained, k.metrics_version]
        reply = self.scripts.snapshot_live(keys=live, args=[self._version])
        now = time.monotonic()
        names = [b.name for b in backends]
        unknown = any(n not in self._metrics for n in names)
        published = reply_text(reply[3]) != self._version
        if unknown or (published and self._due(now, int(reply[0]), names)):
            # A second round trip, at most once per refresh (or for a new member): passing
            # every hash's key on each call would itself cost O(pool size).
            self._note_reread(now, unknown, names)
            step = chunk or len(backends) or 1
            version = None
            for start in range(0, len(backends), step):
                part = backends[start : start + step]
                reply = self.scripts.snapshot_live(
                    keys=live + [k.backend(b.name) for b in part], args=[""]
                )
                # The version before the first hash was read: a publish during the
                # chunks is seen by the next call.
                version = reply_text(reply[3]) if version is None else version
                self._metrics.update((b.name, _pairs(flat)) for b, flat in zip(part, reply[5:]))
            if version is not None:
                self._version = version
            self.metrics_reads += 1
        now_ms, inflight = int(reply[0]), _pairs(reply[1])
        drained = set(map(reply_text, reply[2]))
        return _states(backends, now_ms, inflight, drained, self._metrics, _pairs(reply[4]))

    def read_some(self, backends: Sequence[Backend]) -> tuple[list[BackendState], bool]:
        """*backends* with exact in-flight counts, drains and ejections and this copy's metrics.

        One round trip of O(len(backends)) (snapshot_some.lua), whatever the pool
        size; the metrics are never re-read here. The flag says the copy is due a
        re-read (``read`` of the whole pool): the collector published since and
        the refresh interval passed, or one of *backends* holds metrics that are
        stale while the collector has published since, or is not in the copy.
        """
        k = self.keys
        names = [b.name for b in backends]
        reply = self.scripts.snapshot_some(
            keys=[k.inflight, k.drained, k.metrics_version], args=names
        )
        now_ms = int(reply[0])
        inflight = {n: reply_text(c) for n, c in zip(names, reply[1]) if c is not None}
        drained = {n for n, flag in zip(names, reply[2]) if int(flag)}
        published = reply_text(reply[3]) != self._version
        unknown = any(n not in self._metrics for n in names)
        stale = published and self._due(time.monotonic(), now_ms, names)
        ejected = _pairs(reply[4])
        return _states(
            backends, now_ms, inflight, drained, self._metrics, ejected
        ), unknown or stale

    def _due(self, now: float, now_ms: int, names: Sequence[str]) -> bool:
        """Whether, the collector having published since, the copy should be re-read: the
        refresh interval passed, a held metric of *names* is stale, or one of *names* has
        no metrics in the copy and the (doubling) sooner interval passed."""
        since = now - self._checked_at
        if since >= self.refresh_s or self._holds_stale(now_ms, names):
            return True
        return since >= self._soon_next_s and self._lacks_metrics(names)

    def _note_reread(self, now: float, new_member: bool, names: Sequence[str]) -> None:
        """Book a re-read at *now*: the sooner interval restarts for a new member, and
        doubles (up to the refresh interval) when one was already waiting for metrics."""
        if new_member:
            self._soon_next_s = self.soon_s
        elif now - self._checked_at < self.refresh_s and self._lacks_metrics(names):
            self._soon_next_s = min(2 * self._soon_next_s, self.refresh_s)
        self._checked_at = now

    def _lacks_metrics(self, names: Sequence[str]) -> bool:
        return any(F.SCRAPED_AT not in self._metrics.get(n, {}) for n in names)

    def _holds_stale(self, now_ms: int, names: Sequence[str] | None = None) -> bool:
        """Whether a metric this copy holds (of *names*, default all) is stale at *now_ms*."""
        if self.stale_after_ms is None:
            return False
        edge = now_ms - self.stale_after_ms
        held = (
            self._metrics.values() if names is None else [self._metrics.get(n, {}) for n in names]
        )
        for metrics in held:
            scraped = metrics.get(F.SCRAPED_AT)
            if scraped and scraped.isdigit() and int(scraped) <= edge:
                return True
        return False
