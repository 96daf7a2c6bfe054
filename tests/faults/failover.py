"""Redis failover under load: three llmlbd replicas on one Redis Cluster or Sentinel group.

`Replicas` starts three real ``llmlbd start`` (2 gunicorn workers each, the
first with the collector) on a `ClusterDeployment` or a `SentinelGroup`
(tests/topologies.py) and 3 sims at real speed. A scenario runs a steady
mixed load through all three replicas, kills (or pauses) the Redis master
that holds the pool, lets the cluster or the Sentinels promote a replica,
and returns a `Report` (tests/faults/report.py) plus a `Timeline` of what an
operator sees: /readyz of every replica sampled every 100 ms, the
``redis_unavailable`` / ``redis_recovered`` log lines, and the fallback
decisions and Redis errors counted by each replica's /metrics.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
import requests
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel

from tests.faults.load import Load, Outcome
from tests.faults.report import BASE_BOUND_S, Report
from tests.faults.world import LEASE_TTL_S, READ_TIMEOUT_S, REDIS_TIMEOUT_S
from tests.harness import LLMLBD, free_port, wait_until
from tests.simfleet import SimFleet
from tests.topologies import ClusterDeployment, SentinelGroup

POOL = "default"
INFLIGHT = f"llmlb:{{{POOL}}}:inflight"
LEASES = f"llmlb:{{{POOL}}}:leases"

# A request that meets the failover waits at most a few socket timeouts (its pick, its
# release, one reconnect) before the local fallback or the retry of its release takes over.
FAILOVER_BOUND_S = BASE_BOUND_S + 4 * REDIS_TIMEOUT_S


class Replicas:
    """Three llmlbd replicas sharing one Redis deployment, and the sims behind them."""

    def __init__(
        self,
        topology: ClusterDeployment | SentinelGroup,
        replicas: int = 3,
        workers: int = 2,
        fleet: Any = None,
        collector: bool = True,
        read_timeout_s: float = READ_TIMEOUT_S,
    ):
        """*fleet*: started backends with .names, .urls and .stop() (StubBackends), else
        3 sims started here. *collector*: the first replica runs one."""
        self.topology = topology
        self.count = replicas
        self.workers = workers
        self.own_fleet = fleet is None
        self.fleet = SimFleet(3) if fleet is None else fleet
        self.collector = collector
        self.read_timeout_s = read_timeout_s
        self.proxies: list[LLMLBD] = []

    def redis_config(self) -> dict[str, Any]:
        common = {"socket_timeout_s": REDIS_TIMEOUT_S}
        if isinstance(self.topology, ClusterDeployment):
            return {"mode": "cluster", "url": self.topology.url, **common}
        return {
            "mode": "sentinel",
            "sentinels": self.topology.hosts,
            "sentinel_master": self.topology.name,
            **common,
        }

    def config(self, collector: bool) -> dict[str, Any]:
        return {
            "redis": self.redis_config(),
            "backends": [{"name": n, "url": u} for n, u in zip(self.fleet.names, self.fleet.urls)],
            "server": {"lease_ttl_s": LEASE_TTL_S, "read_timeout_s": self.read_timeout_s},
            "collector": {
                "enabled": collector,
                "interval_ms": 200,
                "health_interval_ms": 200,
                "metrics_port": free_port(),
            },
        }

    def start(self) -> Replicas:
        try:
            if self.own_fleet:
                self.fleet.start()
            self.proxies = [
                LLMLBD(
                    self.config(self.collector and i == 0),
                    workers=self.workers,
                    name=f"replica{i}",
                    wait=False,
                )
                for i in range(self.count)
            ]
            for proxy in self.proxies:
                proxy.wait_ready(timeout=60)
            if self.collector:
                self.wait_collected()
        except BaseException:
            self.stop()
            raise
        return self

    def admin(self) -> Any:
        """A plain redis-py client on the deployment (the test's own, not llmlbd's)."""
        if isinstance(self.topology, ClusterDeployment):
            return RedisCluster.from_url(
                self.topology.startup_url(), decode_responses=True, socket_timeout=2
            )
        hosts = [(h.split(":")[0], int(h.split(":")[1])) for h in self.topology.hosts]
        return Sentinel(hosts, socket_timeout=2).master_for(
            self.topology.name, decode_responses=True, socket_timeout=2
        )

    def _read(self, key: str) -> dict[str, str]:
        client = self.admin()
        try:
            return dict(client.hgetall(key))
        finally:
            client.close()

    def inflight(self) -> dict[str, int]:
        return {name: int(count) for name, count in self._read(INFLIGHT).items() if int(count)}

    def leases(self) -> dict[str, str]:
        return self._read(LEASES)

    def wait_collected(self, timeout: float = 30.0) -> None:
        def published() -> bool:
            client = self.admin()
            try:
                return all(
                    client.exists(f"llmlb:{{{POOL}}}:backend:{name}") for name in self.fleet.names
                )
            except redis.RedisError:
                return False
            finally:
                client.close()

        wait_until(published, timeout=timeout, message="collector published every backend")

    def wait_converged(self, timeout: float = LEASE_TTL_S + 15) -> float:
        """Until no count and no lease is left; seconds. Raises with what leaked."""
        started = time.monotonic()

        def empty() -> bool:
            try:
                return not self.inflight() and not self.leases()
            except redis.RedisError:
                return False

        try:
            wait_until(empty, timeout=timeout, interval=0.1)
        except TimeoutError:
            raise AssertionError(
                f"in-flight counts leaked: {self.inflight()} leases {self.leases()}"
            ) from None
        return time.monotonic() - started

    def metric(self, name: str) -> float:
        """*name* summed over every replica's /metrics (all label sets)."""
        total = 0.0
        for proxy in self.proxies:
            text = requests.get(f"{proxy.url}/metrics", timeout=5).text
            for line in text.splitlines():
                if line.startswith(name) and not line.startswith("#"):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        for proxy in self.proxies:
            proxy.stop()
        if self.own_fleet:
            self.fleet.stop()

    def __enter__(self) -> Replicas:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Timeline:
    """What an operator sees during one failover, in seconds from the fault."""

    fault_at: float  # monotonic
    promoted_s: float = 0.0  # the topology named a new master
    readyz: list[tuple[float, int, int]] = field(default_factory=list)  # (t, replica, status)
    fallback_decisions: float = 0.0
    redis_errors: float = 0.0
    log_lines: dict[str, int] = field(default_factory=dict)  # event -> count over replicas
    # Per worker: from its first redis_unavailable to its last redis_recovered log line.
    fallback_s: list[float] = field(default_factory=list)
    converged_s: float = 0.0  # from the end of the load until no count and no lease is left
    repaired: dict[str, int] = field(default_factory=dict)  # leases_repaired: released, restored

    def not_ready(self) -> tuple[float, float] | None:
        """(first, last) moment any replica's /readyz was not 200, or None."""
        bad = [t for t, _, status in self.readyz if status != 200]
        return (min(bad), max(bad)) if bad else None

    def row(self) -> dict[str, object]:
        """The columns bench/faults.py adds to a Report's row."""
        window = self.not_ready()
        return {
            "promoted after (s)": round(self.promoted_s, 1),
            "/readyz not 200 (s)": "never"
            if window is None
            else f"{window[0]:.1f}-{window[1]:.1f}",
            "workers on the fallback (s)": _span(self.fallback_s),
            "fallback decisions": int(self.fallback_decisions),
            "leases released / restored by the audit": (
                f"{self.repaired.get('released', 0)} / {self.repaired.get('restored', 0)}"
            ),
            "Redis errors": int(self.redis_errors),
        }

    def summary(self) -> str:
        window = self.not_ready()
        ready = (
            "always 200" if window is None else f"not 200 from {window[0]:.1f} to {window[1]:.1f} s"
        )
        logs = ", ".join(f"{event} x{count}" for event, count in sorted(self.log_lines.items()))
        return (
            f"promoted after {self.promoted_s:.1f} s; /readyz {ready}; "
            f"workers on the fallback {_span(self.fallback_s)} s; "
            f"counts at 0 {self.converged_s:.1f} s after the load; "
            f"{self.fallback_decisions:.0f} fallback decisions, {self.redis_errors:.0f} Redis "
            f"errors; logs: {logs or 'none'}"
        )


def _span(values: list[float]) -> str:
    return "none" if not values else f"{min(values):.1f}-{max(values):.1f}"


class ReadyzProbe:
    """Samples every replica's /readyz every 100 ms in a thread."""

    def __init__(self, replicas: Replicas, since: float) -> None:
        self.replicas = replicas
        self.since = since
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for index, proxy in enumerate(self.replicas.proxies):
                try:
                    status = requests.get(f"{proxy.url}/readyz", timeout=2).status_code
                except requests.RequestException:
                    status = 0
                self.samples.append((time.monotonic() - self.since, index, status))
            self._stop.wait(0.1)

    def stop(self) -> list[tuple[float, int, int]]:
        self._stop.set()
        self._thread.join(5)
        return self.samples


EVENTS = (
    "redis_unavailable",
    "redis_recovered",
    "leases_repaired",
    "leases_reaped",
    "maintain_failed",
    "retire_failed",
)


def repaired(replicas: Replicas, since_chars: list[int]) -> dict[str, int]:
    """The released and restored counts of every leases_repaired line, summed."""
    sums = {"released": 0, "restored": 0}
    for proxy, offset in zip(replicas.proxies, since_chars):
        for line in proxy.log()[offset:].splitlines():
            if '"leases_repaired"' in line:
                record = json.loads(line)
                for key in sums:
                    sums[key] += int(record.get(key, 0))
    return sums


def fallback_spans(replicas: Replicas, since_chars: list[int]) -> list[float]:
    """Per worker, seconds from its first redis_unavailable to its last redis_recovered."""
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for proxy, offset in zip(replicas.proxies, since_chars):
        for line in proxy.log()[offset:].splitlines():
            if "redis_unavailable" not in line and "redis_recovered" not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            when = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
            if record["event"] == "redis_unavailable":
                first.setdefault(record["pid"], when)
            elif record["event"] == "redis_recovered":
                last[record["pid"]] = when
    return [last[pid] - first[pid] for pid in first if pid in last]


def count_events(replicas: Replicas, since_chars: list[int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for proxy, offset in zip(replicas.proxies, since_chars):
        text = proxy.log()[offset:]
        for event in EVENTS:
            found = len(re.findall(f'"event": ?"{event}"', text))
            if found:
                counts[event] = counts.get(event, 0) + found
        if "Traceback" in text:
            counts["Traceback"] = counts.get("Traceback", 0) + text.count("Traceback")
    return counts


def failover_under_load(
    replicas: Replicas,
    fault: str,
    clients: int = 6,
    seconds: float = 8.0,
) -> tuple[Report, Timeline]:
    """*fault*: "cluster_kill" (SIGKILL the master of the pool's slot), "sentinel_kill"
    (SIGKILL the master), "sentinel_pause" (SIGSTOP it until a replica is promoted, then
    SIGCONT: it comes back as a stale master that the Sentinels demote)."""
    topology = replicas.topology
    per_replica = max(1, clients // replicas.count)
    loads = [Load(proxy.url, per_replica).start() for proxy in replicas.proxies]
    offsets = [len(proxy.log()) for proxy in replicas.proxies]
    fallback_before = replicas.metric("llmlbd_fallback_decisions_total")
    errors_before = replicas.metric("llmlbd_redis_errors_total")
    for load in loads:
        load.wait_for(per_replica)
    time.sleep(seconds / 4)

    fault_at = time.monotonic()
    probe = ReadyzProbe(replicas, fault_at)
    if isinstance(topology, ClusterDeployment):
        old = topology.master_of(INFLIGHT)
        old.kill()
        promoted_s = topology.wait_promoted(INFLIGHT, old)
    else:
        old = topology.master
        if fault == "sentinel_pause":
            old.pause()
            try:
                promoted_s = topology.wait_promoted(old)
            finally:
                old.resume()
        else:
            old.kill()
            promoted_s = topology.wait_promoted(old)
    # Keep the load on until *seconds* in all and at least 3 s after the promotion.
    remaining = max(seconds * 3 / 4 - (time.monotonic() - fault_at), 3.0)
    time.sleep(remaining)
    results: list[Outcome] = []
    for load in loads:
        results += load.stop()
    timeline = Timeline(fault_at=fault_at, promoted_s=promoted_s)
    report = Report(
        {
            "cluster_kill": "Redis Cluster master SIGKILLed, replica promoted",
            "sentinel_kill": "Sentinel master SIGKILLed, replica promoted",
            "sentinel_pause": "Sentinel master paused (SIGSTOP) until promoted",
        }[fault],
        clients,
        results,
        "none: local fallback",
    )
    report.bound_s = FAILOVER_BOUND_S
    try:
        timeline.converged_s = replicas.wait_converged()
    except AssertionError as exc:
        report.leaked = replicas.inflight()
        report.broken.append(str(exc))
    timeline.readyz = probe.stop()
    report.recover_s = _ready_again(timeline)
    timeline.fallback_decisions = (
        replicas.metric("llmlbd_fallback_decisions_total") - fallback_before
    )
    timeline.redis_errors = replicas.metric("llmlbd_redis_errors_total") - errors_before
    timeline.log_lines = count_events(replicas, offsets)
    timeline.fallback_s = fallback_spans(replicas, offsets)
    timeline.repaired = repaired(replicas, offsets)
    if "Traceback" in timeline.log_lines:
        report.broken.append(f"a replica logged a traceback: {timeline.log_lines}")
    return report, timeline


def _ready_again(timeline: Timeline) -> float:
    """Seconds from the fault until every replica's /readyz stayed 200."""
    window = timeline.not_ready()
    return 0.0 if window is None else window[1] + 0.1
