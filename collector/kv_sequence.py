"""KV-event streams, the pure part: a batch's index operations, and what a seq means."""

from __future__ import annotations

from collections.abc import Sequence

from llmlbd.kvblocks import wire
from llmlbd.state.kv_index import tier_of

__all__ = ["batch_ops", "Sequencer"]


def batch_ops(events: Sequence[wire.Event]) -> tuple[list[str | int], int | None]:
    """kv_index_apply.lua's operations for *events*, in order, and the block size they carry."""
    ops: list[str | int] = []
    block_size = None
    for event in events:
        if isinstance(event, wire.Stored):
            ops += ["S", tier_of(event.medium), len(event.block_hashes), *event.block_hashes]
            block_size = event.block_size
        elif isinstance(event, wire.Removed):
            for block_hash in event.block_hashes:
                ops += ["R", tier_of(event.medium), block_hash]
        else:
            ops.append("C")
    return ops, block_size


class Sequencer:
    """What a received batch means for the stream: apply, gap, duplicate or restart."""

    def __init__(self) -> None:
        self.next: int | None = None  # None: anything goes (just cleared)
        self.last_ts = 0.0

    def classify(self, seq: int, ts: float) -> str:
        if self.next is None or seq == self.next:
            return "apply"
        if seq > self.next:
            return "gap"
        return "restart" if ts > self.last_ts else "duplicate"

    def applied(self, seq: int, ts: float) -> None:
        self.next = seq + 1
        self.last_ts = max(self.last_ts, ts)

    def reset(self) -> None:
        self.next = None
        self.last_ts = 0.0
