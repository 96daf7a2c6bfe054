"""Redis faults under load: killed, paused, slow, flushed. Nothing may fail; /readyz says so."""

from __future__ import annotations

import os
import signal
import time

from tests.faults.load import Load
from tests.faults.report import (
    BASE_BOUND_S,
    Report,
    finish,
    pad,
    readyz_saw_degraded,
    redis_down_recovery,
    warm,
)
from tests.faults.world import REDIS_TIMEOUT_S, World

# A request never waits on Redis longer than a few socket timeouts (acquire, release, the
# breaker's probe); the rest is the request's own time.
REDIS_BOUND_S = BASE_BOUND_S + 4 * REDIS_TIMEOUT_S


def redis_killed(world: World, clients: int = 6, seconds: float = 4.0, down_s: float = 1.5):
    load = Load(world.url, clients).start()
    warm(load, seconds)
    world.redis.kill()
    degraded = readyz_saw_degraded(world, down_s)
    world.redis.start()
    restarted = time.monotonic()
    report = Report("Redis SIGKILLed, restarted empty", clients, [], "none: local fallback")
    report.bound_s = REDIS_BOUND_S
    report.recover_s = redis_down_recovery(world, restarted)
    world.wait_collected()
    pad(load, seconds)
    if not degraded:
        report.broken.append("/readyz never answered 503 while Redis was unavailable")
    return finish(world, load, report)


def redis_paused(world: World, clients: int = 6, seconds: float = 4.0, pause_s: float = 1.5):
    assert world.redis.process is not None
    pid = world.redis.process.pid
    load = Load(world.url, clients).start()
    warm(load, seconds)
    os.kill(pid, signal.SIGSTOP)
    try:
        degraded = readyz_saw_degraded(world, pause_s)
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    report = Report("Redis paused (SIGSTOP)", clients, [], "none: local fallback")
    report.bound_s = REDIS_BOUND_S
    report.recover_s = redis_down_recovery(world, resumed)
    pad(load, seconds)
    if not degraded:
        report.broken.append("/readyz never answered 503 while Redis was unavailable")
    return finish(world, load, report)


def redis_debug_sleep(world: World, clients: int = 6, seconds: float = 4.0, sleep_s: float = 1.5):
    load = Load(world.url, clients).start()
    warm(load, seconds)
    with world.client() as admin:
        admin.execute_command("DEBUG", "SLEEP", str(sleep_s))  # blocks the whole server
    ended = time.monotonic()
    report = Report("Redis slow (DEBUG SLEEP)", clients, [], "none: local fallback")
    report.bound_s = REDIS_BOUND_S
    report.recover_s = redis_down_recovery(world, ended)
    pad(load, seconds)
    return finish(world, load, report)


def redis_flushall(world: World, clients: int = 6, seconds: float = 4.0):
    load = Load(world.url, clients).start()
    warm(load, seconds)
    with world.client() as admin:
        admin.flushall()
    flushed = time.monotonic()
    world.wait_collected()
    report = Report("Redis FLUSHALL", clients, [], "none")
    report.recover_s = time.monotonic() - flushed
    pad(load, seconds)
    return finish(world, load, report)
