"""What an operator sees: Prometheus metrics summed over workers, one JSON log line per request."""

from __future__ import annotations

import json
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import LLMLBD, StubBackends

pytestmark = pytest.mark.e2e

SECRET = "the-secret-prompt-text-4f1c"


def samples(text: str, name: str) -> dict[tuple, float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def logged_pids(log: str) -> set[int]:
    """The worker pids of the request log's `request_done` lines."""
    return {
        json.loads(line)["pid"]
        for line in log.splitlines()
        if line.startswith("{") and '"request_done"' in line
    }


def test_metrics_sum_every_worker_and_logs_one_line_per_request(redis_server):
    with StubBackends(2) as stubs:
        config = {
            "redis": {"url": redis_server.url},
            "backends": stubs.config(),
            "server": {"pool": "observe"},
            "collector": {"enabled": False},
        }
        with LLMLBD(config, workers=2) as proxy:
            body = {"model": "stub-model", "messages": [{"role": "user", "content": SECRET}]}
            # New connections each time, so both workers can take requests. Which worker
            # accepts is the kernel's choice (on a busy host one may take a whole round), and
            # the sums below must span both: send rounds of 30 until both have logged one.
            sent = 0
            while sent < 300:
                for _ in range(30):
                    r = requests.post(
                        f"{proxy.url}/v1/chat/completions",
                        json=body,
                        headers={"Connection": "close", "x-request-id": "client-42"},
                    )
                    assert r.status_code == 200
                    sent += 1
                time.sleep(0.3)  # the request log is flushed every 0.1 s
                if len(logged_pids(proxy.log())) == 2:
                    break
            requests.post(
                f"{proxy.url}/v1/chat/completions", data=b"{broken", headers={"Connection": "close"}
            )
            text = requests.get(f"{proxy.url}/metrics").text

            served = samples(text, "llmlbd_requests_total")
            ok = {labels: v for labels, v in served.items() if dict(labels)["status"] == "200"}
            assert sum(ok.values()) == sent
            assert {dict(labels)["backend"] for labels in ok} == {"stub-0", "stub-1"}
            decisions = samples(text, "llmlbd_decision_seconds_count")
            assert decisions[(("policy", "global_least_request"),)] == sent
            assert samples(text, "llmlbd_redis_seconds_count")[(("op", "release"),)] == sent
            assert (
                samples(text, "llmlbd_requests_total")[
                    (("backend", ""), ("policy", ""), ("status", "400"))
                ]
                == 1
            )
            # Shared state read from Redis at scrape time: nothing in flight now, both usable.
            assert samples(text, "llmlbd_backend_inflight") == {
                (("backend", "stub-0"), ("pool", "observe")): 0,
                (("backend", "stub-1"), ("pool", "observe")): 0,
            }
            assert set(samples(text, "llmlbd_backend_usable").values()) == {1}

            logged = [
                json.loads(line)
                for line in proxy.log().splitlines()
                if line.startswith("{") and '"request_done"' in line
            ]
            # llmlbd's own 400 for the broken body has its line too.
            own = [line for line in logged if line["status"] == 400]
            assert len(own) == 1 and own[0]["outcome"] == "invalid_request"
            lines = [line for line in logged if line["status"] != 400]
            pids = {line["pid"] for line in lines}
            assert len(lines) == sent and len(pids) == 2  # both workers served, all counted
            line = lines[0]
            for field in (
                "request_id",
                "backend",
                "policy",
                "reason",
                "status",
                "bytes",
                "ttfb_ms",
                "duration_ms",
                "outcome",
                "timestamp",
                "level",
            ):
                assert field in line
            assert line["client_request_id"] == "client-42"
            # The response names its log line (workers may log out of order).
            assert r.headers["x-llmlbd-request-id"] in {line["request_id"] for line in lines}
            assert line["outcome"] == "complete" and line["status"] == 200
            assert SECRET not in proxy.log()


def test_prefix_hit_ratio_and_decision_details(redis_server):
    """prefix_cache decisions feed llmlbd_prefix_blocks_total and the request log says why."""
    with StubBackends(2) as stubs:
        config = {
            "redis": {"url": redis_server.url},
            "backends": stubs.config(),
            "server": {"pool": "prefixobs"},
            "lb_policy": "prefix_cache",
            "collector": {"enabled": False},
        }
        with LLMLBD(config, workers=1) as proxy:
            messages = [{"role": "system", "content": "You are terse. " * 40}]
            for turn in range(3):
                messages.append({"role": "user", "content": f"question {turn} " * 20})
                r = requests.post(
                    f"{proxy.url}/v1/chat/completions",
                    json={"model": "stub-model", "messages": messages},
                )
                assert r.status_code == 200
                messages.append({"role": "assistant", "content": f"answer {turn} " * 20})
            blocks = samples(
                requests.get(f"{proxy.url}/metrics").text, "llmlbd_prefix_blocks_total"
            )
            prompt, matched = blocks[(("kind", "prompt"),)], blocks[(("kind", "matched"),)]
            assert 0 < matched < prompt  # turns 2 and 3 matched what turn 1 and 2 left
            lines = [
                json.loads(line)
                for line in proxy.log().splitlines()
                if line.startswith("{") and '"request_done"' in line
            ]
            assert [line["decision"]["matched_blocks"] > 0 for line in lines] == [False, True, True]
