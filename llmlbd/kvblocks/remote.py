"""Token ids from a backend's own ``POST /tokenize`` (vLLM's request and response shape).

Used when no tokenizer directory is configured: the backend applies its own
chat template and tokenizer, so the ids are exactly the ones it will hash, at
the price of one HTTP round trip per request (cached for exact repeats).
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

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
    """POST /tokenize to one of the pool's backends, with a short timeout.

    The standard library's client, with a small pool of keep-alive connections per
    backend (one request at a time on each: greenlets of one worker never share a
    connection). In a proxy worker gevent has patched the socket, so a slow backend
    blocks only its own request, and no third-party HTTP client loads into the worker.
    """

    def __init__(self, timeout_s: float, idle_per_backend: int = 8) -> None:
        self.timeout_s = timeout_s
        self.idle_per_backend = idle_per_backend
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}

    def _post(self, base_url: str, payload: bytes) -> tuple[int, bytes]:
        parts = urlsplit(base_url)
        path = parts.path.rstrip("/") + "/tokenize"
        idle = self._idle.setdefault(parts.netloc, [])
        headers = {"content-type": "application/json"}
        for attempt in (1, 2):  # a pooled connection the backend closed while idle: once more
            pooled = bool(idle) and attempt == 1
            conn = idle.pop() if pooled else self._connect(parts.scheme, parts.netloc)
            try:
                conn.request("POST", path, body=payload, headers=headers)
                response = conn.getresponse()
                status, raw = response.status, response.read()
            except (http.client.HTTPException, OSError) as exc:
                conn.close()
                if not pooled or isinstance(exc, TimeoutError):
                    raise TokenizeError(f"{base_url}/tokenize: {exc}") from None
                continue
            if len(idle) < self.idle_per_backend and not response.will_close:
                idle.append(conn)
            else:
                conn.close()
            return status, raw
        raise AssertionError("unreachable: the second attempt returns or raises")

    def close(self) -> None:
        """Close the idle connections (a worker keeps its tokenizer until it exits)."""
        for idle in self._idle.values():
            while idle:
                idle.pop().close()

    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        if scheme == "https":
            return http.client.HTTPSConnection(netloc, timeout=self.timeout_s)
        return http.client.HTTPConnection(netloc, timeout=self.timeout_s)

    def token_ids(self, base_url: str, request: dict[str, Any]) -> list[int]:
        status, raw = self._post(base_url, json.dumps(request).encode())
        if status != 200:
            raise TokenizeError(f"{base_url}/tokenize answered {status}")
        try:
            tokens = json.loads(raw)["tokens"]
        except (ValueError, KeyError, TypeError):
            raise TokenizeError(f"{base_url}/tokenize: no token list in the answer") from None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise TokenizeError(f"{base_url}/tokenize: tokens is not a list of integers")
        return tokens
