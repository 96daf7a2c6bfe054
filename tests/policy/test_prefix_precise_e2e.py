"""Precise vs approximate index end to end: real llmlbd, its collector, simulated vLLM servers
with a small KV cache publishing KV events. After the server that first served a prompt has
evicted it (and another one has cached it), the precise index follows the cache; the
approximate index still sends the prompt where it no longer is."""

from __future__ import annotations

import pytest
import redis
import requests

from llmlbd.kvblocks import hashing
from llmlbd.state.keys import PoolKeys
from llmlbd.state.kv_index import read_holdings
from tests.harness import LLMLBD, wait_until
from tests.kvblocks.events import backends_config, event_fleet

pytestmark = pytest.mark.e2e

MODEL = "sim-llama"
PROMPT = [{"role": "user", "content": "Summarise the lease: " + "the tenant shall repair " * 60}]


def chat(url: str, messages: list[dict]) -> requests.Response:
    body = {"model": MODEL, "messages": messages, "max_tokens": 2}
    response = requests.post(url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response


def cached_blocks(url: str, messages: list[dict]) -> int:
    body = {"model": MODEL, "messages": messages}
    return requests.post(url + "/debug/cache_match", json=body, timeout=5).json()["matched_blocks"]


def run_scenario(redis_url: str, index: str) -> tuple[str, str, str, int]:
    """(first backend, the backend that holds the prompt at the end, where llmlbd sent the
    prompt again, cached tokens that request found)."""
    fleet, ports = event_fleet(
        2, time_scale=0.05, num_gpu_blocks=48, block_size=16, enable_prompt_tokens_details=True
    )
    pool = f"e2e-{index}"
    with fleet:
        config = {
            "redis": {"url": redis_url},
            "server": {"pool": pool},
            "lb_policy": "prefix_cache",
            "lb_config": {"index": index, "kvBlockSize": 16},
            "collector": {
                "enabled": True,
                "interval_ms": 100,
                "health_interval_ms": 100,
                "metrics_port": 0,
            },
            "backends": backends_config(fleet, ports),
        }
        urls = dict(zip(fleet.names, fleet.urls))
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        keys = PoolKeys(pool)
        with LLMLBD(config, workers=1, name=f"llmlbd-{index}") as proxy:
            # Both event streams are live (the collector runs as llmlbd's child).
            wait_until(
                lambda: all(
                    int(client.hget(keys.kv_state(n), "live_until") or 0) > 0 for n in urls
                ),
                timeout=20,
            )
            first = chat(proxy.url, PROMPT).headers["x-llmlbd-backend"]
            other = next(n for n in urls if n != first)
            # Traffic that bypasses this llmlbd evicts the prompt from its first home and
            # caches it on the other server.
            filler = 0
            while cached_blocks(urls[first], PROMPT):
                chat(urls[first], [{"role": "user", "content": f"other tenant {filler} " * 80}])
                filler += 1
                assert filler < 20
            chat(urls[other], PROMPT)
            assert cached_blocks(urls[other], PROMPT) > 0
            tokens = requests.post(
                urls[other] + "/tokenize", json={"model": MODEL, "messages": PROMPT}, timeout=5
            ).json()["tokens"]
            wanted = set(hashing.block_hashes(tokens, 16))
            wait_until(
                lambda: (
                    wanted <= read_holdings(client, keys, other)["gpu"]
                    and not wanted & read_holdings(client, keys, first)["gpu"]
                ),
                timeout=20,
            )
            again = chat(proxy.url, PROMPT)
            cached = again.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
            client.close()
            return first, other, again.headers["x-llmlbd-backend"], cached


def test_precise_follows_the_cache_where_approximate_does_not(redis_url) -> None:
    first, other, chosen, cached = run_scenario(redis_url, "precise")
    assert chosen == other, "the precise index knows the prompt moved"
    assert cached > 0
    first, other, chosen, cached = run_scenario(redis_url, "approximate")
    assert chosen == first, "the approximate index still believes the first server has it"
    assert cached == 0
