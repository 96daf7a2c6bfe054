"""Each fault once, under load: what the tests assert on and what bench/faults.py tabulates.

A scenario runs `Load` against a started `World`, injects its fault
*fault_at* seconds in, keeps the load for *seconds* in all, heals what it
broke, waits until the in-flight counts are back to 0 and returns a
`Report`. ``report.problems()`` lists every broken promise: a request that
was not on the failed part and did not complete, a failed-part request
without the documented error, a request slower than the bound, a leaked
count.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.faults.load import Load, Outcome
from tests.faults.world import POOL, READ_TIMEOUT_S, REDIS_TIMEOUT_S, World, alive
from tests.harness import wait_until

# A request's own time on a loaded 2-core machine, before any fault adds to it.
BASE_BOUND_S = 5.0


@dataclass
class Report:
    fault: str
    clients: int
    results: list[Outcome]
    expected: str  # the documented outcome of a request on the failed part
    on_failed_part: Callable[[Outcome], bool] = lambda outcome: False
    documented: Callable[[Outcome], bool] = lambda outcome: False
    bound_s: float = BASE_BOUND_S
    recover_s: float = 0.0
    leaked: dict[str, int] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)  # other broken promises (e.g. /readyz)

    @property
    def failed(self) -> list[Outcome]:
        return [outcome for outcome in self.results if not outcome.ok]

    @property
    def failed_part(self) -> list[Outcome]:
        return [outcome for outcome in self.failed if self.on_failed_part(outcome)]

    @property
    def failed_elsewhere(self) -> list[Outcome]:
        return [outcome for outcome in self.failed if not self.on_failed_part(outcome)]

    def problems(self) -> list[str]:
        found = [f"not on the failed part, failed: {o.describe()}" for o in self.failed_elsewhere]
        found += [
            f"on the failed part without the documented error ({self.expected}): {o.describe()}"
            for o in self.failed_part
            if not self.documented(o)
        ]
        found += [
            f"slower than {self.bound_s:.1f} s: {o.describe()}"
            for o in self.results
            if o.duration > self.bound_s
        ]
        if self.leaked:
            found.append(f"in-flight counts leaked: {self.leaked}")
        found += self.broken
        if not self.results:
            found.append("no request was sent")
        return found

    def row(self) -> dict[str, object]:
        return {
            "fault": self.fault,
            "load": f"{self.clients} clients, half streaming",
            "sent": len(self.results),
            "completed": len(self.results) - len(self.failed),
            "failed on the failed part": len(self.failed_part),
            "failed elsewhere": len(self.failed_elsewhere),
            "slowest request (s)": round(max((o.duration for o in self.results), default=0), 2),
            "time to recover (s)": round(self.recover_s, 2),
        }


def in_flight_at(moment: float) -> Callable[[Outcome], bool]:
    """A request that had started and not yet ended at *moment*."""
    return lambda o: o.started <= moment <= o.started + o.duration


def broken_stream(code: str) -> Callable[[Outcome], bool]:
    """A 200 stream that llmlbd ended with its SSE error event of *code*, never [DONE]."""
    return lambda o: o.stream and o.status == 200 and o.sse_error and o.error_code == code


def cut_off(o: Outcome) -> bool:
    """The connection to llmlbd itself died: a reset, or a body cut short without [DONE]."""
    return o.exception is not None or (o.status == 200 and not o.done)


def _finish(world: World, load: Load, report: Report) -> Report:
    report.results = load.stop()
    try:
        world.wait_no_inflight()
    except AssertionError:
        report.leaked = world.inflight()
    return report


def _redis_down_recovery(world: World, since: float) -> float:
    """Seconds from *since* until /readyz is 200 three times in a row (both workers probed)."""
    streak = 0

    def ready() -> bool:
        nonlocal streak
        streak = streak + 1 if world.readyz() == 200 else 0
        return streak >= 3

    wait_until(ready, timeout=30, interval=0.1, message="/readyz 200 again")
    return time.monotonic() - since


def _readyz_saw_degraded(world: World, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if world.readyz() == 503:
            return True
        time.sleep(0.05)
    return False


# --- Redis ---------------------------------------------------------------------------------
# A request never waits on Redis longer than a few socket timeouts (acquire, release, the
# breaker's probe); the rest is the request's own time.
REDIS_BOUND_S = BASE_BOUND_S + 4 * REDIS_TIMEOUT_S


def redis_killed(world: World, clients: int = 6, seconds: float = 4.0, down_s: float = 1.5):
    load = Load(world.url, clients).start()
    _warm(load, seconds)
    world.redis.kill()
    degraded = _readyz_saw_degraded(world, down_s)
    world.redis.start()
    restarted = time.monotonic()
    report = Report("Redis SIGKILLed, restarted empty", clients, [], "none: local fallback")
    report.bound_s = REDIS_BOUND_S
    report.recover_s = _redis_down_recovery(world, restarted)
    world.wait_collected()
    _pad(load, seconds)
    if not degraded:
        report.broken.append("/readyz never answered 503 while Redis was unavailable")
    return _finish(world, load, report)


def redis_paused(world: World, clients: int = 6, seconds: float = 4.0, pause_s: float = 1.5):
    assert world.redis.process is not None
    pid = world.redis.process.pid
    load = Load(world.url, clients).start()
    _warm(load, seconds)
    os.kill(pid, signal.SIGSTOP)
    try:
        degraded = _readyz_saw_degraded(world, pause_s)
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    report = Report("Redis paused (SIGSTOP)", clients, [], "none: local fallback")
    report.bound_s = REDIS_BOUND_S
    report.recover_s = _redis_down_recovery(world, resumed)
    _pad(load, seconds)
    if not degraded:
        report.broken.append("/readyz never answered 503 while Redis was unavailable")
    return _finish(world, load, report)


def redis_debug_sleep(world: World, clients: int = 6, seconds: float = 4.0, sleep_s: float = 1.5):
    load = Load(world.url, clients).start()
    _warm(load, seconds)
    with world.client() as admin:
        admin.execute_command("DEBUG", "SLEEP", str(sleep_s))  # blocks the whole server
    ended = time.monotonic()
    report = Report("Redis slow (DEBUG SLEEP)", clients, [], "none: local fallback")
    report.bound_s = REDIS_BOUND_S
    report.recover_s = _redis_down_recovery(world, ended)
    _pad(load, seconds)
    return _finish(world, load, report)


def redis_flushall(world: World, clients: int = 6, seconds: float = 4.0):
    load = Load(world.url, clients).start()
    _warm(load, seconds)
    with world.client() as admin:
        admin.flushall()
    flushed = time.monotonic()
    world.wait_collected()
    report = Report("Redis FLUSHALL", clients, [], "none")
    report.recover_s = time.monotonic() - flushed
    _pad(load, seconds)
    return _finish(world, load, report)


def _warm(load: Load, seconds: float) -> None:
    """Let the load flow for a quarter of the run before the fault hits."""
    load.wait_for(load.clients)
    time.sleep(seconds / 4)


def _pad(load: Load, seconds: float) -> None:
    """Keep the load running until *seconds* after it started, and at least a few requests more."""
    started = min((o.started for o in load.results), default=time.monotonic())
    remaining = started + seconds - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
    load.wait_for(load.clients)


# --- processes -----------------------------------------------------------------------------


def backend_killed(world: World, clients: int = 6, seconds: float = 4.0, index: int = 0):
    """SIGKILL one sim while streams run on it; it comes back on its port afterwards."""
    victim = world.fleet.names[index]
    load = Load(world.url, clients, max_tokens=64).start()
    _warm(load, seconds)
    wait_until(lambda: world.inflight().get(victim), timeout=10, message=f"{victim} busy")
    killed = time.monotonic()
    world.kill_backend(index)
    report = Report(
        f"backend SIGKILLed mid-stream ({victim})",
        clients,
        [],
        "streams already answering: 200 ending in the SSE error event `upstream_error`; "
        "requests not yet answered: retried on another backend",
    )
    report.on_failed_part = lambda o: o.backend == victim and in_flight_at(killed)(o)
    report.documented = broken_stream("upstream_error")
    _pad(load, seconds / 2)
    world.restart_backend(index)
    report.recover_s = time.monotonic() - killed
    _pad(load, seconds)
    return _finish(world, load, report)


def worker_killed(world: World, clients: int = 6, seconds: float = 4.0):
    """SIGKILL one gunicorn worker mid-stream; gunicorn starts another, the reaper frees its leases."""
    pids = world.worker_pids()
    load = Load(world.url, clients, max_tokens=64).start()
    _warm(load, seconds)
    killed = time.monotonic()
    os.kill(pids[0], signal.SIGKILL)
    report = Report(
        "proxy worker SIGKILLed mid-stream",
        clients,
        [],
        "its own requests: the connection closes (reset, or a stream without [DONE])",
    )
    report.on_failed_part = in_flight_at(killed)
    report.documented = cut_off
    assert world.proxy is not None
    proxy = world.proxy
    wait_until(
        lambda: len([p for p in proxy.worker_pids() if alive(p)]) >= world.workers,
        timeout=30,
        message="gunicorn replaced the worker",
    )
    report.recover_s = time.monotonic() - killed
    _pad(load, seconds)
    return _finish(world, load, report)


def collector_killed(world: World, clients: int = 6, seconds: float = 4.0):
    pid = world.collector_pid()
    assert pid is not None, "no collector child"
    load = Load(world.url, clients).start()
    _warm(load, seconds)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: world.collector_pid() not in (None, pid),
        timeout=30,
        message="llmlbd restarted the collector",
    )
    report = Report("collector SIGKILLed", clients, [], "none: routing uses the last metrics")
    report.recover_s = time.monotonic() - killed
    _pad(load, seconds)
    return _finish(world, load, report)


def backend_silent(world: World, clients: int = 6, seconds: float = 4.0, index: int = 1):
    """One sim accepts requests and never answers them (its /health still says 200)."""
    import requests

    victim, url = world.fleet.names[index], world.fleet.urls[index]
    load = Load(world.url, clients).start()
    _warm(load, seconds)
    requests.post(f"{url}/debug/faults", json={"fault": "stall-first-byte=60"}, timeout=5)
    silenced = time.monotonic()
    report = Report(
        f"backend accepts, never answers ({victim})",
        clients,
        [],
        f"after server.read_timeout_s ({READ_TIMEOUT_S:g} s): 504 `upstream_timeout`",
    )
    report.on_failed_part = lambda o: o.started >= silenced - 1 and o.status == 504
    report.documented = lambda o: o.status == 504 and o.error_code == "upstream_timeout"
    report.bound_s = BASE_BOUND_S + READ_TIMEOUT_S
    _pad(load, seconds)
    requests.post(f"{url}/debug/faults", json={"fault": ""}, timeout=5)
    report = _finish(world, load, report)
    report.recover_s = READ_TIMEOUT_S
    return report


def backend_garbage(world: World, clients: int = 6, seconds: float = 4.0):
    """A backend joins the pool (as `llmlbctl backend add` does) and answers garbage."""
    from llmlbd.config.loader import Backend
    from llmlbd.state.keys import PoolKeys
    from llmlbd.state.members import change_members
    from tests.fakeserver import ScriptedServer

    garbage = ScriptedServer(
        then=b"SSH-2.0-OpenSSH_9.6 not http at all\r\n\r\n", close_after_each=True
    )
    world.extra.append(garbage)
    seed = [Backend(n, u) for n, u in zip(world.fleet.names, world.fleet.urls)]
    key = PoolKeys("default").members
    load = Load(world.url, clients).start()
    _warm(load, seconds)
    with world.client() as admin:
        change_members(
            admin, key, seed, lambda m: {**m, "garbage": Backend("garbage", garbage.url)}
        )
    added = time.monotonic()
    report = Report(
        "backend answers garbage",
        clients,
        [],
        "retried on another backend before the first byte; 502 `backend_failed` only if every "
        "attempt failed",
    )
    report.on_failed_part = lambda o: o.status == 502
    report.documented = lambda o: o.error_code == "backend_failed"
    wait_until(
        lambda: any(r.startswith(b"POST") for r in garbage.requests),
        timeout=15,
        message="a request was sent to the garbage backend",
    )
    report.recover_s = time.monotonic() - added
    _pad(load, seconds)
    with world.client() as admin:
        change_members(admin, key, seed, lambda m: {k: v for k, v in m.items() if k != "garbage"})
    return _finish(world, load, report)


def backend_down(world: World, clients: int = 6, seconds: float = 4.0, index: int = 2):
    """SIGKILL a sim between requests: new requests to it are refused and retried elsewhere."""
    victim = world.fleet.names[index]
    load = Load(world.url, clients).start()
    _warm(load, seconds)
    killed = time.monotonic()
    world.kill_backend(index)
    report = Report(
        f"backend SIGKILLed, then requests sent ({victim})",
        clients,
        [],
        "in flight on it: as mid-stream; later requests: retried on another backend",
    )
    report.on_failed_part = lambda o: o.backend == victim and in_flight_at(killed)(o)
    report.documented = broken_stream("upstream_error")
    with world.client() as admin:
        wait_until(
            lambda: admin.hget(f"llmlb:{{{POOL}}}:backend:{victim}", "health") == "down",
            timeout=15,
            message=f"the collector marked {victim} down",
        )
    report.recover_s = time.monotonic() - killed
    _pad(load, seconds)
    report = _finish(world, load, report)
    world.restart_backend(index)
    world.wait_collected()
    return report


# Every fault the shared world survives, in the order they run: each heals what it broke,
# and the ones that kill a process come last.
SHARED_WORLD = [
    redis_killed,
    redis_paused,
    redis_debug_sleep,
    redis_flushall,
    collector_killed,
    backend_garbage,
    backend_silent,
    backend_down,
    backend_killed,
    worker_killed,
]
