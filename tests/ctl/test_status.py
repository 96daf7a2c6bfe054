"""`llmlbctl status` against a real Redis, in text and JSON."""

from __future__ import annotations

import json

from llmlbd import exits
from tests.ctl.conftest import redis_now_ms, seed_metrics, write_config


class TestStatus:
    def test_empty_pool_shows_every_configured_backend(self, ctl):
        """With nothing in Redis yet, status lists the config's backends as unknown and stale."""
        result = ctl("status", "--json")
        assert result.exit_code == exits.OK, result.output
        data = json.loads(result.stdout)
        assert [b["name"] for b in data["backends"]] == ["a", "b", "c"]
        assert data["membership"] == "config"
        assert data["pool"] == "ctltest"
        assert data["policy"] == "global_least_request"
        assert all(b["health"] == "unknown" and b["stale"] for b in data["backends"])
        assert data["redis"]["role"] == "master"
        assert data["redis"]["latency_ms"] >= 0

    def test_shows_load_metrics_workers_and_collectors(self, ctl, redis_client, keys):
        """In-flight counts, metrics and their age, drained flags, live and dead workers,
        replicas (hosts) and collectors all come through, in JSON and in the table."""
        now = redis_now_ms(redis_client)
        seed_metrics(
            redis_client, keys, "a", waiting=3, running=7, kv_usage=0.5, models="llama,llama-lora"
        )
        seed_metrics(
            redis_client,
            keys,
            "b",
            now_ms=now - 60_000,
            health="down",
            last_error="connection refused",
        )
        redis_client.hset(keys.inflight, mapping={"a": 4, "c": 1})
        redis_client.sadd(keys.drained, "c")
        redis_client.zadd(
            keys.workers,
            {
                "host1:100:aa": now + 5000,
                "host1:101:bb": now + 5000,
                "host2:200:cc": now + 5000,
                "host3:300:dd": now - 1000,
            },
        )
        redis_client.zadd(keys.collectors, {"host1:col:1": now + 5000})
        redis_client.hset(keys.scrape_owners, "a", f"host1:col:1 {now + 3000}")

        result = ctl("status", "--json")
        assert result.exit_code == exits.OK, result.output
        data = json.loads(result.stdout)
        a, b, c = data["backends"]
        assert (a["inflight"], a["waiting"], a["running"], a["kv_usage"]) == (4, 3, 7, 0.5)
        assert a["models"] == ["llama", "llama-lora"] and a["health"] == "up" and not a["stale"]
        assert b["health"] == "down" and b["stale"] and b["metrics_age_ms"] >= 60_000
        assert b["last_error"] == "connection refused"
        assert c["drained"] and c["weight"] == 2.0
        assert data["serving"] == 1  # a; b is down and c drained
        assert {w["id"] for w in data["workers"]["live"]} == {
            "host1:100:aa",
            "host1:101:bb",
            "host2:200:cc",
        }
        assert [w["id"] for w in data["workers"]["dead"]] == ["host3:300:dd"]
        assert data["replicas"] == [
            {"host": "host1", "workers": 2},
            {"host": "host2", "workers": 1},
        ]
        assert [c["id"] for c in data["collectors"]["live"]] == ["host1:col:1"]
        assert data["scrape_owners"]["a"]["collector"] == "host1:col:1"

        text = ctl("status")
        assert text.exit_code == exits.OK
        lines = text.stdout.splitlines()
        row_a = next(line for line in lines if line.startswith("a "))
        assert "up" in row_a and "50%" in row_a and "llama" in row_a
        assert "DRAINED" in next(line for line in lines if line.startswith("c "))
        assert "STALE" in next(line for line in lines if line.startswith("b "))
        assert "3 live on 2 replica(s)" in text.stdout
        assert "1 expired" in text.stdout

    def test_exit_4_when_no_backend_can_serve(self, ctl, redis_client, keys):
        """Every backend down or drained: status still prints, and exits 4."""
        redis_client.sadd(keys.drained, "a", "b")
        seed_metrics(redis_client, keys, "c", health="down")
        result = ctl("status")
        assert result.exit_code == exits.UNHEALTHY
        assert "NO BACKEND CAN TAKE REQUESTS" in result.stdout
        assert ctl("status", "--json").exit_code == exits.UNHEALTHY

    def test_members_hash_overrides_the_config(self, ctl, redis_client, keys):
        """Once the members hash exists, status lists its backends, not the config's."""
        redis_client.hset(
            keys.members, "z", json.dumps({"url": "http://10.0.0.9:8000", "weight": 1})
        )
        data = json.loads(ctl("status", "--json").stdout)
        assert data["membership"] == "redis"
        assert [b["name"] for b in data["backends"]] == ["z"]

    def test_without_configured_backends_they_are_discovered(
        self, tmp_path, ctl, redis_url, redis_client, keys
    ):
        """A config with no backends (the demo) and no members hash: status lists the
        backends the collector and the lease scripts wrote about."""
        path = tmp_path / "demo.yaml"
        path.write_text(f"server: {{pool: ctltest}}\nredis: {{url: '{redis_url}'}}\n")
        seed_metrics(redis_client, keys, "sim-0", url="http://127.0.0.1:8100")
        redis_client.hset(keys.inflight, "sim-1", 0)
        data = json.loads(ctl("status", "--json", config=str(path)).stdout)
        assert data["membership"] == "discovered"
        assert [(b["name"], b["url"]) for b in data["backends"]] == [
            ("sim-0", "http://127.0.0.1:8100"),
            ("sim-1", ""),
        ]


class TestErrors:
    def test_bad_config_exits_2_naming_file_line_key(self, tmp_path, ctl, redis_url):
        """A config error ends the command with exit 2 and FILE:LINE: key: problem."""
        path = tmp_path / "bad.yaml"
        path.write_text(f"redis:\n  url: {redis_url}\nserver:\n  workers: zero\n")
        result = ctl("status", config=str(path))
        assert result.exit_code == exits.BAD_CONFIG
        assert f"{path}:4: server.workers:" in result.stderr

    def test_unreachable_redis_exits_1(self, tmp_path, ctl):
        """No Redis at the URL: exit 1 with one clear line, no traceback."""
        from tests.harness import free_port

        path = write_config(tmp_path / "down.yaml", f"redis://127.0.0.1:{free_port()}/0")
        result = ctl("status", config=path)
        assert result.exit_code == exits.FAILURE
        assert "cannot reach Redis at redis://127.0.0.1:" in result.stderr
        assert "Traceback" not in result.output

    def test_embedded_config_without_url_explains_what_to_do(self, tmp_path, ctl, monkeypatch):
        """An embedded-Redis config and no running socket: exit 1 naming --redis-url."""
        monkeypatch.setattr(
            "llmlbd.ctl.context.runtime_socket_candidates", lambda: [tmp_path / "nothing.sock"]
        )
        path = tmp_path / "embedded.yaml"
        path.write_text("backends: [http://127.0.0.1:9001]\n")
        result = ctl("status", config=str(path))
        assert result.exit_code == exits.FAILURE
        assert "--redis-url" in result.stderr

    def test_redis_url_option_overrides_the_config(self, tmp_path, ctl, redis_url):
        """--redis-url (or LLMLBD_REDIS_URL) is used even when the config names none."""
        path = tmp_path / "embedded.yaml"
        path.write_text("server: {pool: ctltest}\nbackends: [http://127.0.0.1:9001]\n")
        from click.testing import CliRunner

        from llmlbd.ctl import main

        result = CliRunner().invoke(
            main, ["--config", str(path), "--redis-url", redis_url, "status", "--json"]
        )
        assert result.exit_code == exits.OK, result.output
        assert json.loads(result.stdout)["backends"][0]["name"] == "127.0.0.1:9001"
        result = CliRunner(env={"LLMLBD_REDIS_URL": redis_url}).invoke(
            main, ["--config", str(path), "status", "--json"]
        )
        assert result.exit_code == exits.OK, result.output
