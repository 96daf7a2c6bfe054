"""Pool membership in Redis: the `members` HASH, name -> JSON {"url", "weight"}.

The config file's `backends` list is only the seed: while the hash does not
exist, everyone uses the seed; once `llmlbctl backend add/remove` has
written it, it is the truth for every worker and replica, which re-read it
every second.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import redis

from llmlbd.state.keys import PoolKeys
from llmlbd.state.scripts import ScriptSet
from llmlbd.state.types import Backend

__all__ = [
    "encode",
    "decode",
    "read_members",
    "effective_backends",
    "change_members",
    "set_drained",
    "MembersError",
]


class MembersError(Exception):
    """A membership change that cannot be made (the message says why)."""


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


def effective_backends(
    client: Any, keys: PoolKeys, seed: Sequence[Backend]
) -> tuple[list[Backend], str]:
    """The pool's backends and where the list came from.

    "redis": the members hash; "config": the config's seed; "discovered": the
    config lists none (e.g. `llmlbd start`'s demo backends) and the hash does
    not exist, so the names come from the collector's backend hashes and the
    in-flight counts.
    """
    members = read_members(client, keys.members)
    if members is not None:
        return list(members.values()), "redis"
    if seed:
        return list(seed), "config"
    prefix = keys.backend("")
    names = {key[len(prefix) :] for key in client.scan_iter(match=keys.backend("*"), count=1000)}
    names |= set(client.hkeys(keys.inflight))
    found = []
    for name in sorted(names):
        url = client.hget(keys.backend(name), "url") or ""
        found.append(Backend(name, url, 1.0))
    return found, "discovered"


def change_members(
    client: Any,
    key: str,
    seed: Sequence[Backend],
    change: Callable[[dict[str, Backend]], dict[str, Backend]],
) -> dict[str, Backend]:
    """Apply *change* to the current membership atomically (WATCH/MULTI, retried on conflict).

    *change* gets the members (the config's seed when the hash does not
    exist) and returns the new members; it may raise MembersError. The whole
    hash is rewritten, so the seed and the change land together.
    """
    for _ in range(20):
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                raw = pipe.hgetall(key)
                if raw:
                    current = {n: b for n in sorted(raw) if (b := decode(n, raw[n])) is not None}
                else:
                    current = {b.name: b for b in seed}
                new = change(dict(current))
                if not new:
                    raise MembersError(
                        "a pool cannot have no backend (an empty members hash "
                        "would make every worker fall back to the config's seed)"
                    )
                pipe.multi()
                pipe.delete(key)
                pipe.hset(key, mapping={name: encode(b) for name, b in new.items()})
                pipe.execute()
                return new
            except redis.exceptions.WatchError:
                continue
    raise MembersError(f"{key} kept changing under us; try again")


def set_drained(client: Any, keys: PoolKeys, name: str, drained: bool) -> bool:
    """Drain (or undrain) *name* for every worker and replica; True when that changed anything.

    One script changes the drained set and moves the backend out of (or back into)
    the ordered index together (llmlbd.state.ordered_index).
    """
    reply = ScriptSet(client).index_drain(
        keys=[keys.drained, keys.inflight], args=[name, "1" if drained else "0"]
    )
    return bool(reply)
