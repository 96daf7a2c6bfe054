"""The simulator publishes KV events in vLLM's wire format with vLLM's block hashes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from llmlbd.kvblocks import hashing, wire
from tests.kvblocks.capture import batches as captured_batches
from tests.kvblocks.events import Reader, event_fleet

MODEL = "sim-llama"


def chat(url: str, text: str, **extra: object) -> requests.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 2}
    return requests.post(url + "/v1/chat/completions", json={**body, **extra}, timeout=30)


def tokens(url: str, text: str) -> list[int]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    return requests.post(url + "/tokenize", json=body, timeout=10).json()["tokens"]


@pytest.fixture(scope="module")
def server():
    # 48 blocks of 16 tokens: a few long prompts evict each other.
    fleet, ports = event_fleet(1, time_scale=0.05, num_gpu_blocks=48, block_size=16)
    with fleet:
        reader = Reader(ports[0])
        yield fleet.url, reader
        reader.close()


def captured_keys(kind: str) -> list[str]:
    for row in captured_batches():
        for event in row["batch"]["events"]:
            if event["type"] == kind and "session_id" not in event:
                return list(event)
    raise AssertionError(kind)


def test_frames_and_maps_have_the_real_shape(server) -> None:
    """Three frames, topic then 8-byte seq then msgpack; each event map has vLLM 0.32's keys in
    its order; the hashes follow from the prompt's token ids."""
    url, reader = server
    reader.batches(idle_s=0.2)
    text = "the tenant shall keep the premises in good repair " * 12
    assert chat(url, text).status_code == 200
    topic, seq, payload = reader.next()
    assert topic == b"kv" and len(seq) == 8
    raw = wire.msgpack.unpackb(payload)
    assert isinstance(raw, list) and len(raw) == 3 and isinstance(raw[0], float) and raw[2] == 0
    stored = raw[1][-1]
    assert list(stored) == captured_keys("BlockStored")
    assert stored["parent_block_hash"] is None
    assert stored["block_hashes"] == hashing.block_hashes(tokens(url, text), 16)
    assert len(stored["token_ids"]) == 16 * len(stored["block_hashes"])


def test_eviction_removes_then_stores_in_one_batch(server) -> None:
    """A full cache publishes one BlockRemoved per evicted block before the new BlockStored, and
    replaying every event gives exactly the blocks the server still holds."""
    url, reader = server
    requests.post(url + "/reset_prefix_cache", timeout=5)
    reader.batches(idle_s=0.2)
    for index in range(6):  # each prompt is about 20 blocks; the cache holds 48
        assert chat(url, f"conversation {index} " + "water clause repair " * 60).status_code == 200
    seen = reader.batches()
    held: set[int] = set()
    removed_before_stored = False
    for _, batch in seen:
        kinds = [type(e).__name__ for e in batch.events]
        if "Removed" in kinds and kinds[-1] == "Stored":
            removed_before_stored = True
        for event in batch.events:
            if isinstance(event, wire.Cleared):
                held.clear()
            elif isinstance(event, wire.Stored):
                held.update(event.block_hashes)
            else:
                assert event.block_hashes[0] in held, "a block is removed only after it was stored"
                held.difference_update(event.block_hashes)
    assert removed_before_stored
    removed = next(e for _, b in seen for e in b.events if isinstance(e, wire.Removed))
    assert list(wire.msgpack.unpackb(wire.encode_batch(0.0, [wire.block_removed(1)]))[1][0]) == (
        captured_keys("BlockRemoved")
    )
    assert removed.medium == "GPU"
    state = requests.get(url + "/debug/state", timeout=5).json()
    assert len(held) == state["cached_block_hashes"]


def test_reset_is_published_with_the_next_step(server) -> None:
    """As in vLLM, AllBlocksCleared goes out with the next engine step's batch."""
    url, reader = server
    assert chat(url, "alpha beta gamma " * 40).status_code == 200
    reader.batches(idle_s=0.3)
    requests.post(url + "/reset_prefix_cache", timeout=5)
    assert reader.batches(idle_s=0.3) == []
    assert chat(url, "delta epsilon " * 40).status_code == 200
    (_, batch), *_ = reader.batches()
    assert isinstance(batch.events[0], wire.Cleared)
    assert isinstance(batch.events[-1], wire.Stored)


def test_replay_resends_buffered_batches_then_the_end_marker(server) -> None:
    url, reader = server
    assert chat(url, "replay me please " * 30).status_code == 200
    live = reader.batches()
    last = live[-1][0]
    replayed = reader.replay(last - 1 if last else 0)
    assert [seq for seq, _ in replayed][-1] == last
    assert wire.decode_batch(replayed[-1][1]) == live[-1][1]


def test_salt_and_lora_enter_the_hash(server) -> None:
    url, reader = server
    text = "salted prefix " * 30
    reader.batches(idle_s=0.2)
    assert chat(url, text, cache_salt="tenant-a").status_code == 200
    stored = [e for _, b in reader.batches() for e in b.events if isinstance(e, wire.Stored)]
    assert stored[0].block_hashes == hashing.block_hashes(
        tokens(url, text), 16, cache_salt="tenant-a"
    )


def test_event_sources_and_bad_config() -> None:
    fleet, ports = event_fleet(1, time_scale=0.1)
    with fleet:
        sources = requests.get(fleet.url + "/kv_event_sources", timeout=5).json()
        assert sources["0"]["endpoint"] == f"tcp://*:{ports[0].pub}"
        assert sources["0"]["topic"] == "kv"
    bad = subprocess.run(
        [sys.executable, "-m", "llmlbd.sim", "--kv-events-config", '{"endpoint": 1, "bogus": 2}'],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "unknown keys ['bogus']" in bad.stderr


def test_the_models_own_tokenizer_gives_the_hashes_the_proxy_computes(tmp_path) -> None:
    """With --tokenizer, the sim tokenizes as vLLM would with those files, and the proxy's
    local tokenizer (lb_config.tokenizer) computes the very hashes the sim publishes."""
    from llmlbd.kvblocks.local import LocalTokenizer
    from llmlbd.kvblocks.prompt_blocks import PromptBlocks
    from tests.kvblocks.conftest import build_tokenizer_dir

    directory = build_tokenizer_dir(tmp_path / "tok")
    fleet, ports = event_fleet(1, time_scale=0.05, tokenizer=str(directory))
    with fleet:
        reader = Reader(ports[0])
        try:
            messages = [{"role": "user", "content": "the tenant shall keep the cache " * 30}]
            body = {"model": MODEL, "messages": messages, "max_tokens": 2}
            assert requests.post(fleet.url + "/v1/chat/completions", json=body, timeout=30).ok
            local = LocalTokenizer(str(directory))
            assert tokens(fleet.url, messages[0]["content"]) == local.encode(
                local.render(body)[0], False
            )
            published = [
                e for _, b in reader.batches() for e in b.events if isinstance(e, wire.Stored)
            ]
            ours = PromptBlocks(16, local=local).hashes(body, MODEL, None, None)
            assert published[0].block_hashes == ours.hashes
        finally:
            reader.close()
