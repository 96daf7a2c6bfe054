"""The precise prefix index: which vLLM blocks each backend holds, from its KV events.

Written by the collector (`collector/kv_events.py`) through two scripts, read by
the precise prefix policy's script (``lua/acquire_precise.lua``). Per backend
(every key carries the pool's hash tag, see keys.py):

- ``kvx:<backend>:gpu`` and ``kvx:<backend>:offload`` ZSET: vLLM's published
  block hash (decimal) -> when it was stored (ms). ``gpu`` is the GPU medium,
  ``offload`` any other (CPU, disk). Bounded: ``gpu`` by the backend's
  ``num_gpu_blocks`` when the collector knows it, both by
  ``kv_index_max_blocks`` otherwise; the oldest go first.
- ``kvx_state:<backend>`` HASH: ``seq`` (last batch applied, -1 after a
  clear), ``ts`` (its server time), ``lag_ms``, ``live_until`` (ms, Redis
  clock: the index is trusted only before it), ``owner``, ``block_size``,
  ``stored``, ``removed``, ``clears``, ``cleared_at``, ``cleared_reason``.

And per pool, kept in step with those by the same scripts:

- ``kvx_holders:<hash>`` SET: the backends holding block ``<hash>`` in either
  tier (the inversion of the ``kvx`` ZSETs: a store adds the backend, a remove,
  an overflow pop or a clear takes it out unless its other tier still has the
  block).
- ``kvx_live`` ZSET: backend -> ``live_until`` of the backends whose stream is
  trusted (silent or cleared ones are not in it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmlbd.state.keys import PoolKeys
from llmlbd.state.scripts import ScriptSet

__all__ = ["TIERS", "tier_of", "Applied", "KVIndexWriter", "read_holdings", "read_holders"]

TIERS = ("gpu", "offload")


def tier_of(medium: str | None) -> str:
    """The index tier of a KV event's medium (vLLM sends "GPU" even on its CPU build)."""
    return "gpu" if not medium or medium.upper() == "GPU" else "offload"


@dataclass(frozen=True)
class Applied:
    stored: int
    removed: int
    dropped: int  # popped because the backend's bound was passed
    lag_ms: int


class KVIndexWriter:
    """One backend's part of the index, as its collector writes it."""

    def __init__(
        self,
        client: Any,
        keys: PoolKeys,
        backend: str,
        owner: str,
        max_blocks: int,
        live_ttl_ms: int,
    ) -> None:
        self.keys = keys
        self.backend = backend
        self.owner = owner
        self.max_blocks = max_blocks
        self.live_ttl_ms = live_ttl_ms
        self.scripts = ScriptSet(client)
        self._keys = [keys.kv_state(backend), *(keys.kv_blocks(backend, t) for t in TIERS)]

    def apply(
        self, ops: Sequence[str | int], seq: int, ts: float, block_size: int | None
    ) -> Applied:
        """Apply batches' operations (see kv_index_apply.lua) and record *seq* as applied."""
        reply = self.scripts.kv_index_apply(
            keys=[*self._keys, self.keys.backend(self.backend), self.keys.kv_live],
            args=[
                self.owner,
                seq,
                repr(float(ts)),
                self.max_blocks,
                self.live_ttl_ms,
                "" if block_size is None else block_size,
                *ops,
            ],
        )
        return Applied(*(int(x) for x in reply))

    def live(self) -> int:
        """The stream is connected: trust the index for the next live_ttl_ms."""
        return self._status("live")

    def silent(self) -> int:
        """The stream is not connected: stop trusting the index (keep it for a resync)."""
        return self._status("silent")

    def clear(self, reason: str) -> int:
        return self._status("clear", reason)

    def _status(self, mode: str, reason: str = "") -> int:
        reply = self.scripts.kv_index_status(
            keys=[*self._keys, self.keys.kv_live], args=[self.owner, mode, self.live_ttl_ms, reason]
        )
        return int(reply)


def read_holdings(client: Any, keys: PoolKeys, backend: str) -> dict[str, set[int]]:
    """tier -> block hashes *backend* holds (for llmlbctl and tests; reads whole sets)."""
    out = {}
    for tier in TIERS:
        members = client.zrange(keys.kv_blocks(backend, tier), 0, -1)
        out[tier] = {int(m) for m in members}
    return out


def read_holders(client: Any, keys: PoolKeys, block_hash: int) -> set[str]:
    """The backends the reverse index says hold *block_hash* (for llmlbctl and tests)."""
    return {str(m) for m in client.smembers(keys.kv_holders(block_hash))}
