"""A paged KV cache with automatic prefix caching, shaped like vLLM V1's block pool.

The cache has ``num_blocks`` blocks of ``block_size`` tokens. Every *full*
prompt block gets a chained hash, ``hash((parent_hash, block_token_ids))``,
whose root hash carries the scope (model, LoRA adapter, cache salt), so two
prompts share a block only if they share every token before it in the same
scope. A block is either

- *used*: pinned by at least one running request (reference counted),
- *evictable*: its request finished, its content is still cached and a later
  request may hit it; evictable blocks sit in an LRU queue and count as free,
- *empty*: holds nothing.

Blocks of partial prompt blocks and generated tokens are never hashed here
(vLLM also caches full blocks of generated text; prompts dominate reuse in
chat workloads, so the simulator skips that).

Python's ``hash`` of int tuples is fast and stable; the root hash mixes in
strings, so hashes differ between processes (they never leave the process).
With KV events on (``--kv-events-config``) the hashes leave the process, so
they are vLLM's own (`llmlbd.kvblocks.hashing`: sha256 chain, LoRA name and
cache_salt as extra keys, the low 64 bits published) and a listener hears
every store, eviction and reset (`llmlbd.sim.kv_events`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["KVCache", "chain_hashes", "CacheListener"]


class CacheListener(Protocol):
    """Told what the cache stores, evicts and clears (the KV-event publisher, kv_events.py)."""

    def on_stored(self, hashes: Sequence[int], new: Sequence[int], origin: Any) -> None: ...

    def on_removed(self, block_hash: int) -> None: ...

    def on_cleared(self) -> None: ...


def chain_hashes(token_ids: Sequence[int], block_size: int, scope: tuple) -> list[int]:
    """Hashes of the full blocks of ``token_ids``, each covering everything before it."""
    parent = hash(("llmlbd-sim-root",) + scope)
    hashes = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, tuple(token_ids[start : start + block_size])))
        hashes.append(parent)
    return hashes


def prompt_hashes(
    token_ids: Sequence[int],
    block_size: int,
    model: str,
    lora: str | None,
    cache_salt: str | None,
    vllm_hashes: bool,
) -> list[int]:
    """The block hashes the cache keys a prompt by: vLLM's when they are published, else the
    fast in-process chain."""
    if vllm_hashes:
        from llmlbd.kvblocks.hashing import block_hashes

        return block_hashes(token_ids, block_size, lora_name=lora, cache_salt=cache_salt)
    return chain_hashes(token_ids, block_size, (model, lora or "", cache_salt or ""))


class KVCache:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._empty = num_blocks
        self._refs: dict[int, int] = {}  # hash -> requests pinning it (0 = evictable)
        self._evictable: OrderedDict[int, None] = OrderedDict()  # oldest first
        self.evictions = 0
        self.listener: CacheListener | None = None

    # -- what is there -------------------------------------------------------

    @property
    def free_blocks(self) -> int:
        return self._empty + len(self._evictable)

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - self.free_blocks

    @property
    def cached_blocks(self) -> int:
        """Blocks holding a hashed prompt block, used or evictable."""
        return len(self._refs)

    @property
    def usage(self) -> float:
        return self.used_blocks / self.num_blocks

    def match(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of ``hashes`` are cached right now."""
        refs = self._refs
        count = 0
        for block_hash in hashes:
            if block_hash not in refs:
                break
            count += 1
        return count

    # -- taking and giving back ----------------------------------------------

    def allocate(self, hashes: Sequence[int], anonymous: int, origin: Any = None) -> bool:
        """Pin the hashed blocks (reusing cached ones) and take ``anonymous`` more.

        All or nothing: returns False and changes nothing when the blocks do
        not fit even after evicting every evictable block.
        """
        refs = self._refs
        new = 0
        revived = 0
        for block_hash in hashes:
            count = refs.get(block_hash)
            if count is None:
                new += 1
            elif count == 0:
                revived += 1
        available = self._empty + len(self._evictable) - revived
        if new + anonymous > available:
            return False
        # Pin the cached blocks before taking new ones, so that taking a block
        # can never evict one this request is about to reuse.
        missing = []
        for block_hash in hashes:
            count = refs.get(block_hash)
            if count is None:
                missing.append(block_hash)
            else:
                if count == 0:
                    del self._evictable[block_hash]
                refs[block_hash] = count + 1
        for block_hash in missing:
            self._take_block()
            refs[block_hash] = 1
        for _ in range(anonymous):
            self._take_block()
        # After every eviction this allocation caused, as vLLM orders its events.
        if self.listener is not None and missing:
            self.listener.on_stored(hashes, missing, origin)
        return True

    def grow(self, blocks: int = 1) -> bool:
        """Take ``blocks`` unhashed blocks for a running request's new tokens."""
        if blocks > self.free_blocks:
            return False
        for _ in range(blocks):
            self._take_block()
        return True

    def release(self, hashes: Sequence[int], anonymous: int) -> None:
        # Walk back from the tail so that, among the blocks this request frees,
        # the longest-prefix ones are evicted first (vLLM frees in reverse too).
        refs = self._refs
        for block_hash in reversed(hashes):
            count = refs[block_hash] - 1
            refs[block_hash] = count
            if count == 0:
                self._evictable[block_hash] = None
        self._empty += anonymous

    def reset(self) -> int:
        """Drop every evictable block (vLLM's /reset_prefix_cache); returns how many."""
        dropped = len(self._evictable)
        for block_hash in self._evictable:
            del self._refs[block_hash]
        self._evictable.clear()
        self._empty += dropped
        if self.listener is not None:
            self.listener.on_cleared()
        return dropped

    def _take_block(self) -> None:
        if self._empty:
            self._empty -= 1
            return
        oldest, _ = self._evictable.popitem(last=False)
        del self._refs[oldest]
        self.evictions += 1
        if self.listener is not None:
            self.listener.on_removed(oldest)
