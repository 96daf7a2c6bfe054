"""Opt-in: precise prefix routing against a real vLLM (CPU build) publishing KV events.

Start the real server with events on (scripts/real_vllm/setup.sh builds the tiny model):

    VLLM_EXTRA_ARGS='--kv-events-config {"enable_kv_cache_events":true,"publisher":"zmq","endpoint":"tcp://*:5557","replay_endpoint":"tcp://*:5558","topic":"kv"}' \\
        bash scripts/real_vllm/setup.sh serve

then

    LLMLBD_REAL_VLLM_URL=http://127.0.0.1:8199 LLMLBD_REAL_VLLM_KV_EVENTS=tcp://127.0.0.1:5557 \\
    LLMLBD_REAL_VLLM_KV_REPLAY=tcp://127.0.0.1:5558 LLMLBD_REAL_VLLM_TOKENIZER=/work/venvs/tiny-llama \\
        python -m pytest tests/kvblocks/test_real_vllm_kv_events.py

What it checks, on the real server: the block hashes llmlbd computes from the server's
own /tokenize ids, and from its local tokenizer and chat template, are the ones the server
publishes; the collector's subscriber mirrors the server's cache into Redis and recovers
the index through the replay socket.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import redis
import requests

from collector.kv_events import KVSubscriber
from collector.metrics import CollectorMetrics
from llmlbd.config.kv_events import KVEventsSource
from llmlbd.kvblocks import hashing, wire
from llmlbd.kvblocks.local import LocalTokenizer
from llmlbd.kvblocks.prompt_blocks import PromptBlocks
from llmlbd.state.keys import PoolKeys
from llmlbd.state.kv_index import KVIndexWriter, read_holdings
from tests.harness import wait_until
from tests.kvblocks.events import EventPorts, Reader

URL = os.environ.get("LLMLBD_REAL_VLLM_URL", "").rstrip("/")
EVENTS = os.environ.get("LLMLBD_REAL_VLLM_KV_EVENTS", "")
REPLAY = os.environ.get("LLMLBD_REAL_VLLM_KV_REPLAY", "")
TOKENIZER = os.environ.get("LLMLBD_REAL_VLLM_TOKENIZER", "")

# The opt-in real-vLLM tier, not a missing feature: it needs a running vLLM server, which
# CI does not start (its CPU build takes minutes); KV-event ingestion is tested without vLLM against the real capture in tests/data and a scripted publisher (tests/collector/test_kv_events.py).
pytestmark = [
    pytest.mark.realvllm,
    pytest.mark.skipif(
        not (URL and EVENTS),
        reason="opt-in: set LLMLBD_REAL_VLLM_URL and LLMLBD_REAL_VLLM_KV_EVENTS to a real vLLM "
        "started with --kv-events-config (see this module's docstring)",
    ),
]


def model() -> str:
    return requests.get(URL + "/v1/models", timeout=10).json()["data"][0]["id"]


def chat_body(text: str) -> dict:
    return {"model": model(), "messages": [{"role": "user", "content": text}], "max_tokens": 1}


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


@pytest.fixture
def reader():
    r = Reader(EventPorts(port_of(EVENTS), port_of(REPLAY) if REPLAY else 0))
    yield r
    r.close()


def stored_after(reader: Reader, body: dict) -> list[wire.Stored]:
    reader.batches(idle_s=0.3)
    assert requests.post(URL + "/v1/chat/completions", json=body, timeout=120).ok
    return [
        e for _, b in reader.batches(idle_s=2.0) for e in b.events if isinstance(e, wire.Stored)
    ]


def test_hashes_from_tokenize_ids_are_the_published_ones(reader) -> None:
    body = chat_body(f"real {time.time()} " + "the tenant shall keep the premises in repair " * 40)
    stored = stored_after(reader, body)
    assert stored, "the server published no BlockStored"
    block_size = stored[0].block_size
    tokens = requests.post(
        URL + "/tokenize", json={k: body[k] for k in ("model", "messages")}, timeout=30
    ).json()["tokens"]
    assert (
        stored[0].block_hashes
        == hashing.block_hashes(tokens, block_size)[: len(stored[0].block_hashes)]
    )


# Part of the opt-in real-vLLM tier, not a missing feature: local tokenization is built and
# tested without vLLM (tests/kvblocks/test_prompt_blocks.py); this case also needs the
# served model's own tokenizer files, which are not in the repository and come with the
# model scripts/real_vllm/setup.sh downloads.
@pytest.mark.skipif(not TOKENIZER, reason="set LLMLBD_REAL_VLLM_TOKENIZER to the model directory")
def test_local_tokenizer_and_template_match_the_server(reader) -> None:
    body = chat_body(f"local {time.time()} " + "cache prefix block queue engine " * 60)
    local = LocalTokenizer(TOKENIZER)
    tokens = requests.post(
        URL + "/tokenize", json={k: body[k] for k in ("model", "messages")}, timeout=30
    ).json()["tokens"]
    assert local.encode(local.render(body)[0], False) == tokens
    stored = stored_after(reader, body)
    ours = PromptBlocks(stored[0].block_size, local=local).hashes(body, body["model"], None, None)
    assert ours.hashes[: len(stored[0].block_hashes)] == stored[0].block_hashes


def test_collector_mirrors_the_server(redis_url) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = PoolKeys("realvllm")
    writer = KVIndexWriter(client, keys, "real", "test", 1_000_000, 3000)
    subscriber = KVSubscriber(
        "real",
        KVEventsSource(EVENTS, REPLAY or None, "kv"),
        writer,
        CollectorMetrics(),
        lambda name: True,
        60.0,
    )
    stop = threading.Event()
    thread = threading.Thread(target=subscriber.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(
            lambda: int(client.hget(keys.kv_state("real"), "live_until") or 0) > 0, timeout=15
        )
        time.sleep(0.5)
        body = chat_body(f"mirror {time.time()} " + "water clause repair " * 50)
        assert requests.post(URL + "/v1/chat/completions", json=body, timeout=120).ok
        tokens = requests.post(
            URL + "/tokenize", json={k: body[k] for k in ("model", "messages")}, timeout=30
        ).json()["tokens"]
        size = int(wait_until(lambda: client.hget(keys.kv_state("real"), "block_size"), timeout=15))
        wanted = set(hashing.block_hashes(tokens, size))
        wait_until(lambda: wanted <= read_holdings(client, keys, "real")["gpu"], timeout=15)
    finally:
        stop.set()
        thread.join(5)
        client.close()
