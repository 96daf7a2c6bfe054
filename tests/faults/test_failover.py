"""Redis failover under load, and exact global least request, with three llmlbd replicas.

Each test starts its own Redis deployment (a 3-master Cluster with one replica each, or a
master with two replicas watched by three Sentinels), three real `llmlbd start` (2 workers
each) and real backends, all on free ports (tests/faults/failover.py, tests/topologies.py).
"""

from __future__ import annotations

import threading

import pytest
import requests

from tests.faults.failover import Replicas, Timeline, failover_under_load
from tests.faults.report import Report
from tests.harness import StubBackends, wait_until
from tests.topologies import ClusterDeployment, SentinelGroup

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]


def check(report: Report, timeline: Timeline) -> None:
    """Nothing failed, nothing leaked, and every replica said so on /readyz: not ready
    while it routed on the local fallback, ready again once a replica was promoted."""
    problems = report.problems()
    assert not problems, "\n".join(problems[:20]) + "\n" + timeline.summary()
    window = timeline.not_ready()
    assert window is not None, f"/readyz never left 200: {timeline.summary()}"
    assert timeline.fallback_decisions > 0, timeline.summary()
    assert timeline.log_lines.get("redis_unavailable") and timeline.log_lines.get(
        "redis_recovered"
    ), timeline.summary()
    last = max(t for t, _, _ in timeline.readyz)
    assert window[1] < last, f"a replica was still not ready at the end: {timeline.summary()}"


def test_cluster_master_killed_under_load():
    """SIGKILL the master that holds the pool's slot while three replicas serve a steady
    mixed load; the cluster promotes its replica and every request completes."""
    with ClusterDeployment(masters=3, replicas=1) as cluster, Replicas(cluster) as replicas:
        report, timeline = failover_under_load(replicas, "cluster_kill")
    check(report, timeline)


@pytest.mark.parametrize("fault", ["sentinel_kill", "sentinel_pause"])
def test_sentinel_master_lost_under_load(fault):
    """SIGKILL (or SIGSTOP until a replica is promoted, then SIGCONT: a stale master that
    the Sentinels demote) the Sentinel master under load; every request completes."""
    with SentinelGroup(replicas=2, sentinels=3) as group, Replicas(group) as replicas:
        report, timeline = failover_under_load(replicas, fault)
    check(report, timeline)


BODY = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]}
# Longer than it takes to place every request on this loaded machine: none ends early.
HOLD_S = 8


def test_global_least_request_is_exact_across_three_replicas():
    """Long requests through three replicas (2 workers each) on a 3-master Cluster: after
    every decision, one at a time and then 12 at once spread over the replicas, the
    requests in flight on the four backends never differ by more than one, and Redis
    counts exactly what the backends hold."""
    with (
        ClusterDeployment(masters=3, replicas=0) as cluster,
        StubBackends(4) as stubs,
        Replicas(cluster, fleet=stubs, collector=False, read_timeout_s=HOLD_S + 10) as replicas,
    ):
        statuses: list[int] = []
        threads: list[threading.Thread] = []

        def send(url: str) -> None:
            response = requests.post(
                f"{url}/v1/chat/completions",
                json=BODY,
                headers={"x-stub-delay": str(HOLD_S)},
                timeout=HOLD_S + 30,
            )
            statuses.append(response.status_code)

        def launch(index: int) -> None:
            url = replicas.proxies[index % len(replicas.proxies)].url
            thread = threading.Thread(target=send, args=(url,))
            thread.start()
            threads.append(thread)

        def placed(count: int) -> dict[str, int]:
            return wait_until(
                lambda: (held := stubs.inflight()) and sum(held.values()) == count and held,
                timeout=HOLD_S / 2,
                message=f"{count} requests on the backends",
            )

        try:
            for index in range(8):  # one at a time, each through the next replica
                launch(index)
                held = placed(index + 1)
                assert max(held.values()) - min(held.values()) <= 1, held
            for index in range(12):  # a burst over the three replicas at once
                launch(index)
            held = placed(20)
            assert sorted(held.values()) == [5, 5, 5, 5], held
            assert replicas.inflight() == held
        finally:
            for thread in threads:
                thread.join(HOLD_S + 35)
        assert statuses == [200] * 20
        replicas.wait_converged()
