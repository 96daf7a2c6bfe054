"""Several collector processes split the backends through the ownership leases.

Real processes (`python -m collector`, and `llmlbd start` with
collector.processes), real page servers and the session's real Redis:
N collectors each own about 1/N of the backends, the survivors take a
killed one's share, and a newcomer gets its share.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter

from llmlbd.state import backend_fields as F
from llmlbd.state.keys import PoolKeys
from tests.collector.pages import page
from tests.collector.test_ownership import _write_config
from tests.harness import LLMLBD, Proc, wait_until

KEYS = PoolKeys("default")


def _shares(client) -> Counter:
    """collector id -> number of backends it owns (live entries only)."""
    seconds, micros = client.time()
    now_ms = seconds * 1000 + micros // 1000
    owners: Counter = Counter()
    for entry in client.hgetall(KEYS.scrape_owners).values():
        owner, deadline = entry.split()
        if int(deadline) > now_ms:
            owners[owner] += 1
    return owners


def _balanced(client, ids: set[str], backends: int):
    share = _shares(client)
    if set(share) != ids or sum(share.values()) != backends:
        return None
    low, high = backends // len(ids), -(-backends // len(ids))
    return share if all(low <= n <= high for n in share.values()) else None


def _fresh_since(client, names: list[str], since_ms: int) -> bool:
    return all(int(client.hget(KEYS.backend(n), F.SCRAPED_AT) or 0) > since_ms for n in names)


def _redis_ms(client) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def test_three_collectors_balance_rebalance_on_death_and_join(
    tmp_path, redis_url, redis_client, page_server
):
    body = page("vllm_dp2_sim.txt")
    servers = {f"b{i:02d}": page_server(body) for i in range(12)}
    config = _write_config(tmp_path, redis_url, servers)

    def collector(cid: str) -> Proc:
        return Proc(
            [sys.executable, "-m", "collector", "--config", config, "--id", cid],
            name=f"collector-{cid}",
        )

    procs = {cid: collector(cid) for cid in ("c1", "c2", "c3")}
    try:
        share = wait_until(
            lambda: _balanced(redis_client, {"c1", "c2", "c3"}, 12),
            timeout=20,
            message="three collectors own 4 backends each",
        )
        assert sorted(share.values()) == [4, 4, 4]

        owners = {b: v.split()[0] for b, v in redis_client.hgetall(KEYS.scrape_owners).items()}
        victims = [b for b, o in owners.items() if o == "c2"]
        procs["c2"].signal(signal.SIGKILL)
        killed_ms = _redis_ms(redis_client)
        share = wait_until(
            lambda: _balanced(redis_client, {"c1", "c3"}, 12),
            timeout=10,
            message="the survivors split the dead collector's backends",
        )
        assert sorted(share.values()) == [6, 6]
        wait_until(
            lambda: _fresh_since(redis_client, victims, killed_ms),
            timeout=5,
            message="the dead collector's backends read again",
        )

        procs["c4"] = collector("c4")
        share = wait_until(
            lambda: _balanced(redis_client, {"c1", "c3", "c4"}, 12),
            timeout=20,
            message="a newcomer gets its share",
        )
        assert sorted(share.values()) == [4, 4, 4]
        # Exactly one reader per backend: each is read at about 10 Hz, not 20.
        for s in servers.values():
            s.requests.clear()
        time.sleep(1.0)
        counts = [s.requests.count("/metrics") for s in servers.values()]
        assert all(4 <= n <= 14 for n in counts), counts
    finally:
        for proc in procs.values():
            proc.stop()


def test_llmlbd_start_runs_collector_processes(redis_url, redis_client, page_server):
    """`llmlbd start` with collector.processes: 2 runs two collectors that split the backends;
    one killed is restarted by the master, and the other covers for it meanwhile."""
    servers = {f"s{i}": page_server(page("vllm_dp2_sim.txt")) for i in range(6)}
    config = {
        "redis": {"url": redis_url},
        "collector": {
            "enabled": True,
            "processes": 2,
            "interval_ms": 100,
            "health_interval_ms": 200,
            "metrics_port": 0,
        },
        "backends": [{"name": n, "url": s.url} for n, s in servers.items()],
    }
    with LLMLBD(config, workers=1) as lb:
        share = wait_until(
            lambda: (s := _shares(redis_client)) and len(s) == 2 and sum(s.values()) == 6 and s,
            timeout=30,
            message="two collector processes own the backends",
        )
        assert sorted(share.values()) == [3, 3], share
        # Collector ids are host:pid:random: kill one of them.
        victim = next(iter(share))
        os.kill(int(victim.split(":")[1]), signal.SIGKILL)
        wait_until(
            lambda: (s := _shares(redis_client)) and victim not in s and len(s) == 2,
            timeout=20,
            message="the master restarted the collector and it took its share",
        )
        assert '"child_died"' in lb.log()
        assert all(redis_client.hget(KEYS.backend(n), F.RUNNING) == "12" for n in servers)


def test_metrics_port_taken_does_not_stop_the_collector(redis_client, page_server, run_collector):
    """Two collectors given one metrics port (say two llmlbd on a host): the second
    logs metrics_port_unavailable and scrapes anyway, instead of a crash loop."""
    import socket

    server = page_server(page("vllm_dp2_sim.txt"))
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        run = run_collector([("a", server.url)], metrics_port=taken.getsockname()[1])
        wait_until(
            lambda: redis_client.hget(KEYS.backend("a"), F.RUNNING) == "12",
            timeout=10,
            message="scraped without its own /metrics",
        )
        assert run.collector._metrics_server is None and run.thread.is_alive()
