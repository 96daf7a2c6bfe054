"""LoRA adapters: on-demand loading into max_loras slots, and how they show on the metrics page."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import wait_until
from tests.simfleet import SimFleet


def lora_series(url: str) -> list:
    families = {
        f.name: f
        for f in text_string_to_metric_families(requests.get(url + "/metrics", timeout=5).text)
    }
    return families["vllm:lora_requests_info"].samples


def newest(url: str) -> dict:
    series = lora_series(url)
    return max(series, key=lambda sample: sample.value).labels if series else {}


def test_an_adapter_in_flight_is_the_newest_lora_series_and_is_listed_in_models():
    with (
        SimFleet(1, lora="sql-lora,food-review", max_loras=1, lora_load_s=0.2) as fleet,
        requests.Session() as http,
    ):
        url = fleet.url
        assert lora_series(url) == []  # no engine step yet, so no series (as vLLM)
        body = {
            "model": "sql-lora",
            "prompt": "SELECT",
            "max_tokens": 400,
            "ignore_eos": True,
            "stream": True,
        }
        with http.post(url + "/v1/completions", json=body, stream=True, timeout=10):
            wait_until(
                lambda: newest(url).get("running_lora_adapters") == "sql-lora",
                timeout=5,
                message="sql-lora in lora_requests_info",
            )
            assert newest(url)["waiting_lora_adapters"] == "sql-lora"  # vLLM 0.33 repeats the list
            timestamp = max(s.value for s in lora_series(url))
            assert timestamp > 1.7e9  # the value is a Unix time, not a count
            assert newest(url)["max_lora"] == "1"
            wait_until(
                lambda: (
                    "sql-lora" in http.get(url + "/debug/state", timeout=5).json()["loras_loaded"]
                ),
                timeout=5,
                message="sql-lora loaded",
            )
        # Once the adapter's request is gone, the newest series is the empty one.
        wait_until(
            lambda: newest(url)["running_lora_adapters"] == "", timeout=10, message="empty series"
        )
        ids = [card["id"] for card in http.get(url + "/v1/models", timeout=5).json()["data"]]
        assert "sql-lora" in ids


def test_one_slot_defers_the_second_adapter_until_the_first_is_idle():
    with (
        SimFleet(1, lora="a,b", max_loras=1, lora_load_s=0.05, time_scale=0.2) as fleet,
        requests.Session() as http,
    ):
        url = fleet.url
        long_a = http.post(
            url + "/v1/completions",
            stream=True,
            timeout=10,
            json={
                "model": "a",
                "prompt": "x",
                "max_tokens": 600,
                "ignore_eos": True,
                "stream": True,
            },
        )
        try:
            wait_until(
                lambda: (
                    http.get(url + "/debug/state", timeout=5).json()["num_requests_running"] == 1
                ),
                timeout=5,
                message="a running",
            )
            b = http.post(
                url + "/v1/completions",
                stream=True,
                timeout=10,
                json={"model": "b", "prompt": "y", "max_tokens": 2, "stream": True},
            )
            with b:
                state = wait_until(
                    lambda: (lambda s: s if s["num_requests_deferred"] == 1 else None)(
                        http.get(url + "/debug/state", timeout=5).json()
                    ),
                    timeout=5,
                    message="b deferred",
                )
                assert state["loras_loaded"] == ["a"]
                waiting = {
                    s.labels["reason"]: s.value
                    for f in text_string_to_metric_families(
                        http.get(url + "/metrics", timeout=5).text
                    )
                    if f.name == "vllm:num_requests_waiting_by_reason"
                    for s in f.samples
                }
                assert waiting == {"capacity": 0.0, "deferred": 1.0}
                long_a.close()  # a's request goes away, its slot frees, b loads and runs
                assert b.content.endswith(b"data: [DONE]\n\n")
            state = http.get(url + "/debug/state", timeout=5).json()
            assert state["loras_loaded"] == ["b"] and state["lora_evictions"] == 1
        finally:
            long_a.close()
