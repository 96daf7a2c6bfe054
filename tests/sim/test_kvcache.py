"""The block pool on its own: chained hashes, reference counts, LRU eviction."""

from __future__ import annotations

from llmlbd.sim.kvcache import KVCache, chain_hashes

SCOPE = ("sim-llama", "", "")


def test_only_full_blocks_are_hashed_and_each_hash_covers_its_prefix():
    a = chain_hashes(list(range(40)), 16, SCOPE)
    b = chain_hashes(list(range(32)) + [99] * 8, 16, SCOPE)
    c = chain_hashes([7] + list(range(1, 40)), 16, SCOPE)
    assert len(a) == 2 and a == b
    assert c[0] != a[0] and c[1] != a[1]  # a different first block changes every later hash
    assert chain_hashes(list(range(40)), 16, ("sim-llama", "lora-a", "")) != a


def test_finished_blocks_stay_cached_until_evicted_oldest_first():
    kv = KVCache(num_blocks=4, block_size=16)
    first = chain_hashes(list(range(32)), 16, SCOPE)
    second = chain_hashes(list(range(100, 132)), 16, SCOPE)
    assert kv.allocate(first, anonymous=0)
    assert kv.used_blocks == 2
    kv.release(first, anonymous=0)
    assert kv.used_blocks == 0 and kv.match(first) == 2  # free, yet still a hit
    assert kv.allocate(second, anonymous=1)  # 3 blocks: the empty two, then evict one of first's
    assert kv.evictions == 1
    # The tail of first was freed first, so it went first: the head is still cached.
    assert kv.match(first) == 1


def test_allocation_is_all_or_nothing_and_reuses_cached_blocks():
    kv = KVCache(num_blocks=3, block_size=16)
    shared = chain_hashes(list(range(32)), 16, SCOPE)
    assert kv.allocate(shared, anonymous=1)
    assert not kv.allocate(chain_hashes(list(range(500, 532)), 16, SCOPE), anonymous=0)
    assert kv.used_blocks == 3
    assert kv.allocate(shared, anonymous=0)  # both blocks are shared, nothing new needed
    kv.release(shared, 0)
    kv.release(shared, 1)
    assert kv.free_blocks == 3 and kv.cached_blocks == 2
    assert kv.reset() == 2 and kv.cached_blocks == 0
