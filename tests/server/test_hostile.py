"""Hostile request bodies: parse and prefix canonicalisation give a 4xx or carry on, never crash.

In-process and fast: hypothesis drives parse_request and the prefix
canonicaliser (levels) with arbitrary bytes, arbitrary JSON, and chat,
completion and responses bodies whose fields have the wrong types anywhere.
"""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmlbd.errors import BadRequest, LLMLBError
from llmlbd.policy.prompt import canonical_text, levels
from llmlbd.server.jsonlimits import MAX_DEPTH, deeper_than
from llmlbd.server.parse import parse_request

PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings", "/v1/x"]
CONTENT_TYPES = ["application/json", "text/plain", "", "application/x-www-form-urlencoded"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(),  # includes lone surrogates, which JSON can escape
    st.sampled_from(["user", "text", "function_call", "function_call_output", "message"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "role",
                    "content",
                    "type",
                    "text",
                    "name",
                    "arguments",
                    "output",
                    "tool_calls",
                    "function",
                    "input",
                    "tool_call_id",
                    "refusal",
                    "prompt",
                    "x",
                ]
            )
            | st.text(max_size=5),
            inner,
            max_size=5,
        )
    ),
    max_leaves=25,
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.text(max_size=8), values),
        "messages": values,
        "prompt": values,
        "input": values,
        "instructions": values,
        "tools": values,
        "stream": values,
        "priority": values,
        "cache_salt": values,
    },
)


def check(path: str, body: bytes, content_type: str = "application/json") -> None:
    """parse_request either builds a request (then canonicalisation works) or raises a 4xx."""
    headers = {"content-type": content_type}
    try:
        request = parse_request("rid", "POST", path, headers, body)
    except LLMLBError as error:
        assert 400 <= error.status < 500, error
        json.dumps(error.body())  # renders
        return
    canonical_text(request.body)
    levels(
        request.body,
        pool="p",
        model=request.model,
        cache_salt=request.cache_salt,
        block_chars=16,
        max_levels=8,
    )


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PATHS), bodies)
def test_wrong_types_anywhere(path: str, body: dict) -> None:
    check(path, json.dumps(body).encode())


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PATHS), st.binary(max_size=200), st.sampled_from(CONTENT_TYPES))
def test_arbitrary_bytes(path: str, body: bytes, content_type: str) -> None:
    check(path, body, content_type)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(PATHS), values)
def test_arbitrary_json(path: str, value: object) -> None:
    check(path, json.dumps(value).encode())


def bad_request(body: bytes) -> str:
    with pytest.raises(BadRequest) as caught:
        parse_request("rid", "POST", "/v1/chat/completions", {}, body)
    return caught.value.message


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5000, 200_000])
def test_deep_nesting_at_top_level_is_400(depth: int) -> None:
    assert "nested deeper" in bad_request(b"[" * depth + b"]" * depth)


@pytest.mark.parametrize("depth", [MAX_DEPTH, 5000])
def test_deep_nesting_inside_messages_is_400(depth: int) -> None:
    content = "[" * depth + "]" * depth
    body = f'{{"model": "m", "messages": [{{"role": "user", "content": {content}}}]}}'
    assert "nested deeper" in bad_request(body.encode())


def test_unclosed_deep_nesting_is_400() -> None:
    assert bad_request(b'{"model": "m", "messages": ' + b"[" * 100_000)


def test_depth_limit_is_exact_and_ignores_strings() -> None:
    at_limit = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    body = json.dumps({"model": "m", "messages": [], "x": json.loads(at_limit), "s": "[" * 500})
    assert not deeper_than(body.encode(), MAX_DEPTH)
    parse_request("rid", "POST", "/v1/chat/completions", {}, body.encode())
    mixed = json.dumps([{"a": [{"b": [1]}]}]).encode()  # depth 5, braces and brackets mixed
    assert deeper_than(mixed, 4) and not deeper_than(mixed, 5)


def test_huge_numbers_are_400() -> None:
    digits = sys.get_int_max_str_digits() + 1
    body = b'{"model": "m", "messages": [], "max_tokens": ' + b"9" * digits + b"}"
    assert "digits" in bad_request(body)
    body = b'{"model": "m", "messages": [{"role": "user", "content": ' + b"1" * digits + b"}]}"
    assert "digits" in bad_request(body)


def test_huge_float_and_strings_are_routed() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 2_000_000}]}
    raw = json.dumps(body).encode()[:-1] + b', "temperature": 1' + b"0" * 5000 + b".5e99999}"
    request = parse_request("rid", "POST", "/v1/chat/completions", {}, raw)
    assert request.model == "m"


def test_lone_surrogate_model_is_400_and_in_content_is_routed() -> None:
    assert "surrogate" in bad_request(b'{"model": "m\\ud800", "messages": []}')
    body = b'{"model": "m", "cache_salt": "\\udfff", "messages": [{"role": "user", "content": "\\ud800"}]}'
    check("/v1/chat/completions", body)


def test_invalid_utf8_is_400() -> None:
    assert "UTF-8" in bad_request(b'{"model": "\xff\xfe"}')
