"""`llmlbctl backend add|remove|list`: membership in the Redis members hash."""

from __future__ import annotations

import json

from llmlbd import exits


def members(client, keys):
    return {name: json.loads(value) for name, value in client.hgetall(keys.members).items()}


class TestBackend:
    def test_list_comes_from_the_config_until_the_hash_exists(self, ctl):
        data = json.loads(ctl("backend", "list", "--json").stdout)
        assert data["membership"] == "config"
        assert [b["name"] for b in data["backends"]] == ["a", "b", "c"]
        assert "from the config file" in ctl("backend", "list").stdout

    def test_first_add_seeds_the_config_backends(self, ctl, redis_client, keys):
        """Adding one backend writes the config's backends too, so none is dropped."""
        result = ctl("backend", "add", "http://10.0.0.4:8000", "--weight", "3")
        assert result.exit_code == exits.OK, result.output
        assert "added 10.0.0.4:8000" in result.stdout
        assert members(redis_client, keys) == {
            "a": {"url": "http://127.0.0.1:9001", "weight": 1.0},
            "b": {"url": "http://127.0.0.1:9002", "weight": 1.0},
            "c": {"url": "http://127.0.0.1:9003", "weight": 2.0},
            "10.0.0.4:8000": {"url": "http://10.0.0.4:8000", "weight": 3.0},
        }
        data = json.loads(ctl("backend", "list", "--json").stdout)
        assert data["membership"] == "redis" and len(data["backends"]) == 4

    def test_add_existing_name_needs_replace(self, ctl, redis_client, keys):
        assert ctl("backend", "add", "http://127.0.0.1:9001", "--name", "a").stdout.startswith(
            "unchanged"
        )
        result = ctl("backend", "add", "http://127.0.0.1:9009", "--name", "a")
        assert result.exit_code == exits.FAILURE and "--replace" in result.stderr
        data = json.loads(
            ctl(
                "backend", "add", "http://127.0.0.1:9009", "--name", "a", "--replace", "--json"
            ).stdout
        )
        assert data["action"] == "replaced"
        assert members(redis_client, keys)["a"]["url"] == "http://127.0.0.1:9009"

    def test_same_url_twice_is_refused(self, ctl):
        result = ctl("backend", "add", "http://127.0.0.1:9002", "--name", "b2")
        assert result.exit_code == exits.FAILURE and "already in the pool as b" in result.stderr

    def test_bad_arguments_exit_2(self, ctl, redis_client, keys):
        assert ctl("backend", "add", "ftp://x").exit_code == exits.BAD_CONFIG
        assert ctl("backend", "add", "http://x:1", "--name", "no spaces").exit_code == 2
        assert ctl("backend", "add", "http://x:1", "--weight", "0").exit_code == 2
        assert not redis_client.exists(keys.members)

    def test_remove(self, ctl, redis_client, keys):
        """remove drops NAME (seeding the rest), reports its in-flight count, keeps its
        drained flag, refuses unknown names (3) and the last backend (1)."""
        redis_client.hset(keys.inflight, "b", 2)
        redis_client.sadd(keys.drained, "b")
        result = ctl("backend", "remove", "b")
        assert result.exit_code == exits.OK, result.output
        assert "2 request(s) still in flight" in result.stdout
        assert set(members(redis_client, keys)) == {"a", "c"}
        assert redis_client.sismember(keys.drained, "b")
        assert ctl("backend", "remove", "b").exit_code == exits.NOT_FOUND
        assert ctl("backend", "remove", "a", "--json").exit_code == exits.OK
        last = ctl("backend", "remove", "c")
        assert last.exit_code == exits.FAILURE and "no backend" in last.stderr
        assert set(members(redis_client, keys)) == {"c"}

    def test_changes_are_seen_by_status(self, ctl):
        ctl("backend", "add", "http://10.0.0.4:8000", "--name", "new")
        ctl("backend", "remove", "a")
        data = json.loads(ctl("status", "--json").stdout)
        assert [b["name"] for b in data["backends"]] == ["b", "c", "new"]
