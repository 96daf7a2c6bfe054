"""In-flight reservations as leases: exact counts that survive crashes.

Every request that reaches a backend holds one lease (``leases`` HASH:
request id -> "backend worker since_ms"); the ``inflight`` HASH counts them
per backend and is changed only by the scripts, atomically with the lease.
A worker renews its heartbeat (``workers`` ZSET) every second; when it dies,
`reap` drops its leases and recounts, so a SIGKILLed worker stops counting
within the lease TTL plus one reap period. Release is idempotent (keyed by
request id), so no path can count a request twice or go negative.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmlbd.state import ordered_index
from llmlbd.state.keys import PoolKeys
from llmlbd.state.ordered_index import Membership
from llmlbd.state.outlier import DEFAULT_OUTLIER, OutlierParams, Released
from llmlbd.state.scripts import ScriptSet, reply_text

__all__ = ["Reservation", "Leases", "new_worker_id", "reap"]


def new_worker_id() -> str:
    """Unique across hosts and pid reuse: host:pid:random."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Reservation:
    """The outcome of an acquire script: a backend, or why there is none."""

    backend: str | None
    inflight: int = 0
    reason: str = ""

    @classmethod
    def from_reply(cls, reply: Sequence[Any]) -> Reservation:
        first, second = reply[0], reply[1]
        if not first:
            return cls(None, 0, reply_text(second))
        return cls(reply_text(first), int(second))


class Leases:
    """The lease scripts of one pool, bound to one client and one worker id."""

    def __init__(
        self,
        client: Any,
        keys: PoolKeys,
        worker_id: str,
        ttl_ms: int,
        outlier: OutlierParams = DEFAULT_OUTLIER,
    ) -> None:
        self.client = client
        self.keys = keys
        self.worker_id = worker_id
        self.ttl_ms = ttl_ms
        self.outlier = outlier
        self.scripts = ScriptSet(client)

    def acquire_least_request(
        self,
        request_id: str,
        members: Membership,
        seed: int,
        model: str = "",
        cap: int = 0,
        exclude: Sequence[str] = (),
    ) -> Reservation:
        """Reserve the least-loaded eligible member not in *exclude* (O(log n), see
        ordered_index); *seed* drives the random tie-break."""
        k = self.keys
        keys = [k.inflight, k.leases, k.workers, k.drained, *ordered_index.index_keys(k, model)]
        args = [request_id, self.worker_id, self.ttl_ms, cap, model, members.digest, seed]
        args += exclude

        def run() -> Any:
            return self.scripts.acquire_least_request(keys=keys, args=args)

        return Reservation.from_reply(ordered_index.with_resync(run, self.client, k, members))

    def acquire(self, request_id: str, name: str, model: str = "", cap: int = 0) -> Reservation:
        """Reserve *name*, chosen by the caller, unless it is down, drained, ejected or full
        (a request id that holds a lease already gets that lease, whatever *name*)."""
        k = self.keys
        keys = [k.inflight, k.leases, k.workers, k.drained, k.backend(name)]
        args = [request_id, self.worker_id, self.ttl_ms, cap, model, name]
        return Reservation.from_reply(self.scripts.acquire_backend(keys=keys, args=args))

    def release(self, request_id: str, outcome: str = "") -> Released:
        """Give the request's slot back and record *outcome* for outlier ejection ("ok", a
        kind of outlier.FAILURES, or "" for none); falsy if it had no slot (already
        released or reaped)."""
        keys, args = self._release_call(request_id, outcome)
        return Released.from_reply(self.scripts.release(keys=keys, args=args))

    def release_many(self, calls: Sequence[tuple[str, str]]) -> list[Released]:
        """`release(*call)` for each of *calls* (request id, outcome), sent together (one
        pipeline, one round trip).

        Each release is its own script run, as alone; a failure raises for the whole
        batch, and the caller retries them all (release is idempotent).
        """
        if len(calls) == 1 or _is_cluster(self.client):
            return [self.release(*call) for call in calls]
        script = self.scripts.release
        many = getattr(script, "many", None)
        if many is not None:  # DirectScripts: one write on a connection of its own
            replies = many([self._release_call(*call) for call in calls])
        else:
            pipe = self.client.pipeline(transaction=False)
            for call in calls:
                keys, args = self._release_call(*call)
                script(keys=keys, args=args, client=pipe)
            replies = pipe.execute()
        return [Released.from_reply(reply) for reply in replies]

    def _release_call(self, request_id: str, outcome: str = "") -> tuple[list[str], list[Any]]:
        """The keys and arguments of release.lua for one request (the one place they are built)."""
        k = self.keys
        return [k.inflight, k.leases], [request_id, outcome, *self.outlier.args()]

    def own(self) -> set[str]:
        """The request ids this worker holds a lease for, as Redis has them."""
        held = self.client.hgetall(self.keys.leases)
        return {
            reply_text(request_id)
            for request_id, lease in held.items()
            if reply_text(lease).split(" ", 2)[1:2] == [self.worker_id]
        }

    def heartbeat(self) -> int:
        """Keep this worker's leases alive for another TTL; returns the deadline (ms)."""
        return int(
            self.scripts.heartbeat(keys=[self.keys.workers], args=[self.worker_id, self.ttl_ms])
        )

    def reap(self, recount: bool = False) -> tuple[int, int]:
        return reap(self.client, self.keys, recount=recount)

    def retire(self) -> tuple[int, int]:
        """This worker is stopping: drop whatever it still holds, now."""
        return reap(self.client, self.keys, dead_worker=self.worker_id)


def _is_cluster(client: Any) -> bool:
    # A Cluster client's pipeline is per slot and has no script cache: release one by one.
    # Any class in the MRO: state/client.py builds a subclass of RedisCluster. (By name:
    # the gunicorn master imports this module and must not import the client library.)
    return any(cls.__name__ == "RedisCluster" for cls in type(client).__mro__)


def reap(
    client: Any, keys: PoolKeys, dead_worker: str = "", recount: bool = False
) -> tuple[int, int]:
    """Drop the leases of workers whose heartbeat expired (or *dead_worker*) and recount.

    Returns (leases reaped, workers found dead). With *recount*, the in-flight
    counts are rebuilt from the live leases even when no worker died, which
    repairs any drift (the collector does this periodically).
    """
    reply = ScriptSet(client).reap(
        keys=[keys.inflight, keys.leases, keys.workers], args=[dead_worker, "1" if recount else "0"]
    )
    return int(reply[0]), int(reply[1])
