"""Outlier ejection through two real replicas (two `llmlbd start`) sharing one Redis.

One stub backend starts answering every request 503 while its /health stays
200 (so only the requests' outcomes can find it). After
`server.eject_after_failures` failed attempts, counted across both replicas
and all their workers, it is ejected: not one more request reaches it from
either replica, every client request still succeeds (retried before the
first byte), `llmlbctl status` and `/metrics` show it, and exactly one log
line says so. When it heals, the first request after the cool-down probes it
and brings it back (one more log line). No in-flight count leaks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import redis
import requests
import yaml

from llmlbd.state.keys import PoolKeys
from llmlbd.state.outlier import outlier_view
from tests.harness import LLMLBD, StubBackends, wait_until

pytestmark = pytest.mark.e2e

CHAT = {"model": "stub-model", "messages": [{"role": "user", "content": "hello"}]}
THRESHOLD = 3
COOLDOWN_S = 3.0
POOL = "eject"


def served(stubs: StubBackends, index: int) -> int:
    return requests.get(f"{stubs.urls[index]}/stub/inflight", timeout=5).json()["served"]


def redis_now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def chat(url: str) -> requests.Response:
    response = requests.post(f"{url}/v1/chat/completions", json=CHAT, timeout=30)
    assert response.status_code == 200, response.text
    return response


def test_both_replicas_eject_a_failing_backend_and_take_it_back(redis_server, tmp_path):
    keys = PoolKeys(POOL)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    with StubBackends(3) as stubs:
        config = {
            "redis": {"url": redis_server.url},
            "server": {
                "pool": POOL,
                "eject_after_failures": THRESHOLD,
                "eject_cooldown_s": COOLDOWN_S,
                "eject_probe_s": 10.0,
                "max_retries": 2,
            },
            "backends": stubs.config(),
            "collector": {"enabled": False},
            "logging": {"level": "info", "format": "json"},
        }
        config_path = tmp_path / "llmlbd.yaml"
        config_path.write_text(yaml.safe_dump(config))
        with (
            LLMLBD(config, workers=2, name="replica-a") as a,
            LLMLBD(config, workers=2, name="replica-b") as b,
        ):
            replicas = [a, b]
            for i in range(6):  # both replicas route to every backend while all is well
                chat(replicas[i % 2].url)
            before = served(stubs, 0)
            requests.get(f"{stubs.urls[0]}/stub/fail?status=503", timeout=5)

            # Until the threshold: failed attempts on stub-0 are retried elsewhere (200s).
            sent = 0
            while served(stubs, 0) - before < THRESHOLD:
                chat(replicas[sent % 2].url)
                sent += 1
                assert sent < 300, "stub-0 was never picked"
            ejected, records = outlier_view(client, keys)
            assert "stub-0" in ejected, (ejected, records)
            assert records["stub-0"].kind == "status" and records["stub-0"].level == 1

            # Within one decision: no request reached it after the failure that ejected it,
            # from either replica, for as long as the cool-down runs.
            hits = served(stubs, 0) - before
            assert hits == THRESHOLD
            during = 0
            while redis_now_ms(client) + 500 < ejected["stub-0"]:
                response = chat(replicas[during % 2].url)
                assert response.headers["x-llmlbd-backend"] != "stub-0"
                during += 1
            assert during >= 4, "the cool-down ended before both replicas were asked twice"
            assert served(stubs, 0) - before == THRESHOLD

            # Visible: llmlbctl status, /metrics, and one log line for the ejection.
            status = subprocess.run(
                [sys.executable, "-m", "llmlbd.ctl", "--config", str(config_path)]
                + ["status", "--json"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            rows = {row["name"]: row for row in json.loads(status.stdout)["backends"]}
            assert rows["stub-0"]["outlier"]["state"] in ("ejected", "half_open", "probing")
            assert rows["stub-0"]["unavailable"] in ("ejected", None)
            # The line follows the release script that ejected it: give the worker a moment.
            wait_until(lambda: '"backend_ejected"' in a.log() + b.log(), timeout=10)
            logs = a.log() + b.log()
            assert logs.count('"backend_ejected"') == 1, logs[-3000:]

            # Healed: after the cool-down, one request probes it and brings it back.
            requests.get(f"{stubs.urls[0]}/stub/fail?status=0", timeout=5)
            wait_until(lambda: redis_now_ms(client) > ejected["stub-0"], timeout=COOLDOWN_S + 5)
            after = 0
            while served(stubs, 0) - before == THRESHOLD:
                chat(replicas[after % 2].url)
                after += 1
                assert after < 300, "stub-0 was never probed"
            wait_until(lambda: outlier_view(client, keys) == ({}, {}), timeout=10)
            wait_until(lambda: '"backend_returned"' in a.log() + b.log(), timeout=10)
            logs = a.log() + b.log()
            assert logs.count('"backend_returned"') == 1, logs[-3000:]
            ejected_line = next(
                json.loads(line) for line in logs.splitlines() if '"backend_ejected"' in line
            )
            assert ejected_line["backend"] == "stub-0"
            assert ejected_line["cooldown_s"] == COOLDOWN_S
            assert ejected_line["kind"] == "status"
            picked = {chat(replicas[i % 2].url).headers["x-llmlbd-backend"] for i in range(30)}
            assert "stub-0" in picked

            metrics = "".join(requests.get(f"{r.url}/metrics", timeout=5).text for r in replicas)
            assert 'llmlbd_backend_ejected{backend="stub-0",pool="eject"} 0.0' in metrics
            assert (
                'llmlbd_outlier_events_total{backend="stub-0",event="ejected",kind="status"} 1.0'
                in metrics
            )

            # Nothing leaked: no lease, no in-flight count, nothing left on the stubs.
            wait_until(lambda: not client.hgetall(keys.inflight), timeout=10)
            assert client.hlen(keys.leases) == 0
            assert stubs.inflight() == {name: 0 for name in stubs.names}
    client.close()


def test_metrics_show_a_running_ejection(redis_server):
    """`llmlbd_backend_ejected` is read from Redis at scrape time: every replica agrees."""
    keys = PoolKeys("eject-metrics")
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    with StubBackends(2) as stubs:
        config = {
            "redis": {"url": redis_server.url},
            "server": {"pool": "eject-metrics", "eject_after_failures": 2},
            "backends": stubs.config(),
            "collector": {"enabled": False},
        }
        with LLMLBD(config, workers=1, name="metrics-a") as a:
            requests.get(f"{stubs.urls[1]}/stub/fail?status=503", timeout=5)
            deadline = time.monotonic() + 60
            while "stub-1" not in outlier_view(client, keys)[0]:
                chat(a.url)
                assert time.monotonic() < deadline, "stub-1 never ejected"
            metrics = requests.get(f"{a.url}/metrics", timeout=5).text
            assert 'llmlbd_backend_ejected{backend="stub-1",pool="eject-metrics"} 1.0' in metrics
            assert 'llmlbd_backend_usable{backend="stub-1",pool="eject-metrics"} 0.0' in metrics
            assert 'llmlbd_backend_usable{backend="stub-0",pool="eject-metrics"} 1.0' in metrics
    client.close()
