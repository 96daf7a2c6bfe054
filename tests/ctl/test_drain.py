"""`llmlbctl drain|undrain` against a real Redis (the e2e test checks real proxies obey)."""

from __future__ import annotations

import json
import threading
import time

from llmlbd import exits
from llmlbd.state.leases import Leases
from tests.state.least_request import acquire_least


def hold(client, keys, backend, count, worker="h1:1:x"):
    leases = Leases(client, keys, worker, 5000)
    leases.heartbeat()
    for i in range(count):
        assert leases.acquire(f"req-{backend}-{i}", backend).backend == backend
    return leases


class TestDrain:
    def test_drain_sets_the_flag_and_reports_inflight(self, ctl, redis_client, keys):
        """drain adds NAME to the drained SET and prints what is still in flight."""
        hold(redis_client, keys, "a", 2)
        result = ctl("drain", "a")
        assert result.exit_code == exits.OK, result.output
        assert "a drained: no new requests; 2 request(s) still in flight" in result.stdout
        assert redis_client.smembers(keys.drained) == {"a"}
        again = json.loads(ctl("drain", "a", "--json").stdout)
        assert again == {"backend": "a", "drained": True, "was_drained": True, "inflight": 2}

    def test_drained_backend_is_refused_by_the_acquire_script(self, ctl, redis_client, keys):
        """After drain, the lease scripts never pick NAME; after undrain they do again."""
        ctl("drain", "a")
        leases = Leases(redis_client, keys, "h1:1:x", 5000)
        picks = {acquire_least(leases, f"r{i}", ["a", "b"], [1, 1]).backend for i in range(10)}
        assert picks == {"b"}
        assert leases.acquire("one", "a").reason == "drained"
        assert ctl("undrain", "a").exit_code == exits.OK
        assert leases.acquire("two", "a").backend == "a"

    def test_unknown_backend_exits_3_unless_forced(self, ctl, redis_client, keys):
        result = ctl("drain", "typo")
        assert result.exit_code == exits.NOT_FOUND
        assert "--force" in result.stderr
        assert not redis_client.exists(keys.drained)
        assert ctl("drain", "typo", "--force").exit_code == exits.OK
        assert redis_client.sismember(keys.drained, "typo")
        # undrain cleans up a forced name even though it is not a backend.
        assert ctl("undrain", "typo").exit_code == exits.OK
        assert ctl("undrain", "typo").exit_code == exits.NOT_FOUND

    def test_undrain(self, ctl, redis_client, keys):
        ctl("drain", "b")
        data = json.loads(ctl("undrain", "b", "--json").stdout)
        assert data == {"backend": "b", "drained": False, "was_drained": True, "inflight": 0}
        assert "was not drained" in ctl("undrain", "b").stdout

    def test_wait_returns_when_inflight_reaches_zero(self, ctl, redis_client, keys):
        """drain --wait prints progress and returns once the last request is released."""
        leases = hold(redis_client, keys, "a", 2)

        def finish():
            time.sleep(0.3)
            leases.release("req-a-0")
            time.sleep(0.3)
            leases.release("req-a-1")

        worker = threading.Thread(target=finish)
        worker.start()
        started = time.monotonic()
        result = ctl("drain", "a", "--wait", "--interval", "0.05", "--json")
        worker.join()
        assert result.exit_code == exits.OK, result.output
        assert 0.5 <= time.monotonic() - started < 5
        data = json.loads(result.stdout)
        assert data["done"] and data["inflight"] == 0
        assert "2 in flight" in result.stderr and "1 in flight" in result.stderr

    def test_wait_times_out_with_exit_1(self, ctl, redis_client, keys):
        hold(redis_client, keys, "a", 1)
        result = ctl("drain", "a", "--wait", "--timeout", "0.3", "--interval", "0.05")
        assert result.exit_code == exits.FAILURE
        assert "1 request(s) still in flight on a after 0.3 s" in result.stderr
        assert redis_client.sismember(keys.drained, "a")  # it stays drained
