"""What the model will see, as text, cut into fixed-size blocks with chained hashes.

prefix_cache needs, for every request, a list of hashes such that two
requests share the first *k* hashes exactly when the first *k* blocks of
what the model reads are the same. The proxy has no tokenizer, so the unit
is characters: about 16 tokens' worth (`blockChars`, default 64) per block,
as the inference-extension does.

Canonical text (never logged, never forwarded: the original bytes are):

- chat ``messages``: the request's ``tools`` first (a chat template renders
  them into the system turn), then one record per message: a record
  separator, the role, a unit separator, the content (a string, or each
  part of a list: text as is, other parts as a short digest of their
  JSON), then each tool call (function name and arguments) and the tool
  call id of a tool reply. Every message starts with its own delimiter and
  nothing in it depends on the messages after it, so a shared system
  prompt is a common prefix of every conversation that starts with it.
- completions ``prompt``: a string as is; a token-id list as four characters
  per token (so a 64-character block is 16 tokens, like a vLLM block); a
  batch (list of prompts) joined with a separator.
- responses ``input``: ``instructions`` as a system record, ``tools``, then
  the input string as a user record, or each input item (messages,
  function calls and their outputs) as a record.

Hashes: ``h_0 = H(scope)`` with the scope = pool, model (a LoRA adapter is
requested by its own model name) and ``cache_salt``; ``h_i = H(h_{i-1} ||
block_i)`` with BLAKE2b (12 bytes, hex). A trailing partial block is not
hashed (vLLM caches full blocks only).

Which blocks become Redis keys: `levels()` keeps a fixed, length-independent
subset of block positions: the first ``max_levels // 4`` blocks densely, then
every 2nd, 4th, 8th... block, up to ``max_levels`` positions. Because each
hash covers everything before it, a match at a kept position proves the
whole prefix up to it matches; long conversations stay distinguishable
after a shared system prompt of any length, at a bounded number of keys.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["canonical_text", "block_hashes", "level_positions", "Levels", "levels"]

RS, US, GS = "\x1e", "\x1f", "\x1d"  # record / unit / group separators
_TOKEN_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_"
_DIGEST_BYTES = 12


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _digest(value: Any) -> str:
    """A short stand-in for a large non-text part (an image URL may be megabytes of base64)."""
    raw = value if isinstance(value, str) else _json(value)
    return hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _token(token_id: Any) -> str:
    """Four characters per token id (24 bits; larger ids wrap, which only merges buckets)."""
    if not isinstance(token_id, int) or isinstance(token_id, bool):
        return "????"
    value = token_id & 0xFFFFFF
    return "".join(_TOKEN_ALPHABET[(value >> shift) & 63] for shift in (18, 12, 6, 0))


def _content(content: Any) -> Iterator[str]:
    if content is None:
        return
    if isinstance(content, str):
        yield content
        return
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                yield part
            elif isinstance(part, dict):
                kind = part.get("type", "")
                text = part.get("text")
                if isinstance(text, str) and kind in ("text", "input_text", "output_text", ""):
                    yield text
                elif kind == "refusal" and isinstance(part.get("refusal"), str):
                    yield part["refusal"]
                else:
                    yield f"{GS}{kind}:{_digest({k: v for k, v in part.items() if k != 'type'})}{GS}"
            else:
                yield f"{GS}{_digest(part)}{GS}"
        return
    yield _json(content)


def _tool_calls(calls: Any) -> Iterator[str]:
    if not isinstance(calls, list):
        return
    for call in calls:
        if not isinstance(call, dict):
            continue
        inner = call.get("function")
        function = inner if isinstance(inner, dict) else call
        name = function.get("name", "")
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):
            arguments = _json(arguments)
        yield f"{GS}call{US}{name}{US}{arguments}"


def _message(message: Any) -> Iterator[str]:
    if not isinstance(message, dict):
        yield f"{RS}?{US}{_json(message)}"
        return
    kind = message.get("type")
    if kind in ("function_call", "custom_tool_call"):
        arguments = message.get("arguments", message.get("input", ""))
        if not isinstance(arguments, str):
            arguments = _json(arguments)
        yield f"{RS}assistant{US}{GS}call{US}{message.get('name', '')}{US}{arguments}"
        return
    if kind in ("function_call_output", "custom_tool_call_output"):
        output = message.get("output", "")
        yield f"{RS}tool{US}"
        yield from (
            _content(output) if not isinstance(output, (dict, int, float)) else [_json(output)]
        )
        return
    if kind is not None and kind != "message":
        # reasoning items, web search calls...: present but opaque
        yield f"{RS}{kind}{US}{_digest(message)}"
        return
    yield f"{RS}{message.get('role', '')}{US}"
    name = message.get("name")
    if isinstance(name, str) and name:
        yield f"{GS}name{US}{name}{US}"
    yield from _content(message.get("content"))
    yield from _tool_calls(message.get("tool_calls"))
    call_id = message.get("tool_call_id")
    if isinstance(call_id, str) and call_id:
        yield f"{GS}id{US}{call_id}"


def _prompt(prompt: Any) -> Iterator[str]:
    if isinstance(prompt, str):
        yield prompt
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        yield "".join(_token(t) for t in prompt)
    elif isinstance(prompt, list):
        for index, item in enumerate(prompt):
            if index:
                yield RS
            yield from _prompt(item)


def _parts(body: dict[str, Any]) -> Iterator[str]:
    tools = body.get("tools")
    if "messages" in body:
        if tools:
            yield f"{RS}tools{US}{_json(tools)}"
        messages = body["messages"]
        if isinstance(messages, list):
            for message in messages:
                yield from _message(message)
    elif "prompt" in body:
        yield from _prompt(body["prompt"])
    elif "input" in body:
        instructions = body.get("instructions")
        if isinstance(instructions, str) and instructions:
            yield f"{RS}system{US}{instructions}"
        if tools:
            yield f"{RS}tools{US}{_json(tools)}"
        data = body["input"]
        if isinstance(data, str):
            yield f"{RS}user{US}{data}"
        elif isinstance(data, list):
            for item in data:
                yield from _message(item)


def canonical_text(body: dict[str, Any] | None, limit: int | None = None) -> str:
    """The prompt of *body* as one string (only its first *limit* characters when given)."""
    if not isinstance(body, dict):
        return ""
    out: list[str] = []
    size = 0
    for part in _parts(body):
        out.append(part)
        size += len(part)
        if limit is not None and size >= limit:
            break
    text = "".join(out)
    return text if limit is None else text[:limit]


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=_DIGEST_BYTES).digest()


def scope_hash(pool: str, model: str, cache_salt: str) -> bytes:
    # surrogatepass: a JSON body may carry lone surrogates; hashing must not fail on them.
    return _hash(
        _json(["llmlbd-prefix-v1", pool, model, cache_salt]).encode("utf-8", "surrogatepass")
    )


def _chain(text: str, block_chars: int, seed: bytes, count: int | None) -> list[bytes]:
    """Chained digests of the first *count* full blocks of *text*."""
    full = len(text) // block_chars
    if count is not None:
        full = min(full, count)
    size = full * block_chars
    data = text[:size].encode("utf-8", "surrogatepass")
    out = []
    previous = seed
    blake2b = hashlib.blake2b
    if len(data) == size:  # one byte per character (ASCII): blocks are slices of the bytes
        for start in range(0, size, block_chars):
            previous = blake2b(
                previous + data[start : start + block_chars], digest_size=_DIGEST_BYTES
            ).digest()
            out.append(previous)
        return out
    for index in range(full):
        block = text[index * block_chars : (index + 1) * block_chars]
        previous = _hash(previous + block.encode("utf-8", "surrogatepass"))
        out.append(previous)
    return out


def block_hashes(text: str, block_chars: int, seed: bytes, count: int | None = None) -> list[str]:
    """Chained hashes (hex) of the first *count* full blocks of *text*."""
    return [digest.hex() for digest in _chain(text, block_chars, seed, count)]


def level_positions(max_levels: int) -> list[int]:
    """The 0-based block positions kept as keys: dense, then every 2nd, 4th, ... block."""
    dense = max(1, max_levels // 4)
    positions: list[int] = []
    position, step = 0, 1
    while len(positions) < max_levels:
        positions.append(position)
        if len(positions) % dense == 0:
            step *= 2
        position += step
    return positions


_POSITIONS: dict[int, list[int]] = {}


@dataclass(frozen=True)
class Levels:
    """The keyed blocks of one request: hash of each level and blocks it covers."""

    hashes: list[str]
    blocks: list[int]  # blocks[i] = number of blocks the i-th hash covers
    total_blocks: int  # full blocks in the (possibly truncated) prompt

    def __len__(self) -> int:
        return len(self.hashes)


def levels(
    body: dict[str, Any] | None,
    *,
    pool: str,
    model: str,
    cache_salt: str,
    block_chars: int,
    max_levels: int,
) -> Levels:
    """Hash the prompt of *body* and keep the level positions (see module docstring)."""
    positions = _POSITIONS.get(max_levels)
    if positions is None:
        positions = _POSITIONS.setdefault(max_levels, level_positions(max_levels))
    last = positions[-1]
    text = canonical_text(body, limit=(last + 1) * block_chars)
    digests = _chain(text, block_chars, scope_hash(pool, model, cache_salt), last + 1)
    kept_hashes, kept_blocks = [], []
    for position in positions:  # only the kept digests are turned into hex
        if position >= len(digests):
            break
        kept_hashes.append(digests[position].hex())
        kept_blocks.append(position + 1)
    return Levels(kept_hashes, kept_blocks, len(digests))
