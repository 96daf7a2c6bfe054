"""Simulated servers shared by the sim tests; each is a real ``python -m llmlbd.sim`` process."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.simfleet import SimFleet


@pytest.fixture(scope="session")
def sim():
    """One server at real (H100-profile) speed, with two LoRA adapters and one slot."""
    with SimFleet(1, lora="sql-lora,food-review", max_loras=1, lora_load_s=0.05) as fleet:
        yield fleet.url


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """/metrics as {(sample name, sorted label pairs): value}."""
    text = requests.get(url + "/metrics", timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(url: str, name: str, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    found = False
    for (sample_name, sample_labels), value in scrape(url).items():
        if sample_name == name and set(labels.items()) <= set(sample_labels):
            total += value
            found = True
    if not found:
        raise KeyError(f"{name}{labels} not on the metrics page")
    return total


def chat(prompt: str, **extra) -> dict:
    return {"model": "sim-llama", "messages": [{"role": "user", "content": prompt}], **extra}
