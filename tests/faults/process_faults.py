"""Process faults under load: backends killed, silent or answering garbage; a worker and the
collector and the master SIGKILLed."""

from __future__ import annotations

import os
import signal
import time

from tests.faults.load import Load
from tests.faults.report import (
    BASE_BOUND_S,
    Report,
    broken_stream,
    cut_off,
    finish,
    in_flight_at,
    pad,
    warm,
)
from tests.faults.world import READ_TIMEOUT_S, World, alive, children_of
from tests.harness import wait_until


def backend_killed(world: World, clients: int = 6, seconds: float = 4.0, index: int = 0):
    """SIGKILL one sim while streams run on it; it comes back on its port afterwards."""
    victim = world.fleet.names[index]
    load = Load(world.url, clients, max_tokens=64).start()
    warm(load, seconds)
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
    pad(load, seconds / 2)
    restarted = time.monotonic()
    world.restart_backend(index)
    world.wait_health(victim, "up")
    report.recover_s = time.monotonic() - restarted
    pad(load, seconds)
    return finish(world, load, report)


def worker_killed(world: World, clients: int = 6, seconds: float = 4.0):
    """SIGKILL one gunicorn worker mid-stream; gunicorn starts another, the reaper frees its leases."""
    pids = world.worker_pids()
    load = Load(world.url, clients, max_tokens=64).start()
    warm(load, seconds)
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
        lambda: len([p for p in proxy.worker_pids() if p not in pids and alive(p)]) >= 1,
        timeout=30,
        message="gunicorn replaced the worker",
    )
    report.recover_s = time.monotonic() - killed
    pad(load, seconds)
    return finish(world, load, report)


def collector_killed(world: World, clients: int = 6, seconds: float = 4.0):
    pid = world.collector_pid()
    assert pid is not None, "no collector child"
    load = Load(world.url, clients).start()
    warm(load, seconds)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: world.collector_pid() not in (None, pid),
        timeout=30,
        message="llmlbd restarted the collector",
    )
    report = Report("collector SIGKILLed", clients, [], "none: routing uses the last metrics")
    report.recover_s = time.monotonic() - killed
    pad(load, seconds)
    return finish(world, load, report)


def sim_fault(world: World, index: int, spec: str) -> None:
    """Give sim *index* the server-wide fault *spec* ('' heals it; its /health stays 200)."""
    import requests

    requests.post(f"{world.fleet.urls[index]}/debug/faults", json={"fault": spec}, timeout=5)


def faulted_under_load(
    world: World, clients: int, seconds: float, index: int, spec: str
) -> tuple[str, Load, float]:
    """Start the load, let it flow, then fault sim *index*: (its name, the load, when)."""
    load = Load(world.url, clients).start()
    warm(load, seconds)
    sim_fault(world, index, spec)
    return world.fleet.names[index], load, time.monotonic()


def backend_silent(world: World, clients: int = 6, seconds: float = 4.0, index: int = 1):
    """One sim accepts requests and never answers them (its /health still says 200)."""
    victim, load, silenced = faulted_under_load(
        world, clients, seconds, index, "stall-first-byte=60"
    )
    report = Report(
        f"backend accepts, never answers ({victim})",
        clients,
        [],
        f"after server.read_timeout_s ({READ_TIMEOUT_S:g} s): 504 `upstream_timeout`",
    )
    report.on_failed_part = lambda o: o.started >= silenced - 1 and o.status == 504
    report.documented = lambda o: o.status == 504 and o.error_code == "upstream_timeout"
    report.bound_s = BASE_BOUND_S + READ_TIMEOUT_S
    pad(load, seconds)
    sim_fault(world, index, "")
    report = finish(world, load, report)
    report.recover_s = READ_TIMEOUT_S
    return report


def backend_failing(world: World, clients: int = 6, seconds: float = 4.0, index: int = 0):
    """One sim resets every request it reads while its /health still says 200: only the
    requests' outcomes can find it. Ejected for every worker, then back after a probe."""
    from llmlbd.state.keys import PoolKeys
    from llmlbd.state.outlier import outlier_view

    keys = PoolKeys("default")
    victim, load, broken = faulted_under_load(world, clients, seconds, index, "refuse")
    report = Report(
        f"backend resets every request, health up ({victim})",
        clients,
        [],
        "nothing fails: each attempt on it is retried on another backend before the first "
        "byte; after `server.eject_after_failures` such attempts it is ejected (no request "
        "goes there) until a probe after the cool-down succeeds",
    )
    try:
        with world.client() as admin:
            wait_until(
                lambda: victim in outlier_view(admin, keys)[0],
                timeout=15,
                message=f"{victim} ejected",
            )
            report.recover_s = time.monotonic() - broken
            pad(load, seconds / 2)
            sim_fault(world, index, "")
            try:
                # Back once the cool-down (server.eject_cooldown_s) is over and a probe
                # request succeeded.
                wait_until(
                    lambda: victim not in outlier_view(admin, keys)[0],
                    timeout=30,
                    message=f"{victim} back after its probe",
                )
            except TimeoutError as exc:
                report.broken.append(str(exc))
        pad(load, seconds)
    except BaseException:
        load.stop()
        raise
    return finish(world, load, report)


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
    warm(load, seconds)
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
        "attempt failed; the collector's health checks (garbage too) mark it down",
    )
    report.on_failed_part = lambda o: o.status == 502
    report.documented = lambda o: o.error_code == "backend_failed"
    health_key = PoolKeys("default").backend("garbage")
    try:
        with world.client() as admin:
            # Either a worker sent it a request (and retried elsewhere), or the collector's
            # health check marked it down first: whichever wins the race, it is out of the
            # way, and every client request must still have succeeded (checked by finish).
            wait_until(
                lambda: (
                    any(r.startswith(b"POST") for r in garbage.requests)
                    or admin.hget(health_key, "health") == "down"
                ),
                timeout=15,
                message="a request sent to the garbage backend, or the backend marked down",
            )
        report.recover_s = time.monotonic() - added
        pad(load, seconds)
    except BaseException:
        load.stop()  # no load left running into the next scenario of the shared world
        raise
    finally:
        with world.client() as admin:
            change_members(
                admin, key, seed, lambda m: {k: v for k, v in m.items() if k != "garbage"}
            )
    return finish(world, load, report)


def backend_down(world: World, clients: int = 6, seconds: float = 4.0, index: int = 2):
    """SIGKILL a sim between requests: new requests to it are refused and retried elsewhere."""
    victim = world.fleet.names[index]
    load = Load(world.url, clients).start()
    warm(load, seconds)
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
    world.wait_health(victim, "down")
    report.recover_s = time.monotonic() - killed
    pad(load, seconds)
    report = finish(world, load, report)
    world.restart_backend(index)
    world.wait_collected()
    return report


# Every fault the shared world survives, in the order they run: each heals what it broke,
# and the ones that kill a process come last.


def master_killed(world: World, clients: int = 6, seconds: float = 4.0):
    """SIGKILL the gunicorn master: every child dies with it, no client hangs, and a new
    `llmlbd start` on the same Redis reaps the dead workers' leases."""
    master = world.master_pid()
    family = children_of(master)
    assert world.collector_pid() in family and len(world.worker_pids()) == world.workers
    load = Load(world.url, clients, max_tokens=64).start()
    warm(load, seconds)
    killed = time.monotonic()
    os.kill(master, signal.SIGKILL)
    report = Report(
        "master SIGKILLed",
        clients,
        [],
        "every request in flight or sent later: cut off or refused (the whole proxy is the "
        "failed part); every child dies with the master",
    )
    report.on_failed_part = lambda o: o.started + o.duration >= killed
    report.documented = cut_off
    wait_until(
        lambda: not [pid for pid in family if alive(pid)],
        timeout=15,
        message="every child of the killed master gone",
    )
    report.recover_s = time.monotonic() - killed
    report.results = load.stop()
    world.restart_proxy()
    try:
        world.wait_no_inflight()
    except AssertionError:
        report.leaked = world.inflight()
    return report
