"""vLLM's KV-event wire format (``vllm/distributed/kv_events.py``), both directions.

A PUB message has three frames: ``[topic, seq (8-byte big-endian), payload]``.
The payload is a msgpack array ``[ts, events, data_parallel_rank]`` whose
events are maps tagged by ``"type"`` (vLLM 0.28+; older releases sent tagged
arrays, which `decode_batch` also reads). The replay socket (ROUTER) answers a
DEALER's ``[b"", start_seq]`` with one message per buffered batch from that seq
on, then an end marker whose seq is -1. vLLM 0.32 sends
``[b"", topic, seq, payload]``; older releases left the topic out, so a reply is
read from its last two frames.

Only msgpack is needed (no llmlbd imports): the simulator encodes with it and
the collector decodes with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmlbd.kvblocks.optional import require

msgpack = require("msgpack")

__all__ = [
    "END_SEQ",
    "Stored",
    "Removed",
    "Cleared",
    "Event",
    "Batch",
    "WireError",
    "block_stored",
    "block_removed",
    "all_blocks_cleared",
    "encode_batch",
    "decode_batch",
    "seq_bytes",
    "read_seq",
    "replay_request",
    "read_replay",
]

END_SEQ = (-1).to_bytes(8, "big", signed=True)
DEFAULT_MEDIUM = "GPU"


class WireError(ValueError):
    """A frame or payload that is not a vLLM KV-event batch."""


@dataclass(frozen=True)
class Stored:
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_name: str | None = None
    medium: str = DEFAULT_MEDIUM


@dataclass(frozen=True)
class Removed:
    block_hashes: list[int]
    medium: str = DEFAULT_MEDIUM


@dataclass(frozen=True)
class Cleared:
    pass


Event = Stored | Removed | Cleared


@dataclass(frozen=True)
class Batch:
    ts: float
    events: list[Event] = field(default_factory=list)
    data_parallel_rank: int = 0


# -- encoding (the simulator) ------------------------------------------------------------


def block_stored(
    block_hashes: Sequence[int],
    parent_block_hash: int | None,
    token_ids: Sequence[int],
    block_size: int,
    lora_name: str | None = None,
    extra_keys: Sequence[Any] | None = None,
    medium: str = DEFAULT_MEDIUM,
) -> dict[str, Any]:
    """A BlockStored map, fields in vLLM 0.32's order (fields without a default are sent as nil)."""
    return {
        "type": "BlockStored",
        "block_hashes": list(block_hashes),
        "parent_block_hash": parent_block_hash,
        "token_ids": list(token_ids),
        "block_size": block_size,
        "lora_id": None,
        "medium": medium,
        "lora_name": lora_name,
        "extra_keys": list(extra_keys) if extra_keys is not None else [None] * len(block_hashes),
        "group_idx": 0,
        "kv_cache_spec_kind": "full_attention",
    }


def block_removed(block_hash: int, medium: str = DEFAULT_MEDIUM) -> dict[str, Any]:
    """One BlockRemoved map per evicted block, as vLLM sends them."""
    return {"type": "BlockRemoved", "block_hashes": [block_hash], "medium": medium, "group_idx": 0}


def all_blocks_cleared() -> dict[str, Any]:
    return {"type": "AllBlocksCleared"}


def encode_batch(ts: float, events: Sequence[dict[str, Any]], data_parallel_rank: int = 0) -> bytes:
    return msgpack.packb([float(ts), list(events), data_parallel_rank])  # type: ignore[no-any-return]


def seq_bytes(seq: int) -> bytes:
    return seq.to_bytes(8, "big", signed=seq < 0)


# -- decoding (the collector) ------------------------------------------------------------


def read_seq(frame: bytes) -> int:
    if len(frame) != 8:
        raise WireError(f"sequence frame has {len(frame)} bytes, expected 8")
    return int.from_bytes(frame, "big", signed=True)


def _ints(value: Any, what: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(x, int) for x in value):
        raise WireError(f"{what} must be a list of integers")
    return value


def _medium(value: Any) -> str:
    return value.upper() if isinstance(value, str) and value else DEFAULT_MEDIUM


def _event(raw: Any) -> Event | None:
    """One event; None for a type this reader does not know (newer vLLM), which is skipped."""
    if isinstance(raw, list) and raw and isinstance(raw[0], str):
        # Pre-0.28 tagged array: [tag, block_hashes, parent, token_ids, block_size, lora_id, medium]
        names = ["type", "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id"]
        if raw[0] == "BlockRemoved":
            names = ["type", "block_hashes", "medium"]
        else:
            names += ["medium", "lora_name"]
        raw = dict(zip(names, raw))
    if not isinstance(raw, dict):
        raise WireError("an event must be a map tagged by 'type'")
    kind = raw.get("type")
    if kind == "BlockStored":
        block_size = raw.get("block_size")
        if not isinstance(block_size, int) or block_size < 1:
            raise WireError("BlockStored without a positive block_size")
        parent = raw.get("parent_block_hash")
        if parent is not None and not isinstance(parent, int):
            raise WireError("parent_block_hash must be an integer or nil")
        lora = raw.get("lora_name")
        return Stored(
            _ints(raw.get("block_hashes"), "block_hashes"),
            parent,
            _ints(raw.get("token_ids") or [], "token_ids"),
            block_size,
            lora if isinstance(lora, str) else None,
            _medium(raw.get("medium")),
        )
    if kind == "BlockRemoved":
        return Removed(_ints(raw.get("block_hashes"), "block_hashes"), _medium(raw.get("medium")))
    if kind == "AllBlocksCleared":
        return Cleared()
    if isinstance(kind, str):
        return None
    raise WireError("an event must be a map tagged by 'type'")


def decode_batch(payload: bytes) -> Batch:
    """A KVEventBatch payload; raises WireError when it is not one."""
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"payload is not msgpack: {exc}") from None
    if not isinstance(raw, list) or len(raw) < 2 or not isinstance(raw[1], list):
        raise WireError("payload must be [ts, events, data_parallel_rank]")
    ts = raw[0]
    if not isinstance(ts, (int, float)):
        raise WireError("batch timestamp must be a number")
    rank = raw[2] if len(raw) > 2 and isinstance(raw[2], int) else 0
    events = [e for e in (_event(item) for item in raw[1]) if e is not None]
    return Batch(float(ts), events, rank)


def replay_request(start_seq: int) -> list[bytes]:
    """What a DEALER sends to the replay socket: every buffered batch from *start_seq* on."""
    return [b"", seq_bytes(start_seq)]


def read_replay(frames: Sequence[bytes]) -> tuple[int, bytes] | None:
    """(seq, payload) of one replay reply, or None for the end marker."""
    if len(frames) < 3:
        raise WireError(f"replay reply has {len(frames)} frames, expected 3 or 4")
    seq = read_seq(frames[-2])
    if seq < 0:
        return None
    return seq, frames[-1]
