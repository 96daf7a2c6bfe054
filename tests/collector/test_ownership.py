"""Which collector scrapes which backend: the claim, publish and leave scripts, and failover."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time

import pytest
from redis.crc import key_slot

from llmlbd.state import backend_fields as F
from llmlbd.state.collectors import CollectorLeases, new_collector_id
from llmlbd.state.keys import PoolKeys
from tests.collector.pages import page
from tests.harness import Proc, wait_until

KEYS = PoolKeys("default")
NAMES = [f"b{i}" for i in range(6)]


def leases(client, cid, lease_ms=1000):
    return CollectorLeases(client, KEYS, cid, lease_ms)


class TestClaimScript:
    def test_alone_takes_everything_and_renews(self, redis_client):
        """A single collector owns every backend; a second claim keeps them and pushes the deadline."""
        a = leases(redis_client, "A")
        assert a.claim(NAMES) == set(NAMES)
        first = redis_client.hget(KEYS.scrape_owners, "b0")
        time.sleep(0.01)
        assert a.claim(NAMES) == set(NAMES)
        later = redis_client.hget(KEYS.scrape_owners, "b0")
        assert first.split()[0] == "A" and int(later.split()[1]) > int(first.split()[1])
        assert redis_client.zscore(KEYS.collectors, "A") is not None

    def test_newcomer_gets_a_fair_share_and_sets_are_disjoint(self, redis_client):
        """Two live collectors split the backends half and half, never both owning one."""
        a, b = leases(redis_client, "A"), leases(redis_client, "B")
        a.claim(NAMES)
        owned_b = b.claim(NAMES)  # A holds all: B gets nothing yet...
        owned_a = a.claim(NAMES)  # ...A lets go of its extra share...
        owned_b = b.claim(NAMES)  # ...and B takes it.
        assert owned_a.isdisjoint(owned_b) and owned_a | owned_b == set(NAMES)
        assert len(owned_a) == len(owned_b) == 3
        assert a.claim(NAMES) == owned_a and b.claim(NAMES) == owned_b  # stable

    def test_dead_collectors_backends_are_taken_after_its_lease(self, redis_client):
        """When A stops renewing, B takes A's backends once A's lease (Redis clock) ran out."""
        a, b = leases(redis_client, "A", 150), leases(redis_client, "B", 150)
        a.claim(NAMES), b.claim(NAMES), a.claim(NAMES)
        assert len(b.claim(NAMES)) == 3
        time.sleep(0.1)
        assert len(b.claim(NAMES)) == 3  # A's lease still runs
        time.sleep(0.1)
        assert b.claim(NAMES) == set(NAMES)
        assert redis_client.zscore(KEYS.collectors, "A") is None

    def test_leave_hands_over_at_once(self, redis_client):
        """A collector that leaves frees its backends for the next claim, lease or not."""
        a, b = leases(redis_client, "A", 60_000), leases(redis_client, "B", 60_000)
        a.claim(NAMES)
        assert a.leave(NAMES) == 6
        assert b.claim(NAMES) == set(NAMES)

    def test_publish_is_fenced(self, redis_client):
        """Only the owner's writes land; a former owner's are refused with nothing written."""
        a, b = leases(redis_client, "A"), leases(redis_client, "B")
        a.claim(["x"])
        assert a.publish("x", {F.WAITING: "1", F.RUNNING: "2"}, scraped_age_ms=5)
        assert not b.publish("x", {F.WAITING: "99"}, scraped_age_ms=0)
        h = redis_client.hgetall(KEYS.backend("x"))
        assert h[F.WAITING] == "1" and h[F.RUNNING] == "2"
        seconds, micros = redis_client.time()
        assert 0 <= seconds * 1000 + micros // 1000 - int(h[F.SCRAPED_AT]) < 1000
        assert a.publish("x", {F.WAITING: "4"}, delete=[F.RUNNING])
        assert redis_client.hgetall(KEYS.backend("x")).keys() == {
            F.WAITING,
            F.SCRAPED_AT,
            F.INFLIGHT_AT_SCRAPE,
        }

    def test_publish_records_the_inflight_count_at_the_scrape(self, redis_client):
        """A scrape's publish stores llmlbd's in-flight count of that moment beside the
        metrics (the load filters' baseline); a publish without metrics leaves it alone."""
        a = leases(redis_client, "A")
        a.claim(["x"])
        assert a.publish("x", {F.WAITING: "0"}, scraped_age_ms=3)
        assert redis_client.hget(KEYS.backend("x"), F.INFLIGHT_AT_SCRAPE) == "0"
        redis_client.hset(KEYS.inflight, "x", 7)
        assert a.publish("x", {F.WAITING: "2"}, scraped_age_ms=3)
        assert redis_client.hget(KEYS.backend("x"), F.INFLIGHT_AT_SCRAPE) == "7"
        redis_client.hset(KEYS.inflight, "x", 9)
        assert a.publish("x", {F.HEALTH: "up"})
        assert redis_client.hget(KEYS.backend("x"), F.INFLIGHT_AT_SCRAPE) == "7"

    def test_keys_share_one_cluster_slot(self, redis_client):
        """Every key a collector script touches hashes to the pool's slot (Redis Cluster)."""
        keys = [KEYS.collectors, KEYS.scrape_owners, KEYS.backend("b0"), KEYS.backend("zz")]
        assert len({key_slot(k.encode()) for k in keys}) == 1

    def test_ids_are_unique_and_space_free(self):
        ids = {new_collector_id() for _ in range(50)}
        assert len(ids) == 50 and not any(" " in i for i in ids)
        with pytest.raises(ValueError):
            CollectorLeases(None, KEYS, "has space", 1000)


def _collector_proc(config_path: str, cid: str, extra_env: dict | None = None) -> Proc:
    return Proc(
        [sys.executable, "-m", "collector", "--config", config_path, "--id", cid],
        name=f"collector-{cid}",
        env=extra_env,
    )


def _write_config(tmp_path, redis_url, servers, **collector) -> str:
    backends = "\n".join(f"  - {{name: {n}, url: '{s.url}'}}" for n, s in servers.items())
    settings = {"interval_ms": 100, "health_interval_ms": 200, "metrics_port": 0, **collector}
    path = tmp_path / "collector.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        redis: {{url: '{redis_url}'}}
        logging: {{level: warning}}
        collector: {settings!r}
        backends:
        """)
        + backends
        + "\n"
    )
    return str(path)


def test_two_collectors_one_killed_failover_within_2s(
    tmp_path, redis_url, redis_client, page_server
):
    """Two collector processes split the backends; after SIGKILL of one, the other scrapes all within 2 s."""
    body = page("vllm_dp2_sim.txt")
    servers = {f"b{i}": page_server(body) for i in range(4)}
    config = _write_config(tmp_path, redis_url, servers)
    first, second = _collector_proc(config, "c1"), _collector_proc(config, "c2")
    try:

        def split():
            owners = redis_client.hgetall(KEYS.scrape_owners)
            who = {v.split()[0] for v in owners.values()}
            return len(owners) == 4 and who == {"c1", "c2"}

        wait_until(split, timeout=15, message="both collectors own backends")
        owners = {b: v.split()[0] for b, v in redis_client.hgetall(KEYS.scrape_owners).items()}
        victims = [b for b, o in owners.items() if o == "c1"]
        # each backend is scraped by exactly one collector: count requests per server
        for s in servers.values():
            s.requests.clear()
        time.sleep(1.0)
        for s in servers.values():
            assert 5 <= s.requests.count("/metrics") <= 14, s.requests.count("/metrics")

        first.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        first.popen.wait(5)

        def taken_over():
            owners = redis_client.hgetall(KEYS.scrape_owners)
            return all(owners.get(b, "").startswith("c2 ") for b in victims)

        wait_until(taken_over, timeout=5, interval=0.01, message="takeover")
        # ...and the victims' metrics are fresh again, scraped by c2
        seconds, micros = redis_client.time()
        start_ms = seconds * 1000 + micros // 1000

        def fresh():
            return all(
                int(redis_client.hget(KEYS.backend(b), F.SCRAPED_AT) or 0) > start_ms
                for b in victims
            )

        wait_until(fresh, timeout=5, interval=0.01, message="fresh metrics")
        elapsed = time.monotonic() - killed_at
        print(f"failover took {elapsed:.3f} s")
        assert elapsed < 2.0, f"failover took {elapsed:.2f} s"
    finally:
        first.stop()
        second.stop()
    assert second.popen.returncode == 0, second.log()


def test_sigterm_releases_and_notifies_systemd(tmp_path, redis_url, redis_client, page_server):
    """Under systemd: READY=1 after the first publish, STOPPING=1 and ownership released on SIGTERM."""
    import socket

    servers = {"a": page_server(page("vllm_dp2_sim.txt"))}
    config = _write_config(tmp_path, redis_url, servers)
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(15)
    proc = _collector_proc(config, "solo", {"NOTIFY_SOCKET": sock_path})
    try:
        assert sock.recv(64) == b"READY=1"
        # READY=1 means the fields are already in Redis.
        assert redis_client.hget(KEYS.backend("a"), F.RUNNING) == "12"
        proc.signal(signal.SIGTERM)
        assert sock.recv(64) == b"STOPPING=1"
        assert proc.popen.wait(10) == 0
        assert redis_client.hgetall(KEYS.scrape_owners) == {}
        assert redis_client.zscore(KEYS.collectors, "solo") is None
    finally:
        proc.stop()
        sock.close()
        os.unlink(sock_path)


def test_release_keeps_heartbeat(redis_client):
    """Releasing a removed backend frees it but keeps the collector alive in the heartbeat set."""
    a = leases(redis_client, "A")
    a.claim(["x", "y"])
    assert a.release(["x", "nope"]) == 1
    assert set(redis_client.hkeys(KEYS.scrape_owners)) == {"y"}
    assert redis_client.zscore(KEYS.collectors, "A") is not None


def test_collector_follows_pool_membership(redis_client, page_server, run_collector):
    """Backends added to / removed from the members hash are scraped / dropped within seconds."""
    import json

    a = page_server(page("vllm_dp2_sim.txt"))
    b = page_server(page("sglang_0.5.txt"))
    run = run_collector([("a", a.url)])
    wait_until(lambda: redis_client.hget(KEYS.backend("a"), F.RUNNING) == "12")
    # what `llmlbctl backend add b` writes: the seed and the new member together
    redis_client.hset(
        KEYS.members,
        mapping={
            "a": json.dumps({"url": a.url, "weight": 1.0}),
            "b": json.dumps({"url": b.url, "weight": 1.0}),
        },
    )
    wait_until(
        lambda: redis_client.hget(KEYS.backend("b"), F.WAITING) == "4",
        timeout=5,
        message="new member scraped",
    )
    redis_client.hdel(KEYS.members, "a")
    wait_until(
        lambda: (
            "a" not in run.collector.workers and redis_client.hget(KEYS.scrape_owners, "a") is None
        ),
        timeout=5,
        message="removed member released",
    )
    a.requests.clear()
    time.sleep(0.3)
    assert "/metrics" not in a.requests
