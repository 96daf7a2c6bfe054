"""The /metrics page has vLLM V1's families, types and label sets (checked against a vLLM 0.33 page)."""

from __future__ import annotations

from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.sim.conftest import chat
from tests.simfleet import SimFleet

SAMPLE = Path(__file__).parent / "data" / "vllm_v1_metrics_sample.txt"

REQUIRED = [
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:lora_requests_info",
    "vllm:cache_config_info",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:time_to_first_token_seconds",
    "vllm:e2e_request_latency_seconds",
]


def shapes(text: str) -> dict[str, tuple[str, dict[str, frozenset]]]:
    """{family: (type, {sample name: label names})} for the vllm: families of a page."""
    out = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("vllm:"):
            continue
        labels: dict[str, set] = {}
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
        out[family.name] = (family.type, {name: frozenset(names) for name, names in labels.items()})
    return out


def test_every_vllm_family_of_the_reference_page_is_there_with_its_type_and_labels(sim):
    requests.post(
        sim + "/v1/chat/completions", json=chat("warm up the histograms", max_tokens=3), timeout=10
    ).raise_for_status()
    requests.post(
        sim + "/v1/chat/completions",
        json={**chat("and the adapter", max_tokens=2), "model": "sql-lora"},
        timeout=10,
    ).raise_for_status()
    reference = shapes(SAMPLE.read_text())
    page = requests.get(sim + "/metrics", timeout=5)
    assert page.headers["Content-Type"].startswith("text/plain")
    ours = shapes(page.text)
    missing = sorted(set(reference) - set(ours))
    assert not missing, f"families missing: {missing}"
    for name, (kind, samples) in reference.items():
        assert ours[name][0] == kind, f"{name}: type {ours[name][0]}, vLLM has {kind}"
        assert ours[name][1] == samples, (
            f"{name}: samples/labels {ours[name][1]}, vLLM has {samples}"
        )
    for name in REQUIRED:
        assert name in ours


def test_engine_series_carry_the_served_model_and_engine_zero(sim):
    text = requests.get(sim + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name.startswith("vllm:") and "model_name" in sample.labels:
                assert sample.labels["model_name"] == "sim-llama"
                if family.name not in (
                    "vllm:admission_rejections",
                    "vllm:admission_rejections_created",
                ):
                    assert sample.labels["engine"] == "0"


def test_cache_config_info_reports_block_size_and_blocks(sim):
    text = requests.get(sim + "/metrics", timeout=5).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    (sample,) = families["vllm:cache_config_info"].samples
    assert sample.value == 1.0
    assert sample.labels["block_size"] == "16"
    assert sample.labels["num_gpu_blocks"] == "28042"  # the h100-llama3-8b profile
    assert sample.labels["enable_prefix_caching"] == "True"


def test_legacy_flag_adds_the_pre_0_12_names_beside_the_current_ones():
    with SimFleet(1, legacy_metrics=True, time_scale=0.1) as fleet:
        requests.post(
            fleet.url + "/v1/completions",
            json={"prompt": "legacy " * 40, "max_tokens": 2},
            timeout=10,
        ).raise_for_status()
        families = {
            f.name: f
            for f in text_string_to_metric_families(
                requests.get(fleet.url + "/metrics", timeout=5).text
            )
        }
    assert families["vllm:gpu_cache_usage_perc"].type == "gauge"
    assert families["vllm:kv_cache_usage_perc"].type == "gauge"
    queries = families["vllm:gpu_prefix_cache_queries"]
    assert queries.type == "counter"
    (total,) = queries.samples
    assert total.name == "vllm:gpu_prefix_cache_queries_total"
    assert total.value > 0
    assert families["vllm:gpu_prefix_cache_hits"].type == "counter"


def test_without_adapters_there_is_no_lora_family():
    with SimFleet(1, time_scale=0.1) as fleet:
        names = {
            f.name
            for f in text_string_to_metric_families(
                requests.get(fleet.url + "/metrics", timeout=5).text
            )
        }
    assert "vllm:lora_requests_info" not in names
    assert "vllm:num_requests_running" in names
