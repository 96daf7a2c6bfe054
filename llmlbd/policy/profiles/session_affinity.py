"""session_affinity: a session's requests stay on one backend, within a load bound.

What vllm-router and sglang-router call consistent hashing, with bounded loads
(Mirrokni, Thorup and Zadimoghaddam): the session id (``lb_config.sessionHeader``,
else the OpenAI ``user`` field) hashes onto a ring of virtual nodes; a new session
takes the first backend clockwise whose in-flight count stays within
``loadFactor`` x the fleet's mean plus ``loadSlack`` requests. The choice is remembered in Redis
(``session:<digest>``, ``sessionTTL``), so a session moves only when its backend is
down, drained, excluded after a failure, or over the bound, and then stays where
it moved. Adding or removing a backend moves only the sessions whose ring
segment changed. Requests without a session go to the least-loaded backend.
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
from llmlbd.state.scripts import reply_text

__all__ = ["SessionAffinity", "HashRing", "session_of"]


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

    def order(self, key: str) -> list[str]:
        """Every backend once, in the order met walking clockwise from *key*'s point."""
        seen: dict[str, None] = {}
        if not self.points:
            return []
        start = bisect.bisect(self.points, _point(key))
        count = len(self.names)
        for step in range(count):
            seen.setdefault(self.names[(start + step) % count], None)
            if len(seen) == self.distinct:
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
        self._ring_of: tuple[tuple[str, float], ...] = ()
        self._ring = HashRing([], self.vnodes)

    def ring(self) -> HashRing:
        """The ring of the current members (rebuilt when membership changes)."""
        members = tuple((b.name, b.weight) for b in self.ctx.backends)
        if members != self._ring_of:
            self._ring = HashRing(list(self.ctx.backends), self.vnodes)
            self._ring_of = members
        return self._ring

    def _call(
        self, request: RoutingRequest, exclude: frozenset[str], dry: bool
    ) -> tuple[Any, str, list[str]]:
        """(the script's reply, the session id, the candidates in the order passed)."""
        ctx = self.ctx
        assert ctx.leases is not None
        session = session_of(request, self.header, self.from_user)
        if session:
            names = self.ring().order(session)
        else:
            names = [b.name for b in ctx.backends]
            if not dry:
                ctx.rng.shuffle(names)
        k = ctx.keys
        digest = hashlib.blake2b(session.encode(), digest_size=12).hexdigest()
        keys = [k.inflight, k.leases, k.workers, k.drained]
        keys += [k.session(digest)] if session else []
        keys += [k.backend(n) for n in names]
        args = [
            request.request_id,
            ctx.leases.worker_id,
            ctx.leases.ttl_ms,
            self.cap,
            request.model,
            len(names),
            repr(float(self.factor)),
            self.ttl_ms,
            "1" if session else "0",
            self.slack,
            "1" if dry else "0",
            *names,
            *(repr(float(ctx.by_name[n].weight)) for n in names),
            *("1" if n in exclude else "0" for n in names),
        ]
        return ctx.leases.scripts.acquire_session(keys=keys, args=args), session, names

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
        rows = {reply_text(r[0]): r for r in reply[3]}
        current = reply_text(reply[2])
        result.update(
            choice=reply_text(reply[0]),
            reason=reply_text(reply[1]),
            outcome={"status": 200},
            session=session or None,
            session_backend=current or None,
            score_meaning="ring order from the session's hash (1 = its first choice); a backend "
            "takes it while in flight + 1 <= bound",
            candidates=[
                {
                    "name": name,
                    "url": self.ctx.by_name[name].url,
                    "weight": self.ctx.by_name[name].weight,
                    "inflight": int(rows[name][1]),
                    "bound": int(rows[name][2]),
                    "removed_by": None
                    if reply_text(rows[name][3]) == "ok"
                    else reply_text(rows[name][3]),
                    "score": position + 1 if session else None,
                }
                for position, name in enumerate(names)
            ],
            note="dry run of acquire_session.lua"
            + ("" if session else "; without a session the least loaded wins, ties at random"),
        )
        return result
