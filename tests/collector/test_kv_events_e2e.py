"""The real collector, subscribed to simulated vLLM servers, mirrors their KV caches in Redis."""

from __future__ import annotations

import threading

import redis
import requests

from collector.daemon import Collector
from collector.metrics import CollectorMetrics
from llmlbd.config import config_from_dict
from llmlbd.kvblocks import hashing
from llmlbd.state.keys import PoolKeys
from llmlbd.state.kv_index import read_holdings
from tests.collector.conftest import FAST
from tests.harness import wait_until
from tests.kvblocks.events import backends_config, event_fleet


def chat(url: str, text: str) -> None:
    body = {"model": "sim-llama", "messages": [{"role": "user", "content": text}], "max_tokens": 2}
    assert requests.post(url + "/v1/chat/completions", json=body, timeout=30).status_code == 200


def cached_count(url: str) -> int:
    return requests.get(url + "/debug/state", timeout=5).json()["cached_block_hashes"]


def test_index_follows_stores_and_evictions_of_every_backend(redis_url) -> None:
    fleet, ports = event_fleet(2, time_scale=0.05, num_gpu_blocks=40, block_size=16)
    with fleet:
        config = config_from_dict(
            {
                "redis": {"url": redis_url},
                "server": {"pool": "kve2e"},
                "collector": FAST,
                "backends": backends_config(fleet, ports),
            }
        )
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        keys = PoolKeys("kve2e")
        # Traffic before the collector starts: the replay socket brings it in.
        chat(fleet.urls[0], "early bird " * 50)
        collector = Collector(config, client, "c1", CollectorMetrics())
        thread = threading.Thread(target=collector.run, daemon=True)
        thread.start()
        try:
            wait_until(
                lambda: (
                    len(read_holdings(client, keys, "sim-0")["gpu"]) == cached_count(fleet.urls[0])
                ),
                timeout=15,
            )
            for index in range(8):  # about 13 blocks each, 40 blocks per server: evictions
                chat(fleet.urls[index % 2], f"topic {index} " + "the tenant shall repair " * 40)
            for name, url in zip(fleet.names, fleet.urls):
                wait_until(
                    lambda n=name, u=url: (
                        len(read_holdings(client, keys, n)["gpu"]) == cached_count(u)
                    ),
                    timeout=15,
                )
            assert requests.get(fleet.urls[0] + "/debug/state").json()["kv_evictions"] > 0
            # The blocks the index names are the prompt's own vLLM hashes.
            text = "the tenant shall repair " * 40
            body = {
                "model": "sim-llama",
                "messages": [{"role": "user", "content": "topic 7 " + text}],
            }
            tokens = requests.post(fleet.urls[1] + "/tokenize", json=body, timeout=5).json()[
                "tokens"
            ]
            assert (
                set(hashing.block_hashes(tokens, 16)) <= read_holdings(client, keys, "sim-1")["gpu"]
            )
            # A backend that leaves the pool takes its index with it.
            collector._remove_worker("sim-1")
            assert read_holdings(client, keys, "sim-1")["gpu"] == set()
        finally:
            collector.request_stop()
            thread.join(10)
            client.close()
