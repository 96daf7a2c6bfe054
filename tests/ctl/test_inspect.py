"""`llmlbctl inspect backend|request|prefix` against a real Redis."""

from __future__ import annotations

import json

from llmlbd import exits
from llmlbd.state.leases import Leases
from tests.ctl.conftest import redis_now_ms, seed_metrics


def _lease(client, keys, worker, request_id, backend, ttl_ms=5000):
    leases = Leases(client, keys, worker, ttl_ms)
    leases.heartbeat()
    assert leases.acquire(request_id, backend).backend == backend
    return leases


class TestInspectBackend:
    def test_shows_leases_by_worker_and_every_metric(self, ctl, redis_client, keys):
        """Leases on the backend are counted per worker, dead workers' leases are flagged,
        and every field of the metrics hash is listed."""
        seed_metrics(redis_client, keys, "a", waiting=2, kv_usage=0.25, models="m")
        _lease(redis_client, keys, "h1:1:x", "req-1", "a")
        _lease(redis_client, keys, "h1:1:x", "req-2", "a")
        _lease(redis_client, keys, "h2:2:y", "req-3", "b")
        # A worker whose heartbeat expired, still holding a lease on a.
        _lease(redis_client, keys, "h3:3:z", "req-4", "a")
        redis_client.zadd(keys.workers, {"h3:3:z": redis_now_ms(redis_client) - 10})

        result = ctl("inspect", "backend", "a", "--json")
        assert result.exit_code == exits.OK, result.output
        data = json.loads(result.stdout)
        assert data["inflight"] == 3 and data["leases"] == 3
        assert data["leases_by_worker"] == {"h1:1:x": 2, "h3:3:z": 1}
        assert data["leases_of_dead_workers"] == 1
        assert {lease["request_id"] for lease in data["oldest_leases"]} == {
            "req-1",
            "req-2",
            "req-4",
        }
        assert data["metrics"]["waiting"] == "2" and data["metrics"]["models"] == "m"
        assert data["member"] and data["url"] == "http://127.0.0.1:9001"

        text = ctl("inspect", "backend", "a")
        assert text.exit_code == exits.OK
        assert "in flight: 3 (3 leases, 1 held by dead workers)" in text.stdout
        assert "kv_usage" in text.stdout and "h1:1:x" in text.stdout

    def test_unknown_backend_exits_3(self, ctl):
        """A name the pool does not know: exit 3, listing the known names."""
        result = ctl("inspect", "backend", "nope")
        assert result.exit_code == exits.NOT_FOUND
        assert "a, b, c" in result.stderr


class TestInspectRequest:
    def test_routing_state_shows_what_the_script_reads(self, ctl, redis_client, keys):
        """Without an id: per backend the in-flight count, drained flag, health, models and
        whether it could take a request for --model."""
        seed_metrics(redis_client, keys, "a", models="m1")
        seed_metrics(redis_client, keys, "b", health="down")
        redis_client.sadd(keys.drained, "c")
        redis_client.hset(keys.inflight, "a", 2)
        result = ctl("inspect", "request", "--model", "m2", "--json")
        assert result.exit_code == exits.OK, result.output
        data = json.loads(result.stdout)
        eligible = {b["name"]: b["eligible"] for b in data["backends"]}
        assert eligible == {"a": "model", "b": "down", "c": "drained"}
        assert data["backends"][0]["inflight"] == 2
        assert data["keys"]["drained"] == keys.drained
        text = ctl("inspect", "request", "--model", "m1")
        assert text.exit_code == exits.OK
        assert "ELIGIBLE" in text.stdout
        row_a = next(line for line in text.stdout.splitlines() if line.startswith("a "))
        assert row_a.rstrip().endswith("yes")

    def test_lease_of_a_request(self, ctl, redis_client, keys):
        """With an id: the backend and worker holding the lease, and whether it lives."""
        _lease(redis_client, keys, "h1:1:x", "req-9", "b")
        data = json.loads(ctl("inspect", "request", "req-9", "--json").stdout)
        assert data["backend"] == "b" and data["worker"] == "h1:1:x"
        assert data["replica"] == "h1" and data["worker_alive"]
        assert data["age_ms"] >= 0
        assert "-> backend b" in ctl("inspect", "request", "req-9").stdout

    def test_unknown_request_exits_3(self, ctl):
        result = ctl("inspect", "request", "no-such-request")
        assert result.exit_code == exits.NOT_FOUND
        assert "holds no lease" in result.stderr


class TestInspectPrefix:
    def test_counts_keys_per_backend_and_estimates_memory(self, ctl, redis_client, keys):
        """Each backend's entries in the prefix keys are counted via SCAN; memory is
        estimated from a sample; keys without a TTL are reported; other pools' keys are
        not counted."""
        # As acquire_prefix.lua writes them: HASH backend -> last use (ms).
        pipe = redis_client.pipeline()
        for i in range(1500):
            owners = {"a": 1} if i % 3 else {"a": 1, "b": 2}
            pipe.hset(keys.prefix(f"{i:08x}"), mapping=owners)
            pipe.pexpire(keys.prefix(f"{i:08x}"), 600_000)
        pipe.execute()
        redis_client.set(keys.prefix("noexpiry"), "c")  # a plain string, and no TTL
        redis_client.hset("llmlb:{otherpool}:prefix:ffff", "a", 1)
        redis_client.zadd(keys.prefix_owned_by("a"), {"h1": 1, "h2": 2})

        result = ctl("inspect", "prefix", "--sample", "2000", "--json")
        assert result.exit_code == exits.OK, result.output
        data = json.loads(result.stdout)
        assert data["keys"] == 1501
        assert data["keys_by_backend"] == {"a": 1500, "b": 500, "c": 1}
        assert data["sampled"] == 1501 and data["avg_bytes"] > 0
        assert data["estimated_bytes"] >= 1501 * 10
        assert data["sampled_without_ttl"] == 1
        assert data["owned_index_by_backend"] == {"a": 2, "b": 0, "c": 0}

        text = ctl("inspect", "prefix", "--sample", "10")
        assert text.exit_code == exits.OK
        assert "1501 prefix keys" in text.stdout and "MEMORY USAGE on 10 keys" in text.stdout

    def test_no_prefix_keys(self, ctl):
        data = json.loads(ctl("inspect", "prefix", "--json").stdout)
        assert data["keys"] == 0 and data["estimated_bytes"] == 0
