"""A real Hugging Face tokenizer directory, trained here (no download): byte-level BPE with
Llama-3's special tokens and a Llama-3-style chat template, as scripts/real_vllm builds."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from types import ModuleType

import pytest


def _tiny_llama() -> ModuleType:
    """scripts/real_vllm/build_tiny_llama.py: the same special tokens, chat template and word
    list as the tiny model the real-vLLM tier serves (its heavy imports are inside functions)."""
    path = Path(__file__).resolve().parents[2] / "scripts" / "real_vllm" / "build_tiny_llama.py"
    spec = importlib.util.spec_from_file_location("build_tiny_llama", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = _tiny_llama()


def build_tokenizer_dir(out: Path, words: list[str] | None = None, vocab_size: int = 600) -> Path:
    """Train a byte-level BPE on sentences of *words* (the tiny model's list by default) and
    write it with the chat template as a Hugging Face tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    rng = random.Random(0)
    vocabulary = words or TINY.WORDS
    corpus = [" ".join(rng.choice(vocabulary) for _ in range(20)) + "." for _ in range(2000)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY.SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<|begin_of_text|>",
                "eos_token": "<|eot_id|>",
                "chat_template": TINY.CHAT_TEMPLATE,
            }
        )
    )
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return build_tokenizer_dir(tmp_path_factory.mktemp("tokenizer"))
