"""The precise prefix index's one-round-trip acquire (``lua/acquire_precise.lua``).

Reads what the collector keeps from the backends' KV events (see kv_index.py):
per candidate, its liveness and the longest run of the prompt's leading blocks it
holds; then the same eligibility, load and bound as the approximate index, and the
reservation, in one script.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmlbd.state.kv_index import TIERS
from llmlbd.state.leases import Leases
from llmlbd.state.scripts import explain_reply, reply_text

__all__ = ["PreciseParams", "PreciseReservation", "PreciseIndex"]


@dataclass(frozen=True)
class PreciseParams:
    stale_after_ms: int = 2000
    min_match_blocks: int = 4
    max_load_gap: float = 4.0
    max_load_ratio: float = 1.5
    max_kv_usage: float = 0.95
    count_offloaded: bool = False


@dataclass(frozen=True)
class PreciseReservation:
    backend: str | None
    inflight: int = 0
    reason: str = ""
    matched_blocks: int = 0
    best_blocks: int = 0
    best_backend: str = ""
    live_backends: int = 0


class PreciseIndex:
    def __init__(self, leases: Leases, params: PreciseParams) -> None:
        self.leases = leases
        self.keys = leases.keys
        self.params = params

    def _call(
        self,
        request_id: str,
        names: Sequence[str],
        weights: Sequence[float],
        excluded: Sequence[bool],
        hashes: Sequence[int],
        model: str,
        cap: int,
        dry: bool,
    ) -> Any:
        k, p = self.keys, self.params
        keys = [
            k.inflight,
            k.leases,
            k.workers,
            k.drained,
            *(k.backend(n) for n in names),
            *(k.kv_state(n) for n in names),
            *(k.kv_blocks(n, tier) for tier in TIERS for n in names),
        ]
        args = [
            request_id,
            self.leases.worker_id,
            self.leases.ttl_ms,
            cap,
            model,
            len(names),
            p.stale_after_ms,
            p.min_match_blocks,
            repr(float(p.max_load_gap)),
            repr(float(p.max_load_ratio)),
            repr(float(p.max_kv_usage)),
            "1" if p.count_offloaded else "0",
            "1" if dry else "0",
            *names,
            *(repr(float(w)) for w in weights),
            *("1" if x else "0" for x in excluded),
            *hashes,
        ]
        return self.leases.scripts.acquire_precise(keys=keys, args=args)

    def acquire(
        self,
        request_id: str,
        names: Sequence[str],
        weights: Sequence[float],
        excluded: Sequence[bool],
        hashes: Sequence[int],
        model: str = "",
        cap: int = 0,
    ) -> PreciseReservation:
        reply = self._call(request_id, names, weights, excluded, hashes, model, cap, dry=False)
        if not reply[0]:
            return PreciseReservation(None, 0, reply_text(reply[1]))
        return PreciseReservation(
            reply_text(reply[0]),
            int(reply[1]),
            reply_text(reply[2]),
            int(reply[3]),
            int(reply[4]),
            reply_text(reply[5]),
            int(reply[6]),
        )

    def explain(
        self,
        names: Sequence[str],
        weights: Sequence[float],
        hashes: Sequence[int],
        model: str = "",
        cap: int = 0,
    ) -> dict[str, Any]:
        """What acquire would choose now, read-only: {"choice", "reason", "candidates"}."""
        reply = self._call(
            "explain", names, weights, [False] * len(names), hashes, model, cap, True
        )
        return explain_reply(reply, "index_live", lambda live: live == "1")
