"""Response bodies in vLLM's shapes: JSON completions and SSE chunks.

Streams are the hot path (one chunk per token per request), so each stream
builds the JSON around the token once, as a prefix and a suffix, and a chunk
is prefix + the token's pre-encoded JSON string + suffix.
"""

from __future__ import annotations

import json
import time

from llmlbd.sim.answers import TOKEN_JSON, answer_text, token_index

__all__ = ["StreamWriter", "completion_body", "usage_of", "visible_tokens", "DONE"]

DONE = b"data: [DONE]\n\n"


SYSTEM_FINGERPRINT = "vllm-0.33.0-llmlbd-sim"


def usage_of(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None) -> dict:
    usage = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }
    if cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return usage


def visible_tokens(output_tokens: int, finish_reason: str) -> int:
    """Tokens that carry text: a "stop" answer ends with end-of-sequence, which has none."""
    return output_tokens - 1 if finish_reason == "stop" else output_tokens


def completion_body(
    kind: str,
    response_id: str,
    model: str,
    seed: int,
    output_tokens: int,
    finish_reason: str,
    usage: dict,
) -> bytes:
    # Field for field what a real vLLM 0.32 server returned (scripts/real_vllm).
    text = answer_text(seed, visible_tokens(output_tokens, finish_reason))
    usage = {**usage, "completion_tokens_details": None}
    created = int(time.time())
    if kind == "chat":
        body = {
            "id": response_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": None,
                        "annotations": None,
                        "audio": None,
                        "function_call": None,
                        "reasoning": None,
                    },
                    "logprobs": None,
                    "finish_reason": finish_reason,
                    "stop_reason": None,
                    "token_ids": None,
                    "routed_experts": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "usage": usage,
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "prompt_text": None,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    else:
        body = {
            "id": response_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                    "stop_reason": None,
                    "token_ids": None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "routed_experts": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "usage": usage,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    return json.dumps(body, separators=(",", ":")).encode()


class StreamWriter:
    """The SSE chunks of one streamed response."""

    def __init__(self, kind: str, response_id: str, model: str, seed: int) -> None:
        self.kind = kind
        self.seed = seed
        created = int(time.time())
        head = (
            f'{{"id":{json.dumps(response_id)},"object":'
            f'"{"chat.completion.chunk" if kind == "chat" else "text_completion"}",'
            f'"created":{created},"model":{json.dumps(model)},"choices":'
        )
        self._head = "data: " + head
        if kind == "chat":
            self._prefix = self._head + '[{"index":0,"delta":{"content":'
            self._suffix = '},"logprobs":null,"finish_reason":null,"token_ids":null}],"kv_transfer_params":null}\n\n'
        else:
            self._prefix = self._head + '[{"index":0,"text":'
            self._suffix = (
                ',"logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,'
                '"token_ids":null}]}\n\n'
            )

    def first(self) -> str:
        """The chunk that opens a chat stream (the assistant role, no text yet)."""
        if self.kind != "chat":
            return ""
        return (
            self._head + '[{"index":0,"delta":{"role":"assistant","content":""},'
            '"logprobs":null,"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}\n\n'
        )

    def tokens(self, start: int, stop: int) -> str:
        prefix, suffix, seed = self._prefix, self._suffix, self.seed
        return "".join(
            prefix + TOKEN_JSON[token_index(seed, i)] + suffix for i in range(start, stop)
        )

    def finish(self, finish_reason: str, last_index: int) -> str:
        """The last chunk: the last token (none for "stop": end-of-sequence) plus the finish reason."""
        text = '""' if finish_reason == "stop" else TOKEN_JSON[token_index(self.seed, last_index)]
        if self.kind == "chat":
            return (
                self._head + f'[{{"index":0,"delta":{{"content":{text}}},"logprobs":null,'
                f'"finish_reason":{json.dumps(finish_reason)},"stop_reason":null,"token_ids":null,'
                '"weight_versions":null}],"kv_transfer_params":null}\n\n'
            )
        return (
            self._head + f'[{{"index":0,"text":{text},"logprobs":null,'
            f'"finish_reason":{json.dumps(finish_reason)},"stop_reason":null,"prompt_token_ids":null,'
            '"token_ids":null}]}\n\n'
        )

    def usage(self, usage: dict) -> str:
        # Streams leave out unset fields: no prompt_tokens_details unless it has a value.
        usage = {key: value for key, value in usage.items() if value is not None}
        return self._head + '[],"usage":' + json.dumps(usage, separators=(",", ":")) + "}\n\n"
