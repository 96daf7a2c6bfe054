"""Pool membership in Redis: the `members` HASH, name -> JSON {"url", "weight"}.

The config file's `backends` list is only the seed: while the hash does not
exist, everyone uses the seed; once `llmlbctl backend add/remove` has
written it, it is the truth for every worker and replica, which re-read it
every second.
"""

from __future__ import annotations

import json
from typing import Any

from llmlbd.config.loader import Backend

__all__ = ["encode", "decode", "read_members"]


def encode(backend: Backend) -> str:
    return json.dumps({"url": backend.url, "weight": backend.weight}, sort_keys=True)


def decode(name: str, raw: str) -> Backend | None:
    """The Backend an entry describes, or None when it is not valid JSON {"url", "weight"}."""
    try:
        data = json.loads(raw)
        return Backend(name, str(data["url"]), float(data.get("weight", 1.0)))
    except (ValueError, TypeError, KeyError):
        return None


def read_members(client: Any, key: str) -> dict[str, Backend] | None:
    """The members hash as name -> Backend (in name order), or None when it does not exist."""
    raw = client.hgetall(key)
    if not raw:
        return None
    members = {}
    for name in sorted(raw):
        backend = decode(name, raw[name])
        if backend is not None:
            members[name] = backend
    return members
