"""least_busy end to end: `llmlbd sim` servers, the collector, real Redis, `llmlbd start`.

Part of the fleet is made small (2 running slots instead of 8), so a load
that fits the fleet as a whole saturates those servers. The true queue of
every server is sampled from the simulator's /debug/state while the load
runs.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections import Counter
from typing import Any

import pytest
import requests
import yaml

from tests.harness import LLMLBD, Proc, python_module, wait_until
from tests.simfleet import SimFleet

pytestmark = pytest.mark.e2e

MODEL = "sim-llama"
FAST_COLLECTOR = {
    "interval_ms": 50,
    "timeout_ms": 500,
    "health_interval_ms": 200,
    "models_refresh_s": 1.0,
    "metrics_port": 0,
}
# Two roomy servers and two small ones: the small ones saturate first.
SERVERS = [{"max_num_seqs": 8}, {"max_num_seqs": 8}, {"max_num_seqs": 2}, {"max_num_seqs": 2}]


def proxy_config(redis_url: str, fleet: SimFleet, policy: str, **lb_config: Any) -> dict:
    return {
        "redis": {"url": redis_url},
        "backends": [{"name": n, "url": u} for n, u in zip(fleet.names, fleet.urls)],
        "lb_policy": policy,
        "lb_config": lb_config,
        "collector": {**FAST_COLLECTOR, "enabled": False},
    }


class Collector:
    """`python -m collector --config FILE`, the standalone daemon, for one fleet."""

    def __init__(self, redis_url: str, fleet: SimFleet) -> None:
        config = {
            "redis": {"url": redis_url},
            "collector": FAST_COLLECTOR,
            "backends": [{"name": n, "url": u} for n, u in zip(fleet.names, fleet.urls)],
        }
        handle, self.path = tempfile.mkstemp(prefix="collector-", suffix=".yaml")
        with os.fdopen(handle, "w") as out:
            yaml.safe_dump(config, out)
        self.proc = Proc(python_module("collector", "--config", self.path), name="collector")

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stop()


def wait_for_metrics(redis_client, fleet: SimFleet) -> None:
    def scraped() -> bool:
        return all(
            redis_client.hget(f"llmlb:{{default}}:backend:{name}", "waiting") is not None
            for name in fleet.names
        )

    wait_until(scraped, timeout=20, message="collector published every backend")


class Load:
    """Closed-loop clients, each sending one short chat request after another."""

    def __init__(
        self,
        url: str,
        clients: int,
        seconds: float,
        headers_for: Any = lambda i: {},
        max_tokens: int = 24,
    ) -> None:
        self.url = url
        self.clients = clients
        self.seconds = seconds
        self.headers_for = headers_for
        self.max_tokens = max_tokens
        self.statuses: dict[str, Counter[int]] = {}
        self.shed_sample: tuple[dict, dict] | None = None
        self.lock = threading.Lock()

    def _client(self, index: int, deadline: float) -> None:
        session = requests.Session()
        headers = {"content-type": "application/json", **self.headers_for(index)}
        label = headers.get("x-llmlbd-criticality", "unmarked")
        body = json.dumps(
            {
                "model": MODEL,
                "max_tokens": self.max_tokens,
                "ignore_eos": True,
                "messages": [{"role": "user", "content": f"client {index} says hi"}],
            }
        )
        while time.monotonic() < deadline:
            try:
                response = session.post(
                    f"{self.url}/v1/chat/completions", data=body, headers=headers, timeout=30
                )
                status = response.status_code
                if status == 429 and self.shed_sample is None:
                    self.shed_sample = (dict(response.headers), response.json())
            except requests.RequestException:
                status = -1
            with self.lock:
                self.statuses.setdefault(label, Counter())[status] += 1
            if status == 429:
                time.sleep(0.05)  # a polite client honours Retry-After, loosely

    def run(self, fleet: SimFleet) -> dict[str, int]:
        """Run the load; return the largest true waiting queue seen per server."""
        deadline = time.monotonic() + self.seconds
        threads = [
            threading.Thread(target=self._client, args=(i, deadline), daemon=True)
            for i in range(self.clients)
        ]
        for thread in threads:
            thread.start()
        peak: Counter[str] = Counter()
        samples: dict[str, list[int]] = {name: [] for name in fleet.names}
        time.sleep(1.0)  # let the load settle before sampling
        while time.monotonic() < deadline - 0.2:
            for name, url in zip(fleet.names, fleet.urls):
                waiting = requests.get(f"{url}/debug/state", timeout=5).json()[
                    "num_requests_waiting"
                ]
                samples[name].append(waiting)
                peak[name] = max(peak[name], waiting)
            time.sleep(0.1)
        for thread in threads:
            thread.join(35)
        self.samples = samples
        return dict(peak)


def mean_max_queue(samples: dict[str, list[int]]) -> float:
    """The mean over sampling instants of the largest queue in the fleet at that instant."""
    rows = list(zip(*samples.values()))
    return sum(max(row) for row in rows) / len(rows)


def test_least_busy_keeps_queues_lower_than_global_least_request(redis_url, redis_client) -> None:
    """On a fleet whose small servers saturate, least_busy's worst queue is lower than GLR's."""
    results = {}
    with SimFleet(4, servers=SERVERS, time_scale=1.0) as fleet, Collector(redis_url, fleet):
        for policy in ("global_least_request", "least_busy"):
            with LLMLBD(proxy_config(redis_url, fleet, policy), workers=2) as proxy:
                wait_for_metrics(redis_client, fleet)
                load = Load(proxy.url, clients=24, seconds=4.5)
                load.run(fleet)
                results[policy] = mean_max_queue(load.samples)
                statuses = sum(load.statuses.values(), Counter())
                assert set(statuses) == {200}, (policy, statuses)
    print("mean of the fleet's largest waiting queue:", results)
    assert results["least_busy"] < results["global_least_request"], results


def test_sheddable_shed_first_critical_never(redis_url, redis_client) -> None:
    """Saturated: sheddable requests get 429 with Retry-After; critical ones all get 200."""
    with SimFleet(4, servers=SERVERS, time_scale=1.0) as fleet, Collector(redis_url, fleet):
        # 36 clients on 20 running slots leave about 4 waiting per server: a threshold of 2
        # (default 5) makes "every backend is queuing" happen often within a few seconds.
        config = proxy_config(redis_url, fleet, "least_busy", queueThresholdCritical=2)
        with LLMLBD(config, workers=2) as proxy:
            wait_for_metrics(redis_client, fleet)
            shed = requests.post(
                f"{proxy.url}/v1/chat/completions",
                timeout=10,
                json={
                    "model": MODEL,
                    "max_tokens": 4,
                    "messages": [{"role": "user", "content": "x"}],
                },
                headers={"x-llmlbd-criticality": "sheddable"},
            )
            assert shed.status_code == 200  # idle fleet: room for anyone
            load = Load(
                proxy.url,
                clients=36,
                seconds=4.5,
                headers_for=lambda i: {
                    "x-llmlbd-criticality": "critical" if i % 2 == 0 else "sheddable"
                },
            )
            load.run(fleet)
    critical, sheddable = load.statuses["critical"], load.statuses["sheddable"]
    print("critical:", dict(critical), "sheddable:", dict(sheddable))
    assert set(critical) == {200}, critical
    assert sheddable[429] > 0 and sheddable[200] > 0, sheddable
    headers, body = load.shed_sample
    assert int(headers["Retry-After"]) >= 1
    assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "shed"
