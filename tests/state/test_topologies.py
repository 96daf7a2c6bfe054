"""The state layer on Redis Cluster and behind Sentinel, started for real by the test."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from llmlbd.config import config_from_dict
from llmlbd.config.loader import Backend
from llmlbd.state.client import REDIS_ERRORS, connect
from llmlbd.state.collectors import CollectorLeases, FieldWrite
from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases, reap
from llmlbd.state.snapshot import read_pool
from tests.harness import wait_until
from tests.state.least_request import acquire_least
from tests.topologies import SentinelGroup

pytestmark = pytest.mark.cluster


def test_lease_scripts_and_snapshot_run_on_redis_cluster(cluster_url):
    """Every key of a pool carries the {pool} tag, so each script runs on one node."""
    config = config_from_dict({"redis": {"url": cluster_url, "mode": "cluster"}})
    client = connect(config)
    assert isinstance(client, redis.RedisCluster)
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


def test_batched_releases_run_on_redis_cluster(cluster_url):
    """The worker's release sender batches releases (Leases.release_many) with the client
    `connect` builds: on a cluster, whose pipelines refuse scripts, they must still all
    be released (they raised RedisClusterException when llmlbd's own cluster subclass was
    not recognised as a cluster)."""
    config = config_from_dict({"redis": {"url": cluster_url, "mode": "cluster"}})
    client = connect(config)
    keys = PoolKeys("batched")
    leases = Leases(client, keys, "host:batched:x", ttl_ms=5000)
    leases.heartbeat()
    for i in range(4):
        assert leases.acquire(f"r{i}", "ab"[i % 2])
    replies = leases.release_many([("r0", "ok"), ("r1", "ok"), ("r2", ""), ("nope", "")])
    assert [bool(r) for r in replies] == [True, True, True, False]
    inflight = {str(k): int(v) for k, v in client.hgetall(keys.inflight).items()}
    assert inflight == {"b": 1}  # r3's slot, still held
    assert leases.release("r3")
    assert leases.retire()[0] == 0
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
            "lb_config": {"sharedPrefix": "spread"},  # new conversations spread (below)
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
    """A master with one replica, watched by one Sentinel; yields the group."""
    with SentinelGroup(replicas=1, sentinels=1) as group:
        yield group


def test_leases_through_sentinel(sentinel_setup):
    config = config_from_dict(
        {
            "redis": {
                "mode": "sentinel",
                "sentinels": sentinel_setup.hosts,
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


def sentinel_config(group: SentinelGroup, timeout_s: float) -> object:
    return config_from_dict(
        {
            "redis": {
                "mode": "sentinel",
                "sentinels": group.hosts,
                "sentinel_master": group.name,
                "socket_timeout_s": timeout_s,
            }
        }
    )


def test_a_timed_out_command_never_hands_its_late_reply_to_the_next_one(sentinel_setup):
    """redis-py's Sentinel connections do not close on a read timeout: the pooled connection
    kept the PING's reply owed, and the heartbeat sent next on it read "PONG" (a release
    read an acquire's reply the same way, and its count leaked). The timed-out connection
    must be closed, so the heartbeat gets its own reply."""
    client = connect(sentinel_config(sentinel_setup, 1.0))
    leases = Leases(client, PoolKeys("desync"), "h:1:d", ttl_ms=5000)
    wait_until(lambda: _answers(client), timeout=10, message="the sentinel names its master")
    master = sentinel_setup.master
    master.pause()
    try:
        with pytest.raises(redis.TimeoutError):
            client.ping()
        # The heartbeat is sent while the master is still paused; it wakes up 0.2 s later
        # and answers the PING first, then the heartbeat.
        threading.Timer(0.2, master.resume).start()
        deadline = leases.heartbeat()
    finally:
        master.resume()
    assert isinstance(deadline, int) and deadline > 0
    assert client.ping() is True
    client.close()


def _answers(client: object) -> bool:
    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except redis.RedisError:
        return False


def test_a_cluster_call_waits_at_most_one_socket_timeout(cluster):
    """redis-py retried a cluster command after a timeout (whatever `retry` says): a request
    waited two timeouts and a slot-map refresh on a stalled node, and the script could run
    twice (the second run finds the request's own lease: "duplicate", a 503). As on a single
    server, a timeout now reaches the router at once (local fallback), and nothing is
    counted twice."""
    keys = PoolKeys("timeout")
    node = cluster.master_of(keys.inflight)
    config = config_from_dict(
        {"redis": {"mode": "cluster", "url": cluster.startup_url(), "socket_timeout_s": 0.5}}
    )
    client = connect(config)
    leases = Leases(client, keys, "h:1:t", ttl_ms=5000)
    assert acquire_least(leases, "warm", ["a", "b"], [1, 1]).backend
    # The node stalls for 0.8 s: longer than one timeout, shorter than two.
    sleeper = threading.Thread(
        target=lambda: node.client(socket_timeout=5).execute_command("DEBUG", "SLEEP", "0.8")
    )
    with node.client(socket_timeout=0.05, retry=Retry(NoBackoff(), 0)) as probe:
        probe.ping()  # connected before the stall
        sleeper.start()
        wait_until(lambda: not _answers(probe), timeout=5, message="the node stalls")
    try:
        with pytest.raises(redis.TimeoutError):
            acquire_least(leases, "r1", ["a", "b"], [1, 1])
    finally:
        sleeper.join()
    with node.client() as admin:
        leased = admin.hgetall(keys.leases)
        assert sum(int(v) for v in admin.hvals(keys.inflight)) == len(leased) <= 2
    client.close()


def test_collector_publishes_on_a_cluster_and_after_its_failover(cluster):
    """redis-py refuses EVALSHA in a cluster pipeline, so the collector published nothing on
    Redis Cluster. Its pipeline goes to the node of the pool's slot; when that node dies the
    call fails (the collector drops the batch and scrapes again) and, once a replica is
    promoted, it publishes to the new master."""
    keys = PoolKeys("collect")
    config = config_from_dict(
        {"redis": {"mode": "cluster", "url": cluster.startup_url(), "socket_timeout_s": 0.5}}
    )
    client = connect(config)
    collectors = CollectorLeases(client, keys, "c:1:x", lease_ms=60000)
    assert collectors.claim(["a", "b"]) == {"a", "b"}
    writes = [FieldWrite(name, {"num_requests_running": "3"}) for name in ("a", "b")]
    assert collectors.publish_many(writes) == [True, True]
    assert client.hget(keys.backend("a"), "num_requests_running") == "3"

    old = cluster.master_of(keys.inflight)
    old.kill()
    with pytest.raises(REDIS_ERRORS):
        collectors.publish_many(writes)
    cluster.wait_promoted(keys.inflight, old)
    writes = [FieldWrite(name, {"num_requests_running": "5"}) for name in ("a", "b")]

    def published() -> bool:
        try:
            return collectors.publish_many(writes) == [True, True]
        except REDIS_ERRORS:
            return False

    wait_until(published, timeout=10, message="a publish to the promoted master")
    assert client.hget(keys.backend("b"), "num_requests_running") == "5"
    client.close()
