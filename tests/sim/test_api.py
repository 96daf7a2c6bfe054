"""vLLM's HTTP surface: shapes of completions, streams, models, tokenize, errors."""

from __future__ import annotations

import json
from pathlib import Path

from tests.sim.conftest import chat

DATA = Path(__file__).parent / "data"


def sse_events(response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith(b"data: "):
            payload = line[len(b"data: ") :]
            events.append(payload if payload == b"[DONE]" else json.loads(payload))
    return events


def test_chat_completion_has_vllm_shape_and_usage(sim, http):
    body = http.post(
        sim + "/v1/chat/completions", json=chat("Say hi", max_tokens=5), timeout=10
    ).json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "sim-llama"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["completion_tokens"] == 5  # the natural answer is longer than 5 tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_stream_matches_vllm_chunk_sequence(sim, http):
    reference = [
        json.loads(line[6:])
        for line in (DATA / "vllm_chat_stream_sample.txt").read_text().splitlines()
        if line.startswith("data: {")
    ]
    with http.post(
        sim + "/v1/chat/completions",
        stream=True,
        timeout=10,
        json=chat(
            "Stream please", max_tokens=6, stream=True, stream_options={"include_usage": True}
        ),
    ) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == b"[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [len(c["choices"]) for c in chunks].count(0) == 1
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    # As vLLM: the last token rides in the chunk with finish_reason ("length": it has text).
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-2]["choices"][0]["delta"]["content"]
    content = [c for c in chunks[1:-2]]
    assert len(content) == 5
    # Same keys as vLLM's chunks, chunk by chunk kind.
    assert set(chunks[0]) == set(reference[0])
    assert set(content[0]) == set(reference[1])
    assert set(content[0]["choices"][0]) == set(reference[1]["choices"][0])
    assert set(chunks[-2]["choices"][0]) == set(reference[-2]["choices"][0])
    assert set(chunks[-1]) == set(reference[-1])


def test_completions_default_to_16_tokens_and_stream_without_usage(sim, http):
    body = http.post(
        sim + "/v1/completions", json={"prompt": "Once upon a time"}, timeout=10
    ).json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["usage"]["completion_tokens"] <= 16
    with http.post(
        sim + "/v1/completions",
        stream=True,
        timeout=10,
        json={"prompt": "Once upon a time", "max_tokens": 3, "stream": True},
    ) as response:
        events = sse_events(response)
    assert events[-1] == b"[DONE]"
    assert all("usage" not in e for e in events[:-1])
    assert "".join(e["choices"][0]["text"] for e in events[:-1]).strip()


def test_a_stopped_answer_ends_with_an_empty_end_of_sequence_chunk(sim, http):
    body = {"prompt": "a short answer", "max_tokens": 10_000}
    plain = http.post(sim + "/v1/completions", json=body, timeout=30).json()
    assert plain["choices"][0]["finish_reason"] == "stop"
    with http.post(
        sim + "/v1/completions", json={**body, "stream": True}, stream=True, timeout=30
    ) as response:
        events = sse_events(response)[:-1]
    assert events[-1]["choices"][0] == {
        **events[-1]["choices"][0],
        "text": "",
        "finish_reason": "stop",
    }
    tokens = plain["usage"]["completion_tokens"]
    assert len(events) == tokens  # end-of-sequence counts as a token, as in vLLM
    assert "".join(e["choices"][0]["text"] for e in events) == plain["choices"][0]["text"]


def test_ignore_eos_gives_exactly_max_tokens(sim, http):
    body = http.post(
        sim + "/v1/completions",
        timeout=10,
        json={"prompt": "count", "max_tokens": 300, "ignore_eos": True},
    ).json()
    assert body["usage"]["completion_tokens"] == 300
    assert body["choices"][0]["finish_reason"] == "length"


def test_models_lists_base_and_adapters_like_vllm(sim, http):
    reference = json.loads((DATA / "vllm_v1_models_sample.json").read_text())
    body = http.get(sim + "/v1/models", timeout=5).json()
    assert body["object"] == "list"
    cards = {card["id"]: card for card in body["data"]}
    assert set(cards) == {"sim-llama", "sql-lora", "food-review"}
    assert cards["sim-llama"]["parent"] is None and cards["sim-llama"]["max_model_len"] == 131072
    assert (
        cards["sql-lora"]["parent"] == "sim-llama"
        and cards["sql-lora"]["root"] == "/adapters/sql-lora"
    )
    assert set(cards["sql-lora"]) == set(reference["data"][1])
    assert set(cards["sql-lora"]["permission"][0]) == set(reference["data"][1]["permission"][0])


def test_health_version_tokenize_detokenize(sim, http):
    health = http.get(sim + "/health", timeout=5)
    assert health.status_code == 200 and health.content == b""
    assert http.get(sim + "/version", timeout=5).json()["version"]
    tokens = http.post(
        sim + "/tokenize", json={"model": "sim-llama", "prompt": "Hello, world!"}, timeout=5
    ).json()
    assert tokens["count"] == len(tokens["tokens"]) == 4
    assert tokens["max_model_len"] == 131072
    text = http.post(
        sim + "/detokenize", json={"model": "sim-llama", "tokens": tokens["tokens"]}, timeout=5
    ).json()
    assert text == {"prompt": "Hello, world!"}
    chat_tokens = http.post(sim + "/tokenize", json=chat("Hello, world!"), timeout=5).json()
    assert chat_tokens["count"] > tokens["count"]  # the chat template adds its markers


def test_render_gives_the_ids_the_engine_prefills(sim, http):
    """vLLM's /v1/chat/completions/render and /v1/completions/render (vllm-router's
    cache_aware asks for them before /tokenize): the engine's own prompt ids."""
    body = chat("Render me, please.") | {"max_tokens": 3, "temperature": 0.5}
    rendered = http.post(sim + "/v1/chat/completions/render", json=body, timeout=5)
    assert rendered.status_code == 200, rendered.text
    one = rendered.json()
    tokens = http.post(sim + "/tokenize", json=chat("Render me, please."), timeout=5).json()
    assert one["token_ids"] == tokens["tokens"]
    assert one["request_id"].startswith("chatcmpl-") and one["model"] == "sim-llama"
    assert one["sampling_params"] == {"max_tokens": 3, "temperature": 0.5}
    usage = http.post(sim + "/v1/chat/completions", json=body, timeout=10).json()["usage"]
    assert usage["prompt_tokens"] == len(one["token_ids"])

    batch = http.post(
        sim + "/v1/completions/render", json={"prompt": "Hello, world!"}, timeout=5
    ).json()
    assert isinstance(batch, list) and len(batch) == 1
    assert (
        batch[0]["token_ids"]
        == http.post(sim + "/tokenize", json={"prompt": "Hello, world!"}, timeout=5).json()[
            "tokens"
        ]
    )
    assert batch[0]["request_id"].startswith("cmpl-")

    unknown = http.post(
        sim + "/v1/chat/completions/render", json=chat("x") | {"model": "nope"}, timeout=5
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == 404
    empty = http.post(sim + "/v1/chat/completions/render", json={"messages": []}, timeout=5)
    assert empty.status_code == 400
    assert http.get(sim + "/v1/chat/completions/render", timeout=5).status_code == 405


def test_usage_matches_tokenize(sim, http):
    prompt = "The quick brown fox jumps over the lazy dog. " * 3
    count = http.post(sim + "/tokenize", json={"prompt": prompt}, timeout=5).json()["count"]
    body = http.post(
        sim + "/v1/completions", json={"prompt": prompt, "max_tokens": 1}, timeout=10
    ).json()
    assert body["usage"]["prompt_tokens"] == count


def test_embeddings_are_deterministic(sim, http):
    first = http.post(sim + "/v1/embeddings", json={"input": ["a", "b"]}, timeout=5).json()
    again = http.post(sim + "/v1/embeddings", json={"input": "a"}, timeout=5).json()
    assert len(first["data"]) == 2
    assert first["data"][0]["embedding"] == again["data"][0]["embedding"]
    assert first["usage"]["prompt_tokens"] == 2


def test_errors_use_vllms_body_and_status(sim, http):
    unknown = http.post(
        sim + "/v1/chat/completions", json={**chat("hi"), "model": "gpt-9"}, timeout=5
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "NotFoundError"
    assert unknown.json()["error"]["param"] == "model"
    assert "`gpt-9` does not exist" in unknown.json()["error"]["message"]
    too_long = http.post(
        sim + "/v1/completions", json={"prompt": "hi", "max_tokens": 200_000}, timeout=5
    )
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "max_tokens"
    no_messages = http.post(sim + "/v1/chat/completions", json={"model": "sim-llama"}, timeout=5)
    assert no_messages.status_code == 400
    bad_json = http.post(sim + "/v1/chat/completions", data=b"{nope", timeout=5)
    assert bad_json.status_code == 400
    assert http.get(sim + "/nowhere", timeout=5).status_code == 404
    assert http.get(sim + "/v1/chat/completions", timeout=5).status_code == 405


def test_request_id_header_names_the_response(sim, http):
    body = http.post(
        sim + "/v1/chat/completions",
        json=chat("hi", max_tokens=1),
        headers={"X-Request-Id": "abc123"},
        timeout=5,
    ).json()
    assert body["id"] == "chatcmpl-abc123"


def test_debug_state_exposes_the_engine(sim, http):
    state = http.get(sim + "/debug/state", timeout=5).json()
    for key in (
        "num_requests_waiting",
        "num_requests_running",
        "kv_blocks_used",
        "kv_blocks_total",
        "cached_block_hashes",
        "prefix_cache_queries",
        "prefix_cache_hits",
        "loras_loaded",
    ):
        assert key in state
    assert state["kv_blocks_total"] == 28042
