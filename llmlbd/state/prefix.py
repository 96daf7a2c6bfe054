"""The prefix index in Redis and its one-round-trip acquire (``lua/acquire_prefix.lua``).

Layout (all keys carry the pool's hash tag, see keys.py):

- ``prefix:<hash>`` HASH backend -> last use (ms): the backends that served a
  prompt starting with the prefix whose chained hash is ``<hash>``. A use
  rewrites the backend's field and the key's TTL (``redisKeyTTL``) when the
  field is at least TTL / `REFRESH_FRACTION` old, and a field older than the
  TTL counts as absent (another backend may keep the key alive). The field
  ``#`` (`BRANCH_FIELD`) counts the prompts that branched off after this prefix.
- ``prefix_owned:<backend>`` ZSET hash -> last use (ms): the entries of one
  backend, capped to about the size of its KV cache. When the cap pops
  entries, their fields are removed by this worker's *next* acquire, which
  passes their hashes along; until then a lookup ignores them because the
  owned set lacks them.

The script declares only the pool's fixed keys; it names the prefix keys (and
each backend's keys) from the pool's base key, so they share the slot of the
declared ones (Redis Cluster, docs/policies/prefix_cache.md).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmlbd.config.settings import default_of
from llmlbd.state import ordered_index
from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases
from llmlbd.state.ordered_index import Membership
from llmlbd.state.scripts import explain_reply, reply_text

__all__ = [
    "PrefixParams",
    "PrefixReservation",
    "PrefixIndex",
    "BRANCH_FIELD",
    "REFRESH_FRACTION",
    "decision_fields",
    "holders",
    "refresh_ms",
]

# Field of a prefix HASH counting the prompts that branched off after it (not a backend).
BRANCH_FIELD = "#"

# A level's field (and its key's TTL) is rewritten for the chosen backend only when the
# backend last wrote it at least TTL / REFRESH_FRACTION ago (lua/acquire_prefix.lua): an
# entry lives at least TTL x (1 - 1 / REFRESH_FRACTION) after its last use. The owned set's
# scores (the eviction order) are written on every use.
REFRESH_FRACTION = 8


def decision_fields(
    leases: Leases,
    params: Any,
    request_id: str,
    cap: int,
    model: str,
    members: Membership,
    seed: int,
    exclude: Sequence[str],
) -> dict[str, Any]:
    """The JSON fields both prefix scripts (acquire_prefix.lua, acquire_precise.lua) read
    alike: the lease, the caller's membership and exclusions, and the load bound. *params*
    is a PrefixParams or a PreciseParams."""
    return {
        "request_id": request_id,
        "worker": leases.worker_id,
        "lease_ttl_ms": leases.ttl_ms,
        "cap": cap,
        "model": model,
        "digest": members.digest,
        "seed": seed,
        "excluded": list(exclude),
        "stale_after_ms": params.stale_after_ms,
        "min_match_blocks": params.min_match_blocks,
        "max_load_gap": float(params.max_load_gap),
        "max_load_ratio": float(params.max_load_ratio),
        "max_kv_usage": float(params.max_kv_usage),
    }


def refresh_ms(ttl_ms: int) -> int:
    """How old a field must be before a use rewrites it (at least 1 ms)."""
    return max(1, ttl_ms // REFRESH_FRACTION)


# Evicted entries sent along with one acquire, and kept waiting per worker.
EVICTIONS_PER_CALL = 256
EVICTIONS_KEPT = 8192


@dataclass(frozen=True)
class PrefixParams:
    ttl_ms: int = 1_800_000
    stale_after_ms: int = 2000
    # The lb_config defaults, from the settings themselves (they cannot drift apart).
    min_match_blocks: int = default_of("lb_config.minMatchBlocks")
    max_load_gap: float = default_of("lb_config.maxLoadGap")
    max_load_ratio: float = default_of("lb_config.maxLoadRatio")
    max_kv_usage: float = default_of("lb_config.maxKvUsage")
    entries_per_backend: int = default_of("lb_config.maxEntriesPerBackend")
    tokens_per_block: float = 16.0
    mode: str = default_of("lb_config.scoring")
    # A new conversation on a shared prefix: "follow" its in-bound holders, or "spread".
    shared: str = default_of("lb_config.sharedPrefix")
    weights: tuple[float, float, float, float] = (3.0, 2.0, 2.0, 1.0)  # prefix, queue, kv, inflight
    # Leading levels named by more backends than this are looked up per candidate rather
    # than read whole (lua/acquire_prefix.lua, "wide" levels).
    wide_level_holders: int = 16
    # The fallback's emptiest-index choice among backends tied at the least load looks at a
    # uniformly random sample of this many of them (all of them when there are no more).
    tie_sample: int = 16


@dataclass(frozen=True)
class PrefixReservation:
    backend: str | None
    inflight: int = 0
    reason: str = ""
    matched_blocks: int = 0
    best_blocks: int = 0
    best_backend: str = ""
    healed: int = 0
    evicted: list[tuple[str, str]] = field(default_factory=list)


def holders(fields: dict[str, str]) -> dict[str, int]:
    """Backend -> last use (ms) from a prefix HASH's HGETALL (for llmlbctl and tests)."""
    return {
        name: int(float(used)) for name, used in fields.items() if not name.startswith(BRANCH_FIELD)
    }


class PrefixIndex:
    """One pool's prefix index, bound to a worker's leases (and its pending evictions)."""

    def __init__(self, leases: Leases, params: PrefixParams) -> None:
        self.leases = leases
        self.keys: PoolKeys = leases.keys
        self.params = params
        self.pending: deque[tuple[str, str]] = deque(maxlen=EVICTIONS_KEPT)

    def call_keys(self, model: str) -> list[str]:
        """The keys the script declares. The prefix keys of the prompt's levels and of the
        evictions travel as their block hashes in the JSON argument (one argument rather
        than ~130 keys for a long prompt): the script names them from the pool's base key,
        in the same slot (like the backends' metrics and owned sets)."""
        k = self.keys
        return [k.inflight, k.leases, k.workers, k.drained, *ordered_index.index_keys(k, model)]

    def _args(
        self,
        request_id: str,
        members: Membership,
        seed: int,
        exclude: Sequence[str],
        hashes: Sequence[str],
        blocks: Sequence[int],
        model: str,
        cap: int,
        evictions: Sequence[tuple[str, str]],
        dry: bool,
    ) -> list[Any]:
        p = self.params
        prefix, queue, kv, inflight = p.weights
        return [
            json.dumps(
                {
                    **decision_fields(
                        self.leases, p, request_id, cap, model, members, seed, exclude
                    ),
                    "prefix_ttl_ms": p.ttl_ms,
                    "entries_per_backend": p.entries_per_backend,
                    "tokens_per_block": float(p.tokens_per_block),
                    "mode": p.mode,
                    "shared_follow": p.shared == "follow",
                    "weights": {"prefix": prefix, "queue": queue, "kv": kv, "inflight": inflight},
                    "dry": dry,
                    "wide_level_holders": p.wide_level_holders,
                    "tie_sample": p.tie_sample,
                    "refresh_ms": refresh_ms(p.ttl_ms),
                    "hashes": list(hashes),
                    "level_blocks": list(blocks),
                    "evicted": [h for _, h in evictions],
                    "evicted_by": [name for name, _ in evictions],
                },
                separators=(",", ":"),
            )
        ]

    def _call(self, members: Membership, keys: list[str], args: list[Any]) -> Any:
        """Run the script; rebuild the ordered index when it follows another membership
        (or Redis lost it), and once more before refusing with 'none' or 'model': a
        backend made eligible behind the scripts' back (a direct write) is not indexed."""

        def run() -> Any:
            return self.leases.scripts.acquire_prefix(keys=keys, args=args)

        return ordered_index.with_resync(
            run, self.leases.client, self.keys, members, recheck_refusals=True
        )

    def explain(
        self,
        members: Membership,
        hashes: Sequence[str],
        blocks: Sequence[int],
        model: str = "",
        cap: int = 0,
        exclude: Sequence[str] = (),
    ) -> dict[str, Any]:
        """What acquire would choose now, read-only: {"choice", "reason", "candidates"}
        (one candidate per member). Every member is read: a full recomputation."""
        keys = self.call_keys(model)
        args = self._args("explain", members, 0, exclude, hashes, blocks, model, cap, [], dry=True)
        return explain_reply(
            self._call(members, keys, args),
            "index_occupancy",
            lambda occupancy: float(occupancy) if occupancy else None,
        )

    def acquire(
        self,
        request_id: str,
        members: Membership,
        seed: int,
        exclude: Sequence[str],
        hashes: Sequence[str],
        blocks: Sequence[int],
        model: str = "",
        cap: int = 0,
    ) -> PrefixReservation:
        """Pick and reserve a member of *members* not in *exclude* for a prompt whose
        level hashes are *hashes*; *seed* drives the random tie-breaks."""
        evictions = [
            self.pending.popleft() for _ in range(min(EVICTIONS_PER_CALL, len(self.pending)))
        ]
        keys = self.call_keys(model)
        args = self._args(
            request_id, members, seed, exclude, hashes, blocks, model, cap, evictions, dry=False
        )
        try:
            reply = self._call(members, keys, args)
        except BaseException:
            self.pending.extendleft(reversed(evictions))  # not applied: keep them for later
            raise
        if not reply[0]:
            self.pending.extendleft(reversed(evictions))
            return PrefixReservation(None, 0, reply_text(reply[1]))
        flat = [reply_text(x) for x in reply[7]]
        evicted = list(zip(flat[0::2], flat[1::2]))
        self.pending.extend(evicted)
        return PrefixReservation(
            reply_text(reply[0]),
            int(reply[1]),
            reply_text(reply[2]),
            int(reply[3]),
            int(reply[4]),
            reply_text(reply[5]),
            int(reply[6]),
            evicted,
        )
