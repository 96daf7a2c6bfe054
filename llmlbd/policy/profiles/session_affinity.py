"""session_affinity: a session's requests stay on one backend, within a load bound.

What vllm-router and sglang-router call consistent hashing, with bounded loads
(Mirrokni, Thorup and Zadimoghaddam): the session id (``lb_config.sessionHeader``,
else the OpenAI ``user`` field) hashes onto a ring of virtual nodes; a new session
takes the first backend clockwise whose in-flight count stays within
``loadFactor`` x the fleet's mean plus ``loadSlack`` requests. Only the first
``RING_PREFIX`` distinct backends of the ring are tried; when none of them may take it,
the least-loaded eligible backend does (the ordered index), so a decision costs the
same at any pool size. The choice is remembered in Redis
(``session:<digest>``, ``sessionTTL``), so a session moves only when its backend is
down, drained, excluded after a failure, or over the bound, and then stays where
it moved. Adding or removing a backend moves only the sessions whose ring
segment changed. Requests without a session go to the least-loaded backend, random
among ties (as global_least_request).
One Lua script (state/lua/acquire_session.lua) decides and reserves atomically.
"""

from __future__ import annotations

import bisect
import hashlib
from typing import Any

from llmlbd.config.loader import Backend
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.framework import Decision
from llmlbd.policy.outcomes import no_route, no_route_outcome, refuse_empty_pool
from llmlbd.request import RoutingRequest
from llmlbd.state.ordered_index import Membership, index_keys, with_resync
from llmlbd.state.scripts import reply_text

__all__ = ["SessionAffinity", "HashRing", "session_of", "RING_PREFIX"]

# Distinct backends of a session's ring order passed to the script: the session's next
# homes when its backend cannot take it; past them, the least-loaded backend.
RING_PREFIX = 16


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Virtual nodes of every backend (``vnodes`` x weight) on a 64-bit ring."""

    def __init__(self, backends: list[Backend], vnodes: int) -> None:
        points = []
        for backend in backends:
            for index in range(max(1, round(vnodes * backend.weight))):
                points.append((_point(f"{backend.name}#{index}"), backend.name))
        points.sort()
        self.points = [p for p, _ in points]
        self.names = [n for _, n in points]
        self.distinct = len(set(self.names))

    def order(self, key: str, limit: int | None = None) -> list[str]:
        """Every backend once (the first *limit* of them), in the order met walking
        clockwise from *key*'s point."""
        seen: dict[str, None] = {}
        if not self.points:
            return []
        want = self.distinct if limit is None else min(limit, self.distinct)
        start = bisect.bisect(self.points, _point(key))
        count = len(self.names)
        for step in range(count):
            seen.setdefault(self.names[(start + step) % count], None)
            if len(seen) == want:
                break
        return list(seen)


def session_of(request: RoutingRequest, header: str, from_user: bool) -> str:
    """The request's session id ('' when it has none)."""
    value = request.headers.get(header.lower(), "").strip()
    if not value and from_user and isinstance(request.body, dict):
        user = request.body.get("user")
        value = user.strip() if isinstance(user, str) else ""
    return value


class SessionAffinity:
    name = "session_affinity"

    def __init__(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        lb = ctx.lb_config
        self.cap = lb.maxRequestCount
        self.header = lb.sessionHeader
        self.from_user = lb.sessionFromUser
        self.ttl_ms = lb.sessionTTL * 1000
        self.factor = lb.loadFactor
        self.vnodes = lb.virtualNodes
        self.slack = lb.loadSlack
        self._ring_of: Membership | None = None
        self._ring = HashRing([], self.vnodes)

    def ring(self) -> HashRing:
        """The ring of the current members (rebuilt when membership changes)."""
        members = self.ctx.membership  # a new object on every membership change
        if members is not self._ring_of:
            self._ring = HashRing(list(self.ctx.backends), self.vnodes)
            self._ring_of = members
        return self._ring

    def _call(
        self, request: RoutingRequest, exclude: frozenset[str], dry: bool
    ) -> tuple[Any, str, list[str]]:
        """(the script's reply, the session id, the ring backends passed)."""
        ctx = self.ctx
        assert ctx.leases is not None
        leases = ctx.leases
        session = session_of(request, self.header, self.from_user)
        names = self.ring().order(session, RING_PREFIX) if session else []
        k = ctx.keys
        members = ctx.membership
        keys = [k.inflight, k.leases, k.workers, k.drained, *index_keys(k, request.model)]
        keys.append(k.index_sum)
        if session:
            keys.append(k.session(hashlib.blake2b(session.encode(), digest_size=12).hexdigest()))
        args = [
            request.request_id,
            leases.worker_id,
            leases.ttl_ms,
            self.cap,
            request.model,
            members.digest,
            ctx.rng.getrandbits(31),
            repr(float(self.factor)),
            self.ttl_ms,
            "1" if session else "0",
            self.slack,
            "1" if dry else "0",
            len(names),
            *names,
            *sorted(exclude),
        ]

        def run() -> Any:
            return leases.scripts.acquire_session(keys=keys, args=args)

        return with_resync(run, leases.client, k, members), session, names

    def pick(self, request: RoutingRequest, exclude: frozenset[str]) -> Decision:
        ctx = self.ctx
        refuse_empty_pool((b.name for b in ctx.backends), exclude, request)
        # The members as of now: the Redis call below yields, and the membership may change
        # meanwhile (set_backends); the reply names a member of this view.
        by_name = ctx.by_name
        reply, session, names = self._call(request, exclude, dry=False)
        if not reply[0]:
            raise no_route(reply_text(reply[1]), request)
        backend = reply_text(reply[0])
        return Decision(
            by_name[backend],
            request.request_id,
            self.name,
            reason=reply_text(reply[2]),
            inflight=int(reply[1]),
            details={"session": bool(session), "ring_first": names[0] if session else None},
        )

    def explain(self, request: RoutingRequest) -> dict[str, Any]:
        """Where *request* would go now and why, read-only (a dry run of the same script)."""
        result: dict[str, Any] = {"policy": self.name, "exact": True, "ties": [], "choice": None}
        if not self.ctx.backends:
            result["outcome"] = no_route_outcome("empty", request)
            return result
        reply, session, names = self._call(request, frozenset(), dry=True)
        if not reply[0]:
            result["outcome"] = no_route_outcome(reply_text(reply[1]), request)
            return result
        ring_rank = {name: position for position, name in enumerate(names)}
        current = reply_text(reply[2])
        result.update(
            choice=reply_text(reply[0]),
            reason=reply_text(reply[1]),
            outcome={"status": 200},
            session=session or None,
            session_backend=current or None,
            score_meaning=f"ring order from the session's hash (1 = its first choice; the "
            f"first {RING_PREFIX} are tried, then the least loaded); a backend takes it while "
            "in flight + 1 <= bound",
            candidates=[
                {
                    "name": name,
                    "url": self.ctx.by_name[name].url,
                    "weight": self.ctx.by_name[name].weight,
                    "inflight": int(row[1]),
                    "bound": int(row[2]),
                    "removed_by": None if reply_text(row[3]) == "ok" else reply_text(row[3]),
                    "score": ring_rank[name] + 1 if name in ring_rank else None,
                }
                for row in reply[3]
                for name in [reply_text(row[0])]
            ],
            note="dry run of acquire_session.lua (the backends it looked at)"
            + ("" if session else "; without a session the least loaded wins, ties at random"),
        )
        return result
