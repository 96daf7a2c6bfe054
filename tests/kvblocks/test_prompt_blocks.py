"""Request -> vLLM block hashes: token-id prompts, the local tokenizer and chat template with its
per-conversation cache, and a backend's /tokenize."""

from __future__ import annotations

import pytest

from llmlbd.kvblocks import hashing
from llmlbd.kvblocks.local import LocalTokenizer
from llmlbd.kvblocks.prompt_blocks import PromptBlocks, TokenizeError
from llmlbd.kvblocks.remote import RemoteTokenizer
from tests.harness import free_port
from tests.simfleet import SimFleet

TEXT = "the tenant shall keep the premises in good repair and the cache holds the prefix "


def conversation(turns: int) -> list[dict]:
    messages = [{"role": "system", "content": TEXT * 4}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"question {turn}: " + TEXT * 3})
        if turn < turns - 1:
            messages.append({"role": "assistant", "content": f"answer {turn} " + TEXT * 2})
    return messages


class TestTokenIds:
    def test_a_token_id_prompt_needs_no_tokenizer(self) -> None:
        ids = list(range(100))
        result = PromptBlocks(16).hashes({"prompt": ids}, "m", None, None)
        assert result.hashes == hashing.block_hashes(ids, 16)
        assert (result.tokens, result.source) == (100, "ids")

    def test_lora_salt_and_seed_reach_the_chain(self) -> None:
        ids = list(range(64))
        got = PromptBlocks(16, seed="7").hashes({"prompt": ids}, "m", "ad", "salt")
        assert got.hashes == hashing.block_hashes(
            ids, 16, lora_name="ad", cache_salt="salt", seed="7"
        )

    def test_long_prompts_are_hashed_up_to_the_cap(self) -> None:
        ids = list(range(1000))
        got = PromptBlocks(16, max_blocks=5).hashes({"prompt": ids}, "m", None, None)
        assert got.hashes == hashing.block_hashes(ids, 16)[:5] and got.tokens == 1000


class TestLocal:
    def test_chat_ids_are_the_whole_text_encoded(self, tokenizer_dir) -> None:
        local = LocalTokenizer(str(tokenizer_dir))
        body = {"messages": conversation(1)}
        text, special = local.render(body)
        assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
        assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
        assert special is False
        ids = local.encode(text, False)
        assert ids[0] == local.tokenizer.token_to_id("<|begin_of_text|>")
        got = PromptBlocks(16, local=local).hashes(body, "m", None, None)
        assert got.hashes == hashing.block_hashes(ids, 16) and got.tokens == len(ids)

    def test_next_turn_reuses_the_previous_turn_and_agrees_with_a_fresh_hash(
        self, tokenizer_dir
    ) -> None:
        local = LocalTokenizer(str(tokenizer_dir))
        warm = PromptBlocks(16, local=local)
        first = warm.hashes({"messages": conversation(1)}, "m", None, None)
        assert first.source == "local"
        for turns in (2, 3, 4):
            body = {"messages": conversation(turns)}
            again = warm.hashes(body, "m", None, None)
            fresh = PromptBlocks(16, local=local).hashes(body, "m", None, None)
            assert again.source == "local+cache"
            assert again.hashes == fresh.hashes
            assert again.hashes == hashing.block_hashes(
                local.encode(local.render(body)[0], False), 16
            )
            assert again.hashes[: len(first.hashes)] == first.hashes

    def test_cache_is_scoped_by_salt(self, tokenizer_dir) -> None:
        local = LocalTokenizer(str(tokenizer_dir))
        blocks = PromptBlocks(16, local=local)
        body = {"messages": conversation(2)}
        plain = blocks.hashes(body, "m", None, None)
        salted = blocks.hashes(body, "m", None, "s")
        assert salted.source == "local" and salted.hashes[0] != plain.hashes[0]

    def test_completion_prompt_and_errors(self, tokenizer_dir) -> None:
        local = LocalTokenizer(str(tokenizer_dir))
        blocks = PromptBlocks(16, local=local)
        got = blocks.hashes({"prompt": TEXT * 5}, "m", None, None)
        assert got.hashes == hashing.block_hashes(local.encode(TEXT * 5, True), 16)
        with pytest.raises(TokenizeError):
            blocks.hashes({"input": "responses API"}, "m", None, None)
        with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
            LocalTokenizer(str(tokenizer_dir / "missing"))


class TestRemote:
    def test_sim_tokenize_gives_the_sims_own_hashes(self) -> None:
        remote = RemoteTokenizer(2.0)
        with SimFleet(1, time_scale=0.1) as fleet:
            blocks = PromptBlocks(16, remote=remote)
            body = {"model": "sim-llama", "messages": conversation(2)}
            got = blocks.hashes(body, "sim-llama", None, None, fleet.url)
            remote.close()
            import requests

            tokens = requests.post(fleet.url + "/tokenize", json=body, timeout=5).json()["tokens"]
            assert got.source == "remote" and got.hashes == hashing.block_hashes(tokens, 16)
            assert blocks.hashes(body, "sim-llama", None, None, fleet.url).source == "remote+cache"

    def test_unreachable_backend_is_a_tokenize_error(self) -> None:
        blocks = PromptBlocks(16, remote=RemoteTokenizer(0.5))
        with pytest.raises(TokenizeError):
            blocks.hashes(
                {"messages": conversation(1)}, "m", None, None, f"http://127.0.0.1:{free_port()}"
            )


def test_a_new_conversation_reuses_a_known_system_prompt(tokenizer_dir) -> None:
    local = LocalTokenizer(str(tokenizer_dir))
    blocks = PromptBlocks(16, local=local)
    system = {"role": "system", "content": TEXT * 6}
    blocks.hashes(
        {"messages": [system, {"role": "user", "content": "first user"}]}, "m", None, None
    )
    other = {"messages": [system, {"role": "user", "content": "another user " * 9}]}
    got = blocks.hashes(other, "m", None, None)
    assert got.source == "local+cache"
    assert got.hashes == PromptBlocks(16, local=local).hashes(other, "m", None, None).hashes
