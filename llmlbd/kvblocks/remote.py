"""Token ids from a backend's own ``POST /tokenize`` (vLLM's request and response shape).

Used when no tokenizer directory is configured: the backend applies its own
chat template and tokenizer, so the ids are exactly the ones it will hash, at
the price of one HTTP round trip per request (cached for exact repeats).
"""

from __future__ import annotations

import json
from typing import Any

import requests

__all__ = ["RemoteTokenizer", "TokenizeError", "tokenize_body"]

# Request fields that change what /tokenize renders (vLLM's TokenizeChatRequest and
# TokenizeCompletionRequest).
_CHAT_FIELDS = (
    "messages",
    "tools",
    "add_generation_prompt",
    "continue_final_message",
    "chat_template",
    "chat_template_kwargs",
    "add_special_tokens",
)


class TokenizeError(Exception):
    """The backend could not tokenize the prompt (down, slow, or it refused it)."""


def tokenize_body(body: dict[str, Any], model: str) -> dict[str, Any] | None:
    """The /tokenize request for a chat or completions body, or None when it has no prompt
    /tokenize understands (responses API, batches)."""
    if isinstance(body.get("messages"), list):
        out = {key: body[key] for key in _CHAT_FIELDS if key in body}
        return {"model": model, **out}
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if isinstance(prompt, str):
        return {
            "model": model,
            "prompt": prompt,
            "add_special_tokens": body.get("add_special_tokens", True),
        }
    return None


class RemoteTokenizer:
    """POST /tokenize to one of the pool's backends, with a short timeout."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.session = requests.Session()

    def token_ids(self, base_url: str, request: dict[str, Any]) -> list[int]:
        try:
            response = self.session.post(
                base_url.rstrip("/") + "/tokenize",
                data=json.dumps(request),
                headers={"content-type": "application/json"},
                timeout=self.timeout_s,
            )
        except requests.RequestException as exc:
            raise TokenizeError(f"{base_url}/tokenize: {exc}") from None
        if response.status_code != 200:
            raise TokenizeError(f"{base_url}/tokenize answered {response.status_code}")
        try:
            tokens = response.json()["tokens"]
        except (ValueError, KeyError, TypeError):
            raise TokenizeError(f"{base_url}/tokenize: no token list in the answer") from None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise TokenizeError(f"{base_url}/tokenize: tokens is not a list of integers")
        return tokens
