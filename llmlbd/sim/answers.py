"""What the simulated model says: how long its answer is and which tokens it streams.

An answer's natural length (where the model would emit end-of-sequence) is
drawn from a seed taken from the prompt, uniformly in [mean/2, 3*mean/2], so
the same prompt always gets the same answer. ``max_tokens`` cuts it short
(finish reason ``length``); ``ignore_eos`` (a vLLM extension) makes the
answer exactly ``max_tokens`` long, which is what benchmarks want.
"""

from __future__ import annotations

import json
import random
import zlib

__all__ = ["plan_answer", "token_index", "token_text", "answer_text", "TOKEN_JSON"]

_WORDS = (
    "the of and to in is that it for on with as was be by this are or at from have an they "
    "which one you were all we can her has there been if more when will would who so no model "
    "token cache prefix batch request server latency queue block engine stream answer simple "
    "fleet route load balance prompt reply data time first last next value"
).split()

# One token is one word with its leading space. Its JSON string form is built
# once, so streaming a token costs a string concatenation, not a json.dumps.
_TOKENS = tuple(" " + word for word in _WORDS)
TOKEN_JSON = tuple(json.dumps(token) for token in _TOKENS)


def plan_answer(
    prompt_seed: str, mean_tokens: int, max_tokens: int | None, ignore_eos: bool, room: int
) -> tuple[int, str, int]:
    """Return (output tokens, finish reason, seed of the token stream).

    ``room`` is what max_model_len leaves after the prompt.
    """
    seed = zlib.crc32(prompt_seed.encode())
    rng = random.Random(seed)
    natural = rng.randint(max(1, mean_tokens // 2), max(1, mean_tokens * 3 // 2))
    limit = room if max_tokens is None else min(max_tokens, room)
    if ignore_eos or natural >= limit:
        return max(limit, 0), "length", seed
    return natural, "stop", seed


def token_index(seed: int, position: int) -> int:
    # A cheap, deterministic walk through the word list.
    return (seed + position * 2_654_435_761) % len(_TOKENS)


def token_text(seed: int, position: int) -> str:
    return _TOKENS[token_index(seed, position)]


def answer_text(seed: int, count: int) -> str:
    return "".join(_TOKENS[token_index(seed, i)] for i in range(count))
