"""The precise prefix index's one-round-trip acquire (``lua/acquire_precise.lua``).

Reads what the collector keeps from the backends' KV events (see kv_index.py): the
holders of the prompt's leading blocks (the reverse index), each one's liveness and
longest run of leading blocks; then the same eligibility, load and bound as the
approximate index, from the ordered index (ordered_index.py), and the reservation, in
one script. The worker sends its membership's digest, not the member list.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmlbd.config.settings import default_of
from llmlbd.state import ordered_index
from llmlbd.state.leases import Leases
from llmlbd.state.ordered_index import Membership
from llmlbd.state.prefix import decision_fields
from llmlbd.state.scripts import explain_reply, reply_text

__all__ = ["PreciseParams", "PreciseReservation", "PreciseIndex"]


@dataclass(frozen=True)
class PreciseParams:
    stale_after_ms: int = 2000
    # The lb_config defaults, from the settings themselves (they cannot drift apart).
    min_match_blocks: int = default_of("lb_config.minMatchBlocks")
    max_load_gap: float = default_of("lb_config.maxLoadGap")
    max_load_ratio: float = default_of("lb_config.maxLoadRatio")
    max_kv_usage: float = default_of("lb_config.maxKvUsage")
    count_offloaded: bool = default_of("lb_config.countOffloaded")
    # A block held by more backends than this is "wide" (a prompt prefix the pool shares):
    # its holders are sampled, not read (lua/acquire_precise.lua).
    wide_holders: int = 16


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
        members: Membership,
        seed: int,
        exclude: Sequence[str],
        hashes: Sequence[int],
        model: str,
        cap: int,
        dry: bool,
    ) -> Any:
        """Run the script; rebuild the ordered index when it follows another membership
        (or Redis lost it), and once more before refusing with 'none' or 'model' (as
        PrefixIndex does)."""
        k, p = self.keys, self.params
        keys = [k.inflight, k.leases, k.workers, k.drained, *ordered_index.index_keys(k, model)]
        keys.append(k.kv_live)
        args = [
            json.dumps(
                {
                    **decision_fields(
                        self.leases, p, request_id, cap, model, members, seed, exclude
                    ),
                    "count_offloaded": p.count_offloaded,
                    "dry": dry,
                    "wide_holders": p.wide_holders,
                    # 64-bit hashes: as text (a JSON number would lose digits in Lua).
                    "hashes": [str(h) for h in hashes],
                },
                separators=(",", ":"),
            )
        ]

        def run() -> Any:
            return self.leases.scripts.acquire_precise(keys=keys, args=args)

        return ordered_index.with_resync(run, self.leases.client, k, members, recheck_refusals=True)

    def acquire(
        self,
        request_id: str,
        members: Membership,
        seed: int,
        exclude: Sequence[str],
        hashes: Sequence[int],
        model: str = "",
        cap: int = 0,
    ) -> PreciseReservation:
        """Pick and reserve a member of *members* not in *exclude* for a prompt whose vLLM
        block hashes are *hashes*; *seed* drives the random tie-breaks."""
        reply = self._call(request_id, members, seed, exclude, hashes, model, cap, dry=False)
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
        members: Membership,
        hashes: Sequence[int],
        model: str = "",
        cap: int = 0,
        exclude: Sequence[str] = (),
    ) -> dict[str, Any]:
        """What acquire would choose now, read-only: {"choice", "reason", "candidates"}
        (one candidate per member). Every member is read: a full recomputation."""
        reply = self._call("explain", members, 0, exclude, hashes, model, cap, True)
        return explain_reply(reply, "index_live", lambda live: live == "1")
