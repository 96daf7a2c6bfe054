"""Parity of the simulator with a real vLLM server: endpoints, shapes, metric families and labels.

Opt-in: start a real vLLM (``bash scripts/real_vllm/setup.sh serve``), then

    LLMLBD_REAL_VLLM_URL=http://127.0.0.1:8199 python -m pytest tests/sim/test_real_vllm_parity.py

The same requests go to the real server and to a simulator configured like
it (same served name, context length, LoRA enabled); the tests compare what a
load balancer or a collector reads: status codes, JSON key sets, SSE event
sequence, error bodies, /metrics families, types and label names, and the
prefix-cache counters. The simulator follows vLLM 0.33 while the CPU build
used here is 0.32, so a few keys that differ between those releases are
listed in VERSION_KEYS and ignored.
"""

from __future__ import annotations

import json
import os
import threading
import uuid

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import wait_until
from tests.simfleet import SimFleet

REAL_URL = os.environ.get("LLMLBD_REAL_VLLM_URL", "").rstrip("/")

# The opt-in real-vLLM tier, not a missing feature: it needs a running vLLM server, which
# CI does not start (its CPU build takes minutes); the simulator's parity with vLLM is tested without it by every tests/sim module.
pytestmark = [
    pytest.mark.realvllm,
    pytest.mark.skipif(
        not REAL_URL,
        reason="opt-in: set LLMLBD_REAL_VLLM_URL to a running vLLM "
        "(bash scripts/real_vllm/setup.sh serve)",
    ),
]

# Keys present in one release and not the other (vLLM 0.32 real server vs the 0.33 shapes simulated).
VERSION_KEYS = {"kv_transfer_params", "weight_versions", "system_fingerprint"}

PROMPT = " ".join(["the tenant shall keep the premises in good repair"] * 40)


@pytest.fixture(scope="module")
def pair():
    real_model = requests.get(REAL_URL + "/v1/models", timeout=10).json()["data"][0]
    # setup.sh serves one adapter, parity-lora, with --max-loras 1.
    with SimFleet(
        1,
        model=real_model["id"],
        max_model_len=real_model["max_model_len"],
        lora="parity-lora",
        max_loras=1,
        time_scale=0.1,
    ) as fleet:
        yield {
            "real": REAL_URL,
            "sim": fleet.url,
            "model": real_model["id"],
            "max_model_len": real_model["max_model_len"],
        }


def both(pair, method: str, path: str, **kwargs) -> dict[str, requests.Response]:
    return {
        side: requests.request(method, pair[side] + path, timeout=60, **kwargs)
        for side in ("real", "sim")
    }


def keys(value) -> set:
    return set(value) - VERSION_KEYS


def sse(response: requests.Response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith(b"data: "):
            payload = line[6:]
            events.append(payload if payload == b"[DONE]" else json.loads(payload))
    return events


def test_plain_endpoints_answer_alike(pair):
    for method, path, body in (
        ("GET", "/health", None),
        ("GET", "/v1/models", None),
        ("GET", "/version", None),
        ("POST", "/tokenize", {"model": pair["model"], "prompt": "Hello, world!"}),
        ("GET", "/nowhere", None),
        ("GET", "/v1/chat/completions", None),
    ):
        answers = both(pair, method, path, json=body)
        assert answers["real"].status_code == answers["sim"].status_code, path
        if answers["real"].content and answers["real"].headers.get("content-type", "").startswith(
            "application/json"
        ):
            assert keys(answers["real"].json()) == keys(answers["sim"].json()), path
    health = both(pair, "GET", "/health")
    assert health["real"].content == health["sim"].content == b""
    cards = {side: r.json()["data"][0] for side, r in both(pair, "GET", "/v1/models").items()}
    assert keys(cards["real"]) == keys(cards["sim"])
    assert keys(cards["real"]["permission"][0]) == keys(cards["sim"]["permission"][0])
    assert cards["real"]["max_model_len"] == cards["sim"]["max_model_len"]
    tokenized = {
        side: r.json()
        for side, r in both(
            pair, "POST", "/tokenize", json={"model": pair["model"], "prompt": "Hello"}
        ).items()
    }
    detokenized = {
        side: requests.post(
            pair[side] + "/detokenize",
            timeout=10,
            json={"model": pair["model"], "tokens": tokenized[side]["tokens"]},
        )
        for side in ("real", "sim")
    }
    assert detokenized["real"].status_code == detokenized["sim"].status_code == 200
    assert keys(detokenized["real"].json()) == keys(detokenized["sim"].json())


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello there"}]}),
        ("/v1/completions", {"prompt": "Hello there"}),
    ],
)
def test_non_streaming_bodies_have_the_same_keys(pair, path, body):
    answers = {
        side: r.json()
        for side, r in both(
            pair,
            "POST",
            path,
            json={**body, "model": pair["model"], "max_tokens": 5, "ignore_eos": True},
        ).items()
    }
    real, sim = answers["real"], answers["sim"]
    assert keys(real) == keys(sim)
    assert real["object"] == sim["object"]
    assert real["id"].split("-")[0] == sim["id"].split("-")[0]
    assert keys(real["choices"][0]) == keys(sim["choices"][0])
    if "message" in real["choices"][0]:
        assert keys(real["choices"][0]["message"]) == keys(sim["choices"][0]["message"])
    assert keys(real["usage"]) == keys(sim["usage"])
    assert real["usage"]["completion_tokens"] == sim["usage"]["completion_tokens"] == 5
    assert real["choices"][0]["finish_reason"] == sim["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello there"}]}),
        ("/v1/completions", {"prompt": "Hello there"}),
    ],
)
def test_streams_have_the_same_event_sequence(pair, path, body):
    streams = {}
    for side in ("real", "sim"):
        with requests.post(
            pair[side] + path,
            stream=True,
            timeout=60,
            json={
                **body,
                "model": pair["model"],
                "max_tokens": 4,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            streams[side] = sse(response)
    real, sim = streams["real"], streams["sim"]
    assert real[-1] == sim[-1] == b"[DONE]"
    assert len(real) == len(sim), (real, sim)
    for real_event, sim_event in zip(real[:-1], sim[:-1]):
        assert keys(real_event) == keys(sim_event)
        assert len(real_event["choices"]) == len(sim_event["choices"])
        for real_choice, sim_choice in zip(real_event["choices"], sim_event["choices"]):
            assert keys(real_choice) == keys(sim_choice)
            assert real_choice["finish_reason"] == sim_choice["finish_reason"]
            if "delta" in real_choice:
                assert keys(real_choice["delta"]) == keys(sim_choice["delta"])
    assert keys(real[-2]["usage"]) == keys(sim[-2]["usage"])
    assert real[-2]["usage"]["completion_tokens"] == sim[-2]["usage"]["completion_tokens"] == 4


def test_errors_have_the_same_status_type_and_param(pair):
    cases = [
        (
            "/v1/chat/completions",
            {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
        ),
        (
            "/v1/completions",
            {"model": pair["model"], "prompt": "x", "max_tokens": pair["max_model_len"] + 1},
        ),
        (
            "/v1/completions",
            {"model": pair["model"], "prompt": "hello " * (pair["max_model_len"] + 10)},
        ),
        ("/v1/chat/completions", {"model": pair["model"]}),
    ]
    for path, body in cases:
        answers = both(pair, "POST", path, json=body)
        assert answers["real"].status_code == answers["sim"].status_code, body
        real, sim = answers["real"].json()["error"], answers["sim"].json()["error"]
        assert keys(real) == keys(sim)
        assert (real["type"], real["param"], real["code"]) == (
            sim["type"],
            sim["param"],
            sim["code"],
        ), body


def metric_shapes(url: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(requests.get(url + "/metrics", timeout=10).text):
        if family.name.startswith("vllm:"):
            labels: dict[str, set] = {}
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)
            out[family.name] = (family.type, labels)
    return out


def test_metric_families_types_and_labels_match(pair):
    real, sim = metric_shapes(pair["real"]), metric_shapes(pair["sim"])
    assert sorted(set(real) - set(sim)) == []
    assert sorted(set(sim) - set(real)) == []
    for name, (kind, samples) in real.items():
        assert sim[name][0] == kind, name
        if name == "vllm:cache_config_info":
            # Its labels are CacheConfig's fields, which change from release to release.
            assert {"block_size", "num_gpu_blocks", "enable_prefix_caching", "engine"} <= set(
                sim[name][1][name]
            ) & set(samples[name])
            continue
        assert sim[name][1] == samples, name


def test_prefix_cache_counters_move_alike(pair):
    def counters(url: str) -> tuple[float, float, int]:
        families = {
            f.name: f
            for f in text_string_to_metric_families(requests.get(url + "/metrics", timeout=10).text)
        }
        queries = families["vllm:prefix_cache_queries"].samples[0].value
        hits = families["vllm:prefix_cache_hits"].samples[0].value
        block = int(families["vllm:cache_config_info"].samples[0].labels["block_size"])
        return queries, hits, block

    prompt = uuid.uuid4().hex + " " + PROMPT
    for side in ("real", "sim"):
        url = pair[side]
        queries, hits, block = counters(url)
        body = {"model": pair["model"], "prompt": prompt, "max_tokens": 1}
        first = requests.post(url + "/v1/completions", json=body, timeout=60).json()["usage"][
            "prompt_tokens"
        ]
        second = requests.post(url + "/v1/completions", json=body, timeout=60).json()["usage"][
            "prompt_tokens"
        ]
        queries_after, hits_after, _ = counters(url)
        assert queries_after - queries == first + second, side  # queries count tokens
        new_hits = hits_after - hits
        assert new_hits > 0 and new_hits % block == 0, side  # hits are whole blocks
        assert new_hits == (second - 1) // block * block, (
            side
        )  # all full blocks but the last token's


def test_an_adapter_in_flight_shows_alike_in_models_and_lora_requests_info(pair):
    def newest(url: str) -> dict:
        families = {
            f.name: f
            for f in text_string_to_metric_families(requests.get(url + "/metrics", timeout=10).text)
        }
        return max(
            families["vllm:lora_requests_info"].samples, key=lambda sample: sample.value
        ).labels

    cards = {
        side: [c for c in r.json()["data"] if c["parent"]]
        for side, r in both(pair, "GET", "/v1/models").items()
    }
    assert [c["id"] for c in cards["real"]] == [c["id"] for c in cards["sim"]] == ["parity-lora"]
    assert keys(cards["real"][0]) == keys(cards["sim"][0])
    assert cards["real"][0]["parent"] == cards["sim"][0]["parent"] == pair["model"]
    assert cards["real"][0]["max_model_len"] is cards["sim"][0]["max_model_len"] is None
    for side in ("real", "sim"):
        consumed = []

        def consume(url: str = pair[side], consumed: list[str] = consumed) -> None:
            with requests.post(
                url + "/v1/completions",
                stream=True,
                timeout=60,
                json={
                    "model": "parity-lora",
                    "prompt": "the tenant",
                    "max_tokens": 1000,
                    "ignore_eos": True,
                    "stream": True,
                },
            ) as response:
                consumed.extend(
                    json.loads(line[6:])["model"]
                    for line in response.iter_lines()
                    if line.startswith(b"data: {")
                )

        reader = threading.Thread(target=consume)
        reader.start()
        try:
            # Both refresh the series from every engine step while the request runs.
            wait_until(
                lambda side=side: (
                    newest(pair[side])
                    == {
                        "max_lora": "1",
                        "running_lora_adapters": "parity-lora",
                        "waiting_lora_adapters": "parity-lora",
                    }
                ),
                timeout=10,
                message=f"{side}: parity-lora in lora_requests_info",
            )
        finally:
            reader.join(60)
        assert set(consumed) == {"parity-lora"}
        wait_until(
            lambda side=side: newest(pair[side])["running_lora_adapters"] == "",
            timeout=10,
            message=f"{side}: the empty series is the newest once the request is done",
        )
