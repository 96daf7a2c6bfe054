"""A request's vLLM block hashes: token ids (local tokenizer, backend /tokenize, or the prompt's
own ids), then the hash chain, with a per-conversation cache so a long chat is neither
re-tokenized nor re-hashed from its start on every turn.

The cache keys a rendered prompt's text *prefix* ending right after a special token
(``<|eot_id|>``, ``<|end_header_id|>``...): tokenizers split special tokens out before
anything else, so tokenizing the text before such a point and the text after it
separately gives exactly the ids of the whole. Each request looks for the longest cached
prefix of its text, tokenizes and hashes only the rest, and stores its own longest such
prefix and the end of its first message (a shared system prompt). The next turn of a chat
starts with the previous turn's text, and a new chat often with a known system prompt.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmlbd.kvblocks import hashing
from llmlbd.kvblocks.local import LocalTokenizer
from llmlbd.kvblocks.remote import RemoteTokenizer, TokenizeError, tokenize_body

__all__ = ["PromptBlocks", "BlockHashes", "TokenizeError"]


@dataclass(frozen=True)
class BlockHashes:
    hashes: list[int]  # published (64-bit) hashes of the prompt's full blocks
    tokens: int  # prompt tokens
    source: str  # "ids" (prompt was token ids), "local", "local+cache", "remote", "remote+cache"
    seconds: float  # spent tokenizing and hashing


@dataclass(frozen=True)
class _Entry:
    """A tokenized prefix, kept small: its length, the 32-byte digests of its full blocks
    (concatenated) and the ids of its trailing partial block."""

    count: int
    digests: bytes
    tail: tuple[int, ...]

    def digest_list(self) -> list[bytes]:
        d = self.digests
        return [d[i : i + 32] for i in range(0, len(d), 32)]


class PromptBlocks:
    def __init__(
        self,
        block_size: int,
        *,
        seed: str | None = None,
        local: LocalTokenizer | None = None,
        remote: RemoteTokenizer | None = None,
        max_blocks: int = 4000,
        cache_entries: int = 1024,
    ) -> None:
        self.block_size = block_size
        self.seed = seed
        self.local = local
        self.remote = remote
        self.max_tokens = max_blocks * block_size
        self.cache_entries = cache_entries
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()

    def hashes(
        self,
        body: dict[str, Any],
        model: str,
        lora_name: str | None,
        cache_salt: str | None,
        tokenize_url: str | None = None,
    ) -> BlockHashes:
        """The block hashes of *body*'s prompt; TokenizeError when no tokenizer can read it."""
        started = time.perf_counter()
        scope = hashlib.blake2b(
            json.dumps([self.block_size, self.seed, lora_name, cache_salt, model]).encode(),
            digest_size=16,
        )
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], list):
            prompt = prompt[0]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            entry, source = self._extend(None, prompt, lora_name, cache_salt), "ids"
        elif self.local is not None:
            entry, source = self._local(body, scope, lora_name, cache_salt)
        elif self.remote is not None and tokenize_url is not None:
            entry, source = self._remote(body, model, scope, tokenize_url, lora_name, cache_salt)
        else:
            raise TokenizeError("no tokenizer configured and no backend to ask")
        return BlockHashes(
            [hashing.published(d) for d in entry.digest_list()],
            entry.count,
            source,
            time.perf_counter() - started,
        )

    # -- tokenizing ---------------------------------------------------------------------

    def _local(
        self, body: dict[str, Any], scope: Any, lora: str | None, salt: str | None
    ) -> tuple[_Entry, str]:
        assert self.local is not None
        try:
            text, special = self.local.render(body)
        except Exception as exc:  # a template error is the request's problem, not ours
            raise TokenizeError(f"cannot render the prompt: {exc}") from None
        if special:  # a BOS the tokenizer adds is not in the text: no prefix reuse
            return self._extend(None, self.local.encode(text, True), lora, salt), "local"
        cuts = self._cuts(text)
        keys = []
        hasher = scope.copy()
        previous = 0
        for cut in cuts:
            hasher.update(text[previous:cut].encode("utf-8", "surrogatepass"))
            keys.append(hasher.digest())
            previous = cut
        start, base = 0, None
        for cut, key in zip(reversed(cuts), reversed(keys)):
            base = self._cache.get(key)
            if base is not None:
                self._cache.move_to_end(key)
                start = cut
                break
        source = "local+cache" if base is not None else "local"
        # Remember two prefixes: the end of the first message (a system prompt many
        # conversations share) and the last cut (this conversation's next turn).
        for index in (self._first_message_end(text, cuts), len(cuts) - 1):
            if index is not None and index >= 0 and cuts[index] > start:
                piece = self.local.encode(text[start : cuts[index]], False)
                base = self._extend(base, piece, lora, salt)
                self._remember(keys[index], base)
                start = cuts[index]
        return self._extend(base, self.local.encode(text[start:], False), lora, salt), source

    def _first_message_end(self, text: str, cuts: list[int]) -> int | None:
        """Index in *cuts* of the cut right after the first end-of-turn token, if any."""
        eos = self.local.eos_token if self.local is not None else None
        at = text.find(eos) if eos else -1
        if at < 0:
            return None
        end = at + len(eos or "")
        return cuts.index(end) if end in cuts else None

    def _cuts(self, text: str) -> list[int]:
        """Positions right after a special token, in order."""
        assert self.local is not None
        cuts = set()
        for token in self.local.special:
            at = text.find(token)
            while at >= 0:
                cuts.add(at + len(token))
                at = text.find(token, at + len(token))
        return sorted(cuts)

    def _remote(
        self,
        body: dict[str, Any],
        model: str,
        scope: Any,
        url: str,
        lora: str | None,
        salt: str | None,
    ) -> tuple[_Entry, str]:
        assert self.remote is not None
        request = tokenize_body(body, model)
        if request is None:
            raise TokenizeError("no chat messages or string prompt to tokenize")
        key = scope.copy()
        key.update(json.dumps(request, sort_keys=True, default=str).encode())
        digest = key.digest()
        cached = self._cache.get(digest)
        if cached is not None:
            self._cache.move_to_end(digest)
            return cached, "remote+cache"
        entry = self._extend(None, self.remote.token_ids(url, request), lora, salt)
        self._remember(digest, entry)
        return entry, "remote"

    # -- hashing ------------------------------------------------------------------------

    def _extend(
        self, base: _Entry | None, tokens: Sequence[int], lora: str | None, salt: str | None
    ) -> _Entry:
        """*base* followed by *tokens*, hashing only the blocks *base* has not hashed yet
        (up to max_tokens: past it the chain stops, the count goes on)."""
        count = (base.count if base else 0) + len(tokens)
        digests = base.digests if base else b""
        pending = [*(base.tail if base else ()), *tokens]
        hashed = len(digests) // 32 * self.block_size
        room = max(0, self.max_tokens - hashed)
        full = min(len(pending), room) // self.block_size * self.block_size
        if full:
            new = hashing.chain(
                pending[:full],
                self.block_size,
                lora_name=lora,
                cache_salt=salt,
                seed=self.seed,
                parent=digests[-32:] if digests else None,
                first_block=not digests,
            )
            digests += b"".join(new)
        tail = tuple(pending[full:]) if full < room else ()
        return _Entry(count, digests, tail)

    def _remember(self, key: bytes, entry: _Entry) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_entries:
            self._cache.popitem(last=False)
