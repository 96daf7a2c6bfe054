"""Pool membership in Redis: the `members` HASH, name -> JSON {"url", "weight"}.

Semantics (documented in docs/operations.md): the config file's `backends`
list is only the seed. When the hash does not exist, proxy workers (and
llmlbctl) use the config's list, and the first change made here writes the
seed and the change together, in one transaction, so adding one backend
never drops the others. Once the hash exists it is the truth for every
worker and replica, which re-read it every second. The last member cannot be
removed: an empty hash does not exist in Redis, and the workers would fall
back to the config's seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis

from llmlbd.config.loader import Backend
from llmlbd.state.keys import PoolKeys
from llmlbd.state.members import decode as _decode
from llmlbd.state.members import encode, read_members

__all__ = [
    "read_members",
    "effective_backends",
    "encode",
    "change_members",
    "MembersError",
    "SOURCES",
]

# Where effective_backends found the list, in words.
SOURCES = {
    "redis": "the Redis members hash",
    "config": "the config file (the members hash does not exist yet)",
    "discovered": "the backends seen in Redis (the config lists none and the members hash "
    "does not exist)",
}


class MembersError(Exception):
    """A membership change that cannot be made (the message says why)."""


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
                    current = {n: b for n in sorted(raw) if (b := _decode(n, raw[n])) is not None}
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
