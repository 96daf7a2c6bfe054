"""The official openai client works against the simulator, streaming and not."""

from __future__ import annotations

import openai


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=20)


def test_chat_non_streaming(sim):
    with client(sim) as api:
        reply = api.chat.completions.create(
            model="sim-llama", max_tokens=8, messages=[{"role": "user", "content": "Hello"}]
        )
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens == 8


def test_chat_streaming_with_usage(sim):
    with client(sim) as api:
        stream = api.chat.completions.create(
            model="sql-lora",
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "SELECT something"}],
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage.completion_tokens == 5
    assert all(c.model == "sql-lora" for c in chunks)


def test_completions_and_models(sim):
    with client(sim) as api:
        completion = api.completions.create(model="sim-llama", prompt="Once", max_tokens=4)
        streamed = list(
            api.completions.create(model="sim-llama", prompt="Once", max_tokens=4, stream=True)
        )
        models = [m.id for m in api.models.list()]
    assert completion.usage.completion_tokens == 4
    assert "".join(c.choices[0].text for c in streamed) == completion.choices[0].text
    assert models[0] == "sim-llama" and "sql-lora" in models


def test_errors_become_the_right_openai_exceptions(sim):
    with client(sim) as api:
        try:
            api.chat.completions.create(
                model="missing", messages=[{"role": "user", "content": "x"}]
            )
        except openai.NotFoundError as exc:
            assert exc.status_code == 404
        else:
            raise AssertionError("expected a 404")
