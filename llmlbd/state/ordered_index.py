"""The ordered index of eligible backends: one decision in O(log n), not O(pool size).

Every eligible member (not drained, not down, not ejected) is scored by in-flight / weight
in ZSETs per pool and model (see lua/_lib.lua and docs/redis-keys.md). The
scripts that change in-flight counts, health, model lists or the drained set
keep it in step atomically. Membership lives partly in each worker's config
(the seed), so the index records the membership it was built from as a
digest: an acquire made with another digest answers "resync", and the worker
rebuilds the index from its membership (`sync`), which also heals an index
Redis lost (FLUSHALL, restart without persistence).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llmlbd.state.keys import PoolKeys
from llmlbd.state.scripts import ScriptSet, reply_text

__all__ = ["Membership", "sync", "with_resync", "index_keys", "read_index"]


@dataclass(frozen=True)
class Membership:
    """A pool's members as one worker sees them, and the digest that names that view."""

    names: tuple[str, ...]
    weights: tuple[float, ...]
    digest: str

    @classmethod
    def of(cls, names: Sequence[str], weights: Sequence[float]) -> Membership:
        pairs = sorted(zip(names, (float(w) for w in weights)))
        text = "\n".join(f"{name} {weight!r}" for name, weight in pairs)
        digest = hashlib.sha1(text.encode()).hexdigest()[:16]
        return cls(tuple(n for n, _ in pairs), tuple(w for _, w in pairs), digest)


def sync(client: Any, keys: PoolKeys, membership: Membership) -> int:
    """Record *membership* and rebuild the index from it; returns how many are eligible."""
    args: list[str] = [membership.digest]
    for name, weight in zip(membership.names, membership.weights):
        args += (name, repr(weight))
    return int(
        ScriptSet(client).index_sync(
            keys=[keys.inflight, keys.drained, keys.index_weights], args=args
        )
    )


def with_resync(
    run: Callable[[], Any],
    client: Any,
    keys: PoolKeys,
    membership: Membership,
    recheck_refusals: bool = False,
) -> Any:
    """The reply of *run* (an acquire script that answers {false, 'resync'} when the index
    follows another membership, or is lost): rebuilt from *membership* and retried. A
    worker whose view differs (mid-rollout) may rebuild it back: a few rounds at most,
    then {false, 'none'}.

    With *recheck_refusals* (the prefix scripts, which take every candidate from the
    index), a refusal 'none' or 'model' rebuilds the index once more and retries: a
    backend made eligible behind the scripts' back (a direct write) is not indexed yet."""
    reply = _resynced(run, client, keys, membership)
    if recheck_refusals and not reply[0] and reply_text(reply[1]) in ("none", "model"):
        sync(client, keys, membership)
        reply = _resynced(run, client, keys, membership)
    return reply


def _resynced(run: Callable[[], Any], client: Any, keys: PoolKeys, membership: Membership) -> Any:
    for _ in range(3):
        reply = run()
        if reply[0] or reply_text(reply[1]) != "resync":
            return reply
        sync(client, keys, membership)
    return [False, "none"]


def index_keys(keys: PoolKeys, model: str) -> list[str]:
    """The index keys acquire_least_request.lua declares (KEYS[5..8]) for *model*."""
    return [keys.index_weights, keys.index_model(model), keys.index_any_model, keys.index_all]


def read_index(client: Any, keys: PoolKeys) -> dict[str, dict[str, float]]:
    """Every index ZSET as key -> {backend: score} (for tests and `llmlbctl` inspection)."""
    placed = client.hgetall(keys.index_placed)
    zsets = {keys.index_all, keys.index_any_model}
    for models in placed.values():
        text = models.decode() if isinstance(models, bytes) else models
        if text != "*":
            zsets |= {keys.index_model(m) for m in text.split(",") if m}
    result = {}
    for zset in sorted(zsets):
        pairs = client.zrange(zset, 0, -1, withscores=True)
        if pairs:
            result[zset] = {(n.decode() if isinstance(n, bytes) else n): s for n, s in pairs}
    return result
