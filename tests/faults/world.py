"""The world a fault test breaks: Redis, `llmlbd start` (2 workers + the collector) and sims.

Everything is real and on free ports: a redis-server, ``llmlbd start`` with
its collector as a child, and ``llmlbd sim`` backends with the H100 profile
at real speed (a 24-token answer takes ~0.2 s, so requests are in flight
when the fault hits). Tests share one world where the fault leaves it whole
and take the pieces they break back to health themselves.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import requests

from llmlbd.embedded import EmbeddedRedis
from llmlbd.state import backend_fields as F
from tests.harness import LLMLBD, Proc, free_port, python_module, wait_for_http, wait_until
from tests.simfleet import SimFleet

POOL = "default"
# Short timeouts so that faults resolve inside a test's seconds, not a production minute.
LEASE_TTL_S = 3.0
READ_TIMEOUT_S = 3.0
REDIS_TIMEOUT_S = 0.5


def children_of(pid: int) -> list[int]:
    """Every live descendant of *pid* (from /proc: no psutil needed)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue  # a zombie is dead; it only waits for its parent's wait()
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class World:
    def __init__(self, backends: int = 3, workers: int = 2, redis_args: list[str] | None = None):
        self.redis = EmbeddedRedis(
            runtime_dir=tempfile.mkdtemp(prefix="llmlbd-faults-redis-"),
            port=free_port(),
            # DEBUG SLEEP is how a test makes Redis slow.
            extra_args=["--enable-debug-command", "local", *(redis_args or [])],
        )
        self.fleet = SimFleet(backends)
        self.proxy: LLMLBD | None = None
        self.workers = workers
        self.extra: list[Any] = []

    def config(self) -> dict:
        return {
            "redis": {"url": self.redis.url, "socket_timeout_s": REDIS_TIMEOUT_S},
            "backends": [{"name": n, "url": u} for n, u in zip(self.fleet.names, self.fleet.urls)],
            "server": {"lease_ttl_s": LEASE_TTL_S, "read_timeout_s": READ_TIMEOUT_S},
            "collector": {
                "enabled": True,
                "interval_ms": 200,
                "health_interval_ms": 200,
                "metrics_port": free_port(),
            },
        }

    def start(self) -> World:
        try:
            self.redis.start()
            self.fleet.start()
            self.proxy = LLMLBD(self.config(), workers=self.workers, name="faults")
            self.wait_collected()
        except BaseException:
            if self.proxy is not None:
                print(self.proxy.log()[-4000:])
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url, decode_responses=True, socket_timeout=5)

    def inflight(self) -> dict[str, int]:
        with self.client() as client:
            raw = client.hgetall(f"llmlb:{{{POOL}}}:inflight")
        return {name: int(count) for name, count in raw.items() if int(count)}

    def wait_collected(self, timeout: float = 30.0) -> None:
        """Until the collector published every backend (routing uses its metrics then)."""

        def published() -> bool:
            with self.client() as client:
                return all(
                    client.exists(f"llmlb:{{{POOL}}}:backend:{name}") for name in self.fleet.names
                )

        wait_until(published, timeout=timeout, message="collector published every backend")

    def wait_health(self, name: str, health: str, timeout: float = 15.0) -> None:
        """Until the collector published *health* ("up" or "down") for backend *name*."""
        with self.client() as client:
            wait_until(
                lambda: client.hget(f"llmlb:{{{POOL}}}:backend:{name}", F.HEALTH) == health,
                timeout=timeout,
                message=f"the collector marked {name} {health}",
            )

    def wait_no_inflight(self, timeout: float = LEASE_TTL_S + 10) -> float:
        """Until the in-flight hash sums to 0; returns how long that took."""
        start = time.monotonic()
        try:
            wait_until(lambda: not self.inflight(), timeout=timeout, interval=0.1)
        except TimeoutError:
            raise AssertionError(f"in-flight counts leaked: {self.inflight()}") from None
        return time.monotonic() - start

    def readyz(self) -> int:
        try:
            return requests.get(f"{self.url}/readyz", timeout=2).status_code
        except requests.RequestException:
            return 0

    def master_pid(self) -> int:
        assert self.proxy is not None
        return self.proxy.proc.pid

    def collector_pid(self) -> int | None:
        for pid in children_of(self.master_pid()):
            if " -m collector " in cmdline(pid) + " ":
                return pid
        return None

    def worker_pids(self) -> list[int]:
        assert self.proxy is not None
        return [pid for pid in self.proxy.worker_pids() if alive(pid)]

    def restart_proxy(self) -> None:
        """A new `llmlbd start` (new port) on the same Redis and backends."""
        if self.proxy is not None:
            self.proxy.stop()
        self.proxy = LLMLBD(self.config(), workers=self.workers, name="faults")

    def restart_backend(self, index: int) -> None:
        """Start backend *index* again on its port after it was killed."""
        name, port = self.fleet.names[index], str(self.fleet.ports[index])
        proc = Proc(python_module("llmlbd.sim", "--port", port, "--name", name), name=name)
        self.fleet.procs[index] = proc
        wait_for_http(self.fleet.urls[index] + "/health", process=proc.popen)

    def kill_backend(self, index: int) -> None:
        proc = self.fleet.procs[index]
        os.kill(proc.pid, signal.SIGKILL)
        proc.stop(5)  # reaps it and closes its log

    def stop(self) -> None:
        for thing in self.extra:
            thing.close()
        if self.proxy is not None:
            self.proxy.stop()
        self.fleet.stop()
        self.redis.stop()

    def __enter__(self) -> World:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
