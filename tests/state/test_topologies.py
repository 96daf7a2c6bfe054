"""The state layer on Redis Cluster and behind Sentinel, started for real by the test."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis

from llmlbd.config import config_from_dict
from llmlbd.config.loader import Backend
from llmlbd.embedded import find_server_binary
from llmlbd.state.client import connect
from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases, reap
from llmlbd.state.snapshot import read_pool
from tests.harness import free_port, wait_until
from tests.state.least_request import acquire_least

pytestmark = pytest.mark.cluster


def start_server(directory: Path, port: int, *args: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            find_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _pings(port), timeout=10, message=f"server on {port}")
    except TimeoutError:
        process.kill()
        process.wait()
        raise
    return process


def _pings(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=0.5) as client:
            return client.ping()
    except redis.RedisError:
        return False


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    import random
    import socket

    while True:
        port = random.randint(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
            return port
        except OSError:
            continue


@pytest.fixture(scope="module")
def cluster_url():
    """Three masters sharing the 16384 slots, joined with CLUSTER MEET."""
    directory = Path(tempfile.mkdtemp(prefix="llmlbd-cluster-"))
    ports = [cluster_port() for _ in range(3)]
    processes: list[subprocess.Popen] = []
    try:
        for port in ports:
            processes.append(
                start_server(
                    directory,
                    port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"nodes-{port}.conf",
                )
            )
        bounds = [(0, 5460), (5461, 10922), (10923, 16383)]
        for port, (low, high) in zip(ports, bounds):
            with redis.Redis(port=port) as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
        with redis.Redis(port=ports[0]) as client:
            for port in ports[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", port)

        def healthy() -> bool:
            for port in ports:
                with redis.Redis(port=port, decode_responses=True) as client:
                    if "cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                        return False
            return True

        wait_until(healthy, timeout=20, message="cluster_state:ok")
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_lease_scripts_and_snapshot_run_on_redis_cluster(cluster_url):
    """Every key of a pool carries the {pool} tag, so each script runs on one node."""
    config = config_from_dict({"redis": {"url": cluster_url, "mode": "cluster"}})
    client = connect(config)
    assert type(client).__name__ == "RedisCluster"
    backends = [Backend(name, f"http://{name}:1") for name in ("a", "b", "c")]
    for pool in ("east", "west"):  # different pools hash to different slots, still fine
        keys = PoolKeys(pool)
        leases = Leases(client, keys, f"host:{pool}:x", ttl_ms=5000)
        leases.heartbeat()
        picked = [
            acquire_least(leases, f"r{i}", ["a", "b", "c"], [1, 1, 1]).backend for i in range(6)
        ]
        assert sorted(picked) == ["a", "a", "b", "b", "c", "c"]
        client.sadd(keys.drained, "a")
        states = {s.name: s for s in read_pool(client, keys, backends)}
        assert states["a"].drained and states["b"].inflight == 2
        assert leases.acquire("x", "a").reason == "drained"
        assert leases.release("r0")
        assert reap(client, keys, recount=True) == (0, 0)
        assert leases.retire()[0] == 5
    client.close()


def test_prefix_cache_runs_on_redis_cluster(cluster_url):
    """acquire_prefix.lua names backends' keys and the index's ZSETs from the pool's base
    key (undeclared, same slot) and samples shared levels: all of it runs on a Cluster."""
    import dataclasses
    import random

    from llmlbd.policy.context import PolicyContext
    from llmlbd.policy.profiles.prefix_cache import PrefixCache
    from tests.policy.test_prefix_policy import chat, conversation

    config = config_from_dict(
        {
            "redis": {"url": cluster_url, "mode": "cluster"},
            "lb_policy": "prefix_cache",
            "backends": [{"name": n, "url": f"http://{n}:1"} for n in ("a", "b", "c")],
        }
    )
    client = connect(config)
    keys = PoolKeys("south")
    leases = Leases(client, keys, "host:south:x", ttl_ms=5000)
    ctx = PolicyContext(
        config.backends, config.lb_config, keys, leases, client, rng=random.Random(3)
    )
    policy = PrefixCache(ctx)
    # Levels held by more than one backend are "wide": looked up and sampled, not read.
    policy.index.params = dataclasses.replace(policy.index.params, wide_level_holders=1)
    turns = {topic: conversation(topic, 3) for topic in ("x", "y", "z", "w")}
    first = {}
    for topic, messages in turns.items():  # new conversations on one system prompt
        decision = policy.pick(chat(next(messages)), frozenset())
        first[topic] = decision.backend.name
        assert leases.release(decision.request_id)
    assert set(first.values()) == {"a", "b", "c"}  # spread: the prompt is shared
    for topic, messages in turns.items():  # each conversation's next turn goes home
        decision = policy.pick(chat(next(messages)), frozenset())
        assert (decision.backend.name, decision.reason) == (first[topic], "affinity")
        assert leases.release(decision.request_id)
    assert policy.explain(chat(next(turns["x"])))["choice"] == first["x"]
    client.close()


@pytest.fixture
def sentinel_setup():
    directory = Path(tempfile.mkdtemp(prefix="llmlbd-sentinel-"))
    master_port, sentinel_port = free_port(), free_port()
    master = start_server(directory, master_port)
    sentinel = None
    conf = directory / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\n"
        f"sentinel monitor mymaster 127.0.0.1 {master_port} 1\n"
        "sentinel down-after-milliseconds mymaster 1000\n"
    )
    try:
        sentinel = subprocess.Popen(
            [find_server_binary(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: _pings(sentinel_port), timeout=10, message="sentinel up")
        yield sentinel_port
    finally:
        for process in (sentinel, master):
            if process is not None:
                process.kill()
                process.wait()


def test_leases_through_sentinel(sentinel_setup):
    config = config_from_dict(
        {
            "redis": {
                "mode": "sentinel",
                "sentinels": [f"127.0.0.1:{sentinel_setup}"],
                "sentinel_master": "mymaster",
            }
        }
    )
    client = connect(config)
    deadline = time.monotonic() + 10
    while True:  # the sentinel needs a moment to learn its master
        try:
            client.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    keys = PoolKeys("sentinel")
    leases = Leases(client, keys, "h:1:s", ttl_ms=5000)
    assert acquire_least(leases, "r1", ["a", "b"], [1, 1]).backend in ("a", "b")
    assert leases.release("r1")
    assert client.hgetall(keys.inflight) == {}
    client.close()
