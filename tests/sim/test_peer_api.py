"""The SGLang-style routes peer routers call: /get_load in both shapes, server and model info,
/flush_cache, /health_generate, and the tokenizer directory sglang-router loads."""

from __future__ import annotations

import json
import threading

import pytest
import requests

from tests.sim.conftest import chat
from tests.simfleet import SimFleet


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two slow servers (so requests stay in flight): object and array /get_load."""
    tokenizer = tmp_path_factory.mktemp("tok")
    with SimFleet(
        2,
        servers=[{}, {"get_load_format": "array", "model_path": str(tokenizer)}],
        profile="l4-llama3-8b",
    ) as fleet:
        yield fleet.urls[0], fleet.urls[1], tokenizer


def _hold_requests(url: str, count: int) -> list[threading.Thread]:
    """*count* long streaming requests, started and left running."""

    def one() -> None:
        body = chat("count slowly " * 20, max_tokens=40, stream=True)
        with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=60) as r:
            for _ in r.iter_content(None):
                pass

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def _wait_load(url: str, read, want: int) -> None:
    for _ in range(100):
        if read(requests.get(url + "/get_load", timeout=5).json()) == want:
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"/get_load never showed {want}")


def test_get_load_counts_in_flight_requests_in_both_shapes(pair):
    object_url, array_url, _ = pair
    assert requests.get(object_url + "/get_load", timeout=5).json() == {"load": 0}
    (idle,) = requests.get(array_url + "/get_load", timeout=5).json()
    assert idle["dp_rank"] == 0 and idle["num_reqs"] == 0 and idle["num_waiting_reqs"] == 0
    threads = _hold_requests(object_url, 2) + _hold_requests(array_url, 3)
    try:
        _wait_load(object_url, lambda body: body["load"], 2)
        _wait_load(array_url, lambda body: body[0]["num_reqs"] + body[0]["num_waiting_reqs"], 3)
        busy = requests.get(array_url + "/get_load", timeout=5).json()[0]
        assert busy["num_tokens"] > 0  # KV blocks held by the running requests
    finally:
        for thread in threads:
            thread.join()
    assert requests.get(object_url + "/get_load", timeout=5).json() == {"load": 0}


def test_server_and_model_info_report_the_model_path(pair):
    object_url, array_url, tokenizer = pair
    for path in ("/get_server_info", "/server_info"):
        info = requests.get(array_url + path, timeout=5).json()
        assert info["model_path"] == str(tokenizer)
        assert info["served_model_name"] == "sim-llama"
        assert info["max_total_num_tokens"] == 2200 * 16  # the L4 profile's KV cache
    for path in ("/get_model_info", "/model_info"):
        info = requests.get(array_url + path, timeout=5).json()
        assert info["model_path"] == str(tokenizer) and info["is_generation"] is True
    # Without --model-path the model name stands in for a path.
    assert requests.get(object_url + "/get_model_info", timeout=5).json()["model_path"] == (
        "sim-llama"
    )


def test_model_path_holds_a_loadable_word_level_tokenizer(pair):
    _, _, tokenizer = pair
    spec = json.loads((tokenizer / "tokenizer.json").read_text())
    assert spec["model"]["type"] == "WordLevel"
    assert spec["model"]["vocab"]["[UNK]"] == 0 and "cache" in spec["model"]["vocab"]
    assert spec["pre_tokenizer"] == {"type": "Whitespace"}
    assert sorted(spec["model"]["vocab"].values()) == list(range(len(spec["model"]["vocab"])))


def test_flush_cache_empties_the_prefix_cache(pair):
    url = pair[0]
    body = chat("a prompt long enough to fill a few KV blocks " * 8, max_tokens=2)
    requests.post(url + "/v1/chat/completions", json=body, timeout=30).raise_for_status()
    match = requests.post(url + "/debug/cache_match", json=body, timeout=5).json()
    assert match["matched_blocks"] > 0
    reply = requests.post(url + "/flush_cache", timeout=5)
    assert reply.status_code == 200 and reply.json()["success"] is True
    assert (
        requests.post(url + "/debug/cache_match", json=body, timeout=5).json()["matched_blocks"]
        == 0
    )


def test_health_generate_follows_health(pair):
    url = pair[0]
    assert requests.get(url + "/health_generate", timeout=5).status_code == 200
    requests.post(url + "/debug/faults", json={"health": "down"}, timeout=5).raise_for_status()
    try:
        assert requests.get(url + "/health_generate", timeout=5).status_code == 503
    finally:
        requests.post(url + "/debug/faults", json={"health": "up"}, timeout=5)


def test_unknown_get_load_format_is_refused():
    from click.testing import CliRunner

    from llmlbd.sim.cli import sim_command

    result = CliRunner().invoke(sim_command, ["--get-load-format", "dict"])
    assert result.exit_code == 2 and "dict" in result.output
