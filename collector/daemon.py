"""The collector process: ownership claims, worker threads, signals, READY=1.

One OS thread per backend (or one greenlet with ``--concurrency gevent``):
a backend that hangs delays only its own thread, and blocking I/O releases
the GIL, so pages are copied while other threads parse.

Start-up order: connect to Redis, start the own /metrics server, start one
worker per configured backend (idle until owned), the publisher and the
reaper, then claim. systemd is told READY=1 once the first claim succeeded
and, if this collector owns any backend, the first batch of fields reached
Redis. Shutdown (SIGTERM/SIGINT): stop the workers, flush the publisher,
release every owned backend so the other collectors take them at once,
then STOPPING=1. Signal handlers only set a flag; the main loop acts.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
from collections.abc import Iterable
from typing import Any

from collector.logs import configure as configure_logs
from collector.logs import get_logger
from collector.metrics import CollectorMetrics, Freshness
from collector.notify import notify
from collector.pace import Pace
from collector.publish import Publisher
from collector.reaper import Reaper
from collector.slots import FairSlots
from collector.sources import build_plan
from collector.worker import BackendWorker, Settings
from llmlbd.exits import AddressInUse
from llmlbd.state.collectors import CollectorLeases, new_collector_id
from llmlbd.state.health import previous_health
from llmlbd.state.keys import PoolKeys

__all__ = ["Collector", "CollectorGroup", "Shared", "main", "LEASE_MS", "CLAIM_EVERY_S"]

# A dead collector's backends are taken over within LEASE_MS + CLAIM_EVERY_S
# (1.5 s, under the 2 s the design asks for); a live one renews four times per
# lease, so one slow Redis reply does not cost it its backends.
LEASE_MS = 1200
CLAIM_EVERY_S = 0.3
# `llmlbctl backend add/remove` reaches the collector within this.
MEMBERS_EVERY_S = 1.0
# Threads allowed to parse a page at the same time.
PARSE_SLOTS = 2
# Workers allowed to read from their backends at the same time (/metrics with
# its parse, health, models; see BackendWorker._turn). Every runnable thread
# gets an equal share of the GIL, the publisher included: with 32 readers its
# writes waited 180-460 ms (p99) at 256 x 10 Hz, with 8 they waited 90-160 ms
# and more pages were read. 8 places sustain 8 / (time per read) reads per
# second: 8,000/s at 1 ms per read, 1,600/s at 5 ms (a remote fleet).
SCRAPE_SLOTS = 8


def _answer_reloads(signals: list[int], log: Any) -> None:
    """SIGHUP was received: no reload yet, say so once per signal."""
    while signals:
        signals.pop()
        log.warning("reload_unsupported", hint="restart the collector to change its backends")


class Shared:
    """What the pools' collectors of one process share (see `CollectorGroup`)."""

    def __init__(self, metrics: CollectorMetrics) -> None:
        self.metrics = metrics
        self.cpu_slots = FairSlots(PARSE_SLOTS)
        self.scrape_slots = FairSlots(SCRAPE_SLOTS)
        self.stop = threading.Event()


class Collector:
    """One collector process's state for one pool; `run()` blocks until `request_stop()`.

    *pool* is the `PoolSpec` to scrape (default: the config's first, the single-pool
    file's only pool). With *shared*, this collector is one part of a `CollectorGroup`:
    the group serves the /metrics port, watches freshness and pace, tells systemd, and
    its parts share the parse and scrape slots and the stop flag.
    """

    def __init__(
        self,
        config: Any,
        client: Any,
        collector_id: str | None = None,
        metrics: CollectorMetrics | None = None,
        pool: Any = None,
        shared: Shared | None = None,
    ) -> None:
        from llmlbd.config import ConfigError

        self.config = config
        self.client = client
        self.collector_id = collector_id or new_collector_id()
        self.pool = pool if pool is not None else config.pools[0]
        self.grouped = shared is not None
        shared = shared or Shared(metrics or CollectorMetrics())
        self.keys = PoolKeys(self.pool.name)
        try:
            self.plan = build_plan(config.collector.metric_map)
        except ValueError as exc:
            raise ConfigError(f"collector.{exc}") from None
        self.settings = Settings.from_config(config.collector)
        self.metrics = shared.metrics
        self.leases = CollectorLeases(client, self.keys, self.collector_id, LEASE_MS)
        self.publisher = Publisher(self.leases, self.metrics, self._not_owner)
        self.reaper = Reaper(client, self.keys, self.metrics)
        self.owned: frozenset[str] = frozenset()
        self.workers: dict[str, BackendWorker] = {}
        self.kv_events = self._kv_event_hub(config)
        self._worker_stops: dict[str, threading.Event] = {}
        self._worker_threads: dict[str, threading.Thread] = {}
        self._seed = {b.name: b.url for b in self.pool.backends}
        self._members_checked = 0.0
        self._previous: dict[str, tuple[Any, ...]] = {}  # health state left by the last owner
        # Parsing is the only CPU-heavy step. Letting a few threads parse at a
        # time (the rest wait without the GIL) keeps the claim loop and the
        # publisher from queueing behind 256 runnable threads when the
        # collector is overloaded: with every thread contending, the claim
        # loop missed its 1.2 s lease and the collector lost its backends.
        self._cpu_slots = shared.cpu_slots
        self._scrape_slots = shared.scrape_slots
        if not self.grouped:
            self.metrics.watch_freshness(self._freshness, self.settings.stale_after_s)
        self.stop = shared.stop
        self.ready = threading.Event()
        self.log = get_logger(
            collector=self.collector_id, **({"pool": self.pool.name} if self.grouped else {})
        )
        self._threads: list[threading.Thread] = []
        self._last_claim = 0.0
        self._claim_failing = False
        self._metrics_server: Any = None
        self._signals: list[int] = []
        self.pace = Pace(self.metrics, self.log, self.settings.interval_s)
        self._retired = (0, 0)  # scrapes and skipped ticks of removed workers

    def _kv_event_hub(self, config: Any) -> Any:
        """Subscribers to the backends that publish KV events (None when none does)."""
        sources = {b.name: b.kv_events for b in self.pool.backends if b.kv_events is not None}
        if not sources:
            return None
        from collector.kv_hub import KVEventHub

        c = config.collector
        return KVEventHub(
            self.client,
            self.keys,
            self.collector_id,
            sources,
            self.metrics,
            self.is_owned,
            c.kv_index_max_blocks,
            c.kv_silent_clear_s,
        )

    # ownership -------------------------------------------------------------------
    def is_owned(self, name: str) -> bool:
        return name in self.owned

    def _not_owner(self, name: str) -> None:
        """The publish script refused a write: another collector owns *name* now."""
        if name in self.owned:
            self.owned = self.owned - {name}
            self.log.info("ownership_lost", backend=name)

    def claim(self) -> None:
        names = list(self.workers)
        try:
            owned = frozenset(self.leases.claim(names))
        except Exception as exc:  # Redis unreachable: keep scraping what we had...
            self.metrics.redis_errors.labels("claim").inc()
            if not self._claim_failing:
                self.log.warning("claim_failed", error=str(exc))
            self._claim_failing = True
            # ...but not past our lease: by then another collector may own them.
            if self.owned and time.monotonic() - self._last_claim > LEASE_MS / 1000.0:
                self._set_owned(frozenset())
            return
        if self._claim_failing:
            self.log.info("claim_recovered")
        self._claim_failing = False
        self._last_claim = time.monotonic()
        self._set_owned(owned)

    def _set_owned(self, owned: frozenset[str]) -> None:
        before = self.owned
        gained = owned - before
        if gained:
            self._fetch_previous_state(gained)
        self.owned = owned
        if before != owned:
            self.log.info(
                "ownership", owned=len(owned), gained=len(owned - before), lost=len(before - owned)
            )
            for name in owned ^ before:
                if name in self.workers:
                    self.workers[name].wake.set()

    def _fetch_previous_state(self, names: Iterable[str]) -> None:
        """Read, in one round trip, the health state the previous owner left for *names*.

        Done here rather than by each worker: 256 workers taking over at once
        would each want a pooled connection at the same moment.
        """
        try:
            previous = previous_health(self.client, self.keys, list(names))
        except Exception as exc:  # Redis down: those workers start from "unknown"
            self.metrics.redis_errors.labels("restore").inc()
            self.log.warning("restore_failed", error=str(exc))
            return
        self._previous.update(previous)

    def _restore(self, name: str) -> tuple[Any, ...] | None:
        return self._previous.pop(name, None)

    def _freshness(self) -> list[Freshness]:
        owned = self.owned
        return [(name, name in owned, w.last_ok) for name, w in self.workers.items()]

    # life cycle --------------------------------------------------------------------
    def start(self) -> None:
        # A taken port must not stop the scraping (routing needs it, not the collector's
        # own metrics) nor send it into a restart loop under `llmlbd start`: one line says so.
        port = 0 if self.grouped else self.serve_metrics()
        self._spawn("publisher", self.publisher.run, self.stop)
        self._spawn("reaper", self.reaper.run, self.stop)
        self.follow_members(force=True)
        self.log.info(
            "collector_started",
            backends=len(self.workers),
            pool=self.keys.pool,
            metrics_port=port or None,
        )

    def serve_metrics(self) -> int:
        """Start the own /metrics server (a group's, once per process); its port or 0."""
        port = self.config.collector.metrics_port
        if not port:
            return 0
        try:
            self._metrics_server = self._serve_metrics(self.config.collector.metrics_host, port)
        except AddressInUse as exc:
            self.log.error("metrics_port_unavailable", port=port, error=str(exc))
            return 0
        return int(port)

    def _serve_metrics(self, host: str, port: int) -> Any:
        import errno

        from prometheus_client import start_http_server

        try:
            server, _ = start_http_server(port, addr=host, registry=self.metrics.registry)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise AddressInUse(
                "the collector's /metrics",
                f"{host}:{port}",
                "another collector on this host? set collector.metrics_port "
                "(or --metrics-port) to a free port, or 0 to turn it off",
            ) from None
        return server

    def _spawn(self, name: str, target: Any, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=target, args=(stop,), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    # membership --------------------------------------------------------------------
    def follow_members(self, force: bool = False) -> None:
        """Start and stop workers to match the pool's membership (about once a second).

        The config's ``backends`` is the seed; once ``llmlbctl backend add/remove``
        has written the members hash, that hash is the pool (docs/operations.md).
        """
        now = time.monotonic()
        if not force and now - self._members_checked < MEMBERS_EVERY_S:
            return
        self._members_checked = now
        try:
            from llmlbd.state.members import read_members

            members = read_members(self.client, self.keys.members)
        except Exception as exc:  # Redis down: keep the current set (at start: the seed)
            self.metrics.redis_errors.labels("members").inc()
            self.log.debug("members_read_failed", error=str(exc))
            if not force:
                return
            members = None
        wanted = self._seed if members is None else {n: b.url for n, b in members.items()}
        for name in [n for n, w in self.workers.items() if wanted.get(n) != w.url]:
            self._remove_worker(name)
        for name, url in wanted.items():
            if name not in self.workers:
                self._add_worker(name, url)

    def _add_worker(self, name: str, url: str) -> None:
        worker = BackendWorker(
            name,
            url,
            self.settings,
            self.plan,
            self.publisher.submit,
            self.metrics,
            self.is_owned,
            self._restore,
            self._cpu_slots,
            self._scrape_slots,
        )
        stop = threading.Event()
        self.workers[name] = worker
        self._worker_stops[name] = stop
        self._worker_threads[name] = self._spawn(f"worker-{name}", worker.run, stop)
        if self.kv_events is not None:
            self.kv_events.add(name)
        if self.ready.is_set():
            self.log.info("backend_added", backend=name, url=url)

    def _remove_worker(self, name: str) -> None:
        worker = self.workers.pop(name)
        self._retired = (self._retired[0] + worker.scrapes, self._retired[1] + worker.skipped)
        self._worker_stops.pop(name).set()
        worker.wake.set()
        self._threads.remove(self._worker_threads.pop(name))
        self._set_owned(self.owned - {name})
        if self.kv_events is not None:
            self.kv_events.remove(name)
        try:
            self.leases.release([name])
        except Exception as exc:
            self.log.debug("release_failed", backend=name, error=str(exc))
        self.log.info("backend_removed", backend=name)

    def request_stop(self, *_: Any) -> None:
        """Signal-handler safe: only sets flags."""
        self.stop.set()

    def run(self) -> None:
        """Claim every CLAIM_EVERY_S until asked to stop; then shut down cleanly."""
        self.start()
        # Everything alive now (modules, config, workers) lives as long as the
        # process: keep it out of the cyclic GC, whose full passes over it
        # stalled every worker for 70-180 ms at 256 backends.
        gc.freeze()
        try:
            while not self.stop.is_set():
                self.tick()
                self._observe_pace()
                _answer_reloads(self._signals, self.log)
                self.stop.wait(CLAIM_EVERY_S)
        finally:
            self.shutdown()

    def tick(self) -> None:
        """One turn of the main loop: membership, ownership claims, readiness."""
        self.follow_members()
        self.claim()
        self._check_ready()

    def totals(self) -> tuple[int, int]:
        """Scrapes attempted and ticks skipped since start, removed workers included."""
        scrapes, skipped = self._retired
        for worker in list(self.workers.values()):
            scrapes += worker.scrapes
            skipped += worker.skipped
        return scrapes, skipped

    def _observe_pace(self) -> None:
        scrapes, skipped = self.totals()
        self.pace.observe(time.monotonic(), scrapes, skipped, len(self.owned))

    def _check_ready(self) -> None:
        if self.ready.is_set() or self._last_claim == 0.0:
            return
        if self.owned and not self.publisher.first_write.is_set():
            return
        self.ready.set()
        if not self.grouped:
            notify("READY=1")
        self.log.info("collector_ready", owned=len(self.owned))

    def shutdown(self) -> None:
        if not self.grouped:
            notify("STOPPING=1")
        self.halt()
        self.finish()

    def halt(self) -> None:
        """Tell every thread to stop (returns at once; `finish` waits for them)."""
        self.stop.set()
        for name, worker in self.workers.items():
            self._worker_stops[name].set()
            worker.wake.set()
        if self.kv_events is not None:
            self.kv_events.stop()

    def finish(self) -> None:
        """Wait for the threads, give up every owned backend, close the /metrics server."""
        deadline = time.monotonic() + self.settings.timeout_s + 2.0
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        try:
            released = self.leases.leave(list(self.workers))
        except Exception as exc:
            released = 0
            self.log.warning("leave_failed", error=str(exc))
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self.log.info("collector_stopped", released=released)

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        # No reload yet: a changed backend list needs a restart (systemctl restart).
        signal.signal(signal.SIGHUP, self._hup)

    def _hup(self, *_: Any) -> None:
        self._signals.append(signal.SIGHUP)


class CollectorGroup:
    """One collector process for several pools: one `Collector` per pool, one main loop.

    Each part claims its pool's backends through that pool's ownership leases, so
    several collector processes split every pool between them exactly as they split
    one. The group serves the process's /metrics (freshness and pace over every pool),
    handles signals and tells systemd READY=1 once every pool is ready.
    """

    def __init__(
        self,
        config: Any,
        client: Any,
        collector_id: str | None = None,
        metrics: CollectorMetrics | None = None,
    ) -> None:
        self.collector_id = collector_id or new_collector_id()
        self.shared = Shared(metrics or CollectorMetrics())
        self.parts = [
            Collector(config, client, self.collector_id, pool=pool, shared=self.shared)
            for pool in config.pools
        ]
        self.metrics, self.stop = self.shared.metrics, self.shared.stop
        settings = self.parts[0].settings
        self.metrics.watch_freshness(self._freshness, settings.stale_after_s)
        self.ready = threading.Event()
        self.log = get_logger(collector=self.collector_id)
        self.pace = Pace(self.metrics, self.log, settings.interval_s)
        self._signals: list[int] = []

    def _freshness(self) -> Iterable[Freshness]:
        # A server listed in two pools is scraped once per pool: report it once, owned
        # if this process scrapes it for either pool.
        found: dict[str, Freshness] = {}
        for part in self.parts:
            for entry in part._freshness():
                if entry[0] not in found or (entry[1] and not found[entry[0]][1]):
                    found[entry[0]] = entry
        return list(found.values())

    def request_stop(self, *_: Any) -> None:
        """Signal-handler safe: only sets flags."""
        self.stop.set()

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, lambda *_: self._signals.append(signal.SIGHUP))

    def run(self) -> None:
        port = self.parts[0].serve_metrics()
        for part in self.parts:
            part.start()
        self.log.info(
            "collector_group_started",
            pools=[part.keys.pool for part in self.parts],
            metrics_port=port or None,
        )
        gc.freeze()  # as in Collector.run
        try:
            while not self.stop.is_set():
                for part in self.parts:
                    part.tick()
                if not self.ready.is_set() and all(part.ready.is_set() for part in self.parts):
                    self.ready.set()
                    notify("READY=1")
                    self.log.info("collector_ready", pools=len(self.parts))
                totals = [part.totals() for part in self.parts]
                self.pace.observe(
                    time.monotonic(),
                    sum(scrapes for scrapes, _ in totals),
                    sum(skipped for _, skipped in totals),
                    sum(len(part.owned) for part in self.parts),
                )
                _answer_reloads(self._signals, self.log)
                self.stop.wait(CLAIM_EVERY_S)
        finally:
            notify("STOPPING=1")
            for part in self.parts:
                part.halt()
            for part in self.parts:
                part.finish()


def main(
    config_path: str | None,
    collector_id: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> int:
    """Run the collector until SIGTERM/SIGINT; the entry `llmlbd start` may call in a child.

    Returns the process exit status. Call it in a fresh process (after
    fork); it installs signal handlers and starts threads.
    """
    from llmlbd.config import load_config
    from llmlbd.state.client import connect

    config = load_config(config_path)
    if overrides:
        config.with_overrides(**overrides)
    configure_logs(config.logging.level, config.logging.format)
    client = connect(config)
    collector: Collector | CollectorGroup
    if len(config.pools) == 1:
        collector = Collector(config, client, collector_id)
    else:
        collector = CollectorGroup(config, client, collector_id)
    collector.install_signals()
    collector.run()
    try:
        client.close()
    except Exception:
        pass
    return 0
