"""vLLM's prefix-cache block hashes, recomputed outside vLLM (a leaf: standard library only).

vLLM V1 (``vllm/v1/core/kv_cache_utils.py``) names each *full* block of a
prompt by a chain::

    full_0 = H((NONE_HASH, tuple(tokens_0), extra_keys_0))
    full_i = H((full_{i-1}, tuple(tokens_i), extra_keys_i))

with ``H = sha256(pickle.dumps(x, protocol=5))`` (the default
``--prefix-caching-hash-algo sha256``) and ``NONE_HASH = H("vllm-none-hash")``
unless ``PYTHONHASHSEED`` is set on the server, in which case the seed
replaces the string. ``extra_keys`` is ``None`` or a tuple: the LoRA adapter's
*name*, multimodal hashes, then ``cache_salt`` on the first block only.

The KV events publish ``int.from_bytes(full_i, "big") & (2**64 - 1)``
(``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``, the default): the low 64 bits.
The chain itself runs on the full 32-byte digests, which is why a consumer
re-hashes from tokens and cannot extend a chain from a published value.

The simulator imports this module, so it must import nothing of llmlbd.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence
from typing import Any

__all__ = [
    "NONE_HASH_SEED",
    "none_hash",
    "hash_block",
    "extra_keys",
    "chain",
    "published",
    "block_hashes",
]

NONE_HASH_SEED = "vllm-none-hash"
_LOW64 = (1 << 64) - 1


def _sha256(value: Any) -> bytes:
    # protocol=5 is pickle.HIGHEST_PROTOCOL on every Python vLLM supports; pinned so that a
    # future Python with a protocol 6 does not silently change every hash.
    return hashlib.sha256(pickle.dumps(value, protocol=5)).digest()


def none_hash(seed: str | None = None) -> bytes:
    """The chain's root: H(seed), where the seed is the server's PYTHONHASHSEED if it has one."""
    return _sha256(NONE_HASH_SEED if seed is None else seed)


def hash_block(parent: bytes, tokens: Sequence[int], extra: tuple[Any, ...] | None) -> bytes:
    """One link of the chain (vLLM's ``hash_block_tokens`` with the sha256 algorithm)."""
    return _sha256((parent, tuple(tokens), extra))


def extra_keys(
    first_block: bool, lora_name: str | None, cache_salt: str | None
) -> tuple[Any, ...] | None:
    """vLLM's ``generate_block_hash_extra_keys`` for text prompts: LoRA name, then the salt
    on the first block only; None when there is nothing to add (not an empty tuple)."""
    keys: list[Any] = []
    if lora_name:
        keys.append(lora_name)
    if first_block and cache_salt:
        keys.append(cache_salt)
    return tuple(keys) if keys else None


def chain(
    token_ids: Sequence[int],
    block_size: int,
    *,
    lora_name: str | None = None,
    cache_salt: str | None = None,
    seed: str | None = None,
    parent: bytes | None = None,
    first_block: bool = True,
) -> list[bytes]:
    """The 32-byte digests of every full block of *token_ids* (a trailing partial block is not
    hashed: vLLM caches full blocks only).

    *parent* and *first_block* continue a chain computed earlier (the tokenization cache
    extends a conversation's chain instead of re-hashing it from the start).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    previous = none_hash(seed) if parent is None else parent
    digests = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        extra = extra_keys(first_block and start == 0, lora_name, cache_salt)
        previous = hash_block(previous, token_ids[start : start + block_size], extra)
        digests.append(previous)
    return digests


def published(digest: bytes) -> int:
    """The value a KV event carries for *digest*: its low 64 bits as an unsigned int."""
    return int.from_bytes(digest, "big") & _LOW64


def block_hashes(
    token_ids: Sequence[int],
    block_size: int,
    *,
    lora_name: str | None = None,
    cache_salt: str | None = None,
    seed: str | None = None,
) -> list[int]:
    """The published (64-bit) hashes of every full block of *token_ids*, as vLLM emits them."""
    return [
        published(d)
        for d in chain(token_ids, block_size, lora_name=lora_name, cache_salt=cache_salt, seed=seed)
    ]
