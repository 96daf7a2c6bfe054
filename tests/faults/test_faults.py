"""Every fault of docs/reliability.md under a steady mixed load, against real processes.

One world (Redis, `llmlbd start` with 2 workers and its collector, 3 sims)
serves every test whose fault it survives; each scenario heals what it broke.
Each test asserts the scenario's report has no problem: every request not on
the failed part completed, the failed-part requests got the documented error,
none was slower than the bound, and the in-flight counts went back to 0.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.faults import scenarios
from tests.faults.world import World, alive, children_of, cmdline
from tests.harness import LLMLBD, free_port_run, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def world():
    with World() as started:
        yield started


def check(report: scenarios.Report) -> None:
    assert report.results, "no load ran"
    problems = report.problems()
    assert not problems, "\n".join(problems[:20])


@pytest.mark.parametrize("scenario", scenarios.SHARED_WORLD, ids=lambda s: s.__name__)
def test_fault_under_load(world, scenario):
    check(scenario(world))


def test_master_killed_takes_embedded_redis_demo_sims_and_collector_with_it():
    """`llmlbd start` with no Redis and no backends runs everything itself: all of it dies."""
    proxy = LLMLBD({"demo": {"backends": 2, "base_port": free_port_run(2)}}, workers=2, name="demo")
    try:
        master = proxy.proc.pid
        wait_until(
            lambda: len(children_of(master)) >= 2 + 3,
            timeout=30,
            message="workers, embedded Redis, demo sims and collector running",
        )
        family = children_of(master)
        commands = " | ".join(cmdline(pid) for pid in family)
        for part in ("redis-server", "llmlbd.sim", "collector"):
            assert part in commands, commands
        os.kill(master, signal.SIGKILL)
        wait_until(
            lambda: not [pid for pid in family if alive(pid)],
            timeout=15,
            message="every child of the killed master gone",
        )
    finally:
        proxy.stop()
