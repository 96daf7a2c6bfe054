"""llmlbctl against two real llmlbd replicas sharing one Redis (real gunicorn, real HTTP)."""

from __future__ import annotations

import collections
import json
import time

import pytest
import requests

from llmlbd import exits
from tests.harness import LLMLBD, StubBackends

pytestmark = pytest.mark.e2e

BODY = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]}


def served_by(replica: LLMLBD, count: int) -> collections.Counter:
    seen: collections.Counter = collections.Counter()
    with requests.Session() as session:
        for _ in range(count):
            response = session.post(f"{replica.url}/v1/chat/completions", json=BODY, timeout=10)
            assert response.status_code == 200, response.text
            seen[response.headers["x-llmlbd-backend"]] += 1
    return seen


@pytest.fixture
def fleet(tmp_path, redis_url):
    """Two stub backends and two llmlbd replicas (one worker each) on the shared Redis."""
    with StubBackends(2) as backends:
        config = {
            "server": {"pool": "e2e"},
            "redis": {"url": redis_url},
            "backends": backends.config(),
            "collector": {"enabled": False},
        }
        replicas = [LLMLBD(config, workers=1, name=f"replica{i}", wait=False) for i in range(2)]
        try:
            for replica in replicas:
                replica.wait_ready()
            yield backends, replicas
        finally:
            for replica in replicas:
                replica.stop()


def test_drain_reaches_every_replica_within_a_second(fleet, ctl, tmp_path, redis_url):
    """After `llmlbctl drain stub-0`, no new request reaches stub-0 through either replica
    (checked from one second on); after undrain it gets requests again. `status --json`
    lists both replicas' live workers."""
    _, replicas = fleet
    config = replicas[0].config_path

    status = ctl("status", "--json", config=config)
    assert status.exit_code == exits.OK, status.output
    data = json.loads(status.stdout)
    live = data["workers"]["live"]
    assert len(live) == 2, data["workers"]
    assert sum(r["workers"] for r in data["replicas"]) == 2
    assert [b["name"] for b in data["backends"]] == ["stub-0", "stub-1"]

    assert ctl("drain", "stub-0", config=config).exit_code == exits.OK
    time.sleep(1.0)
    for replica in replicas:
        assert served_by(replica, 12) == {"stub-1": 12}

    explain = ctl("explain", "--body", "-", "--json", input=json.dumps(BODY), config=config)
    assert json.loads(explain.stdout)["choice"] == "stub-1"

    assert ctl("undrain", "stub-0", config=config).exit_code == exits.OK
    time.sleep(1.0)
    seen = served_by(replicas[0], 10) + served_by(replicas[1], 10)
    assert seen["stub-0"] > 0, seen
    # Sequential requests release before the next: nothing is left in flight.
    assert (
        json.loads(ctl("inspect", "backend", "stub-0", "--json", config=config).stdout)["inflight"]
        == 0
    )


def test_drain_wait_lets_the_request_in_flight_finish(fleet, ctl, redis_client):
    """`drain --wait` returns once a slow request in flight on the backend has finished,
    and that request completes normally."""
    import threading

    from llmlbd.state.keys import PoolKeys

    _, replicas = fleet
    config = replicas[0].config_path
    keys = PoolKeys("e2e")
    assert ctl("drain", "stub-1", config=config).exit_code == exits.OK
    time.sleep(1.0)
    outcome = {}

    def slow_request():
        response = requests.post(
            f"{replicas[1].url}/v1/chat/completions",
            json=BODY,
            headers={"x-stub-delay": "1.5"},
            timeout=20,
        )
        outcome["status"] = response.status_code
        outcome["backend"] = response.headers.get("x-llmlbd-backend")

    thread = threading.Thread(target=slow_request)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while int(redis_client.hget(keys.inflight, "stub-0") or 0) < 1:
            assert time.monotonic() < deadline, "the slow request never reserved stub-0"
            time.sleep(0.02)
        result = ctl("drain", "stub-0", "--wait", "--interval", "0.1", "--json", config=config)
    finally:
        thread.join(20)
    assert result.exit_code == exits.OK, result.output
    data = json.loads(result.stdout)
    assert data["done"] and data["inflight"] == 0 and data["waited_s"] >= 0.5
    assert "1 in flight" in result.stderr
    assert outcome == {"status": 200, "backend": "stub-0"}
