"""Prompt canonicalisation and block hashing for prefix_cache (pure functions)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llmlbd.policy import prompt

CASES = json.loads((Path(__file__).parent / "data" / "prefix_prompts.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_canonical_text_relations(case):
    """Bodies that show the model the same leading text share the same leading canonical text."""
    a, b = prompt.canonical_text(case["a"]), prompt.canonical_text(case["b"])
    relation = case["relation"]
    if relation == "equal":
        assert a == b
    elif relation == "prefix":
        assert b.startswith(a) and len(b) > len(a)
    elif relation == "common_prefix":
        # RUF071 warns that commonprefix works per character: on two strings, that is what we want.
        assert len(os.path.commonprefix([a, b])) >= case["min_common"]  # noqa: RUF071
        assert a != b
    else:
        assert a != b


class TestBlockHashes:
    def test_chained_and_order_sensitive(self):
        """Swapping two blocks changes every hash from the first swapped block on (no XOR)."""
        seed = prompt.scope_hash("p", "m", "")
        x, y = "x" * 64, "y" * 64
        assert prompt.block_hashes(x + y, 64, seed) != prompt.block_hashes(y + x, 64, seed)
        xy, xyy = prompt.block_hashes(x + y, 64, seed), prompt.block_hashes(x + y + y, 64, seed)
        assert xyy[:2] == xy and xyy[2] not in xy
        assert prompt.block_hashes(x + x, 64, seed)[0] != prompt.block_hashes(x + x, 64, seed)[1]

    def test_partial_block_is_not_hashed(self):
        """Only full blocks get a hash, as in vLLM."""
        seed = prompt.scope_hash("p", "m", "")
        assert len(prompt.block_hashes("a" * 127, 64, seed)) == 1
        assert prompt.block_hashes("a" * 63, 64, seed) == []

    @pytest.mark.parametrize("other", [("q", "m", ""), ("p", "m-lora", ""), ("p", "m", "salt")])
    def test_scope(self, other):
        """Pool, model (adapter) and cache_salt each give different hashes for the same text."""
        text = "t" * 128
        base = prompt.block_hashes(text, 64, prompt.scope_hash("p", "m", ""))
        assert set(base).isdisjoint(prompt.block_hashes(text, 64, prompt.scope_hash(*other)))

    def test_stable_across_processes(self):
        """Hashes do not depend on PYTHONHASHSEED: two proxies compute the same keys."""
        seed = prompt.scope_hash("default", "m", "")
        assert prompt.block_hashes("z" * 64, 64, seed) == [prompt._hash(seed + b"z" * 64).hex()]
        assert len(prompt.block_hashes("z" * 64, 64, seed)[0]) == 24

    @pytest.mark.parametrize(
        "text",
        ["plain ascii text, " * 20, "café au lait, s'il vous plaît " * 9, "中文" * 100 + "x" * 70],
    )
    def test_the_documented_chain_whatever_the_characters(self, text):
        """h_i = H(h_{i-1} || UTF-8 of block i, in characters): the ASCII fast path and the
        general one give the hashes every proxy version computes (rolling upgrades)."""
        seed = prompt.scope_hash("p", "m", "")
        expected, previous = [], seed
        for i in range(len(text) // 64):
            previous = prompt._hash(previous + text[i * 64 : (i + 1) * 64].encode("utf-8"))
            expected.append(previous.hex())
        assert expected and prompt.block_hashes(text, 64, seed) == expected
        body = {"prompt": text}
        levels = prompt.levels(
            body, pool="p", model="m", cache_salt="", block_chars=64, max_levels=8
        )
        every = prompt.block_hashes(prompt.canonical_text(body), 64, seed)
        assert levels.hashes == [every[b - 1] for b in levels.blocks]


class TestLevels:
    def test_positions_dense_then_sparse(self):
        """The first quarter of positions is consecutive, then the step doubles."""
        positions = prompt.level_positions(16)
        assert positions[:4] == [0, 1, 2, 3]
        assert positions[4:8] == [5, 7, 9, 11]
        assert positions[8:12] == [15, 19, 23, 27]
        assert len(positions) == 16

    def test_levels_are_a_prefix_of_the_next_turn(self):
        """A conversation's next turn repeats every level of the previous turn."""
        messages = [
            {"role": "system", "content": "S" * 3000},
            {"role": "user", "content": "Q" * 900},
        ]
        first = prompt.levels(
            {"messages": messages},
            pool="p",
            model="m",
            cache_salt="",
            block_chars=64,
            max_levels=64,
        )
        messages += [
            {"role": "assistant", "content": "A" * 700},
            {"role": "user", "content": "R" * 200},
        ]
        second = prompt.levels(
            {"messages": messages},
            pool="p",
            model="m",
            cache_salt="",
            block_chars=64,
            max_levels=64,
        )
        assert second.hashes[: len(first)] == first.hashes
        assert len(second) > len(first)
        assert second.blocks == [p + 1 for p in prompt.level_positions(64)][: len(second)]

    def test_cap(self):
        """No request yields more than maxBlocks keys, however long its prompt."""
        body = {"prompt": "w" * 1_000_000}
        got = prompt.levels(body, pool="p", model="m", cache_salt="", block_chars=64, max_levels=32)
        assert len(got) == 32 and got.blocks[-1] == prompt.level_positions(32)[-1] + 1

    def test_no_prompt(self):
        """Bodies without a prompt (or no body) give no levels."""
        for body in (None, {}, {"model": "m"}, {"messages": "nonsense"}):
            assert (
                len(
                    prompt.levels(
                        body, pool="p", model="m", cache_salt="", block_chars=64, max_levels=8
                    )
                )
                == 0
            )

    def test_token_prompt_blocks_are_16_tokens(self):
        """A token-id prompt is four characters per token: one 64-char block per 16 tokens."""
        got = prompt.levels(
            {"prompt": list(range(40))},
            pool="p",
            model="m",
            cache_salt="",
            block_chars=64,
            max_levels=8,
        )
        assert got.total_blocks == 2
