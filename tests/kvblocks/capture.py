"""The real vLLM 0.32 KV-event capture (/work/shared/data or tests/data), loaded once."""

from __future__ import annotations

import base64
import json
from functools import cache
from pathlib import Path
from typing import Any

NAME = "real_vllm_0.32_cpu_kv_events.jsonl"
_PLACES = [Path(__file__).resolve().parent.parent / "data" / NAME, Path("/work/shared/data") / NAME]


@cache
def rows() -> list[dict[str, Any]]:
    for place in _PLACES:
        if place.exists():
            return [json.loads(line) for line in place.read_text().splitlines() if line.strip()]
    raise FileNotFoundError(f"{NAME} not found in {', '.join(map(str, _PLACES))}")


def batches() -> list[dict[str, Any]]:
    return [row for row in rows() if row["kind"] == "decoded_batch"]


def raw_frames() -> dict[int, list[bytes]]:
    """seq -> [topic, seq, payload] frames exactly as captured off the wire."""
    out: dict[int, list[bytes]] = {}
    for row in rows():
        if row["kind"] == "raw_frame_b64":
            frames = out.setdefault(row["seq"], [b"", b"", b""])
            frames[row["frame_index"]] = base64.b64decode(row["b64"])
    return out
