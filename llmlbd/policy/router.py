"""The proxy's only door into routing: pick, release, and keep the worker's state healthy.

The Router runs the configured policy while Redis answers and the local
least-request fallback while it does not (behind a circuit breaker), and it
makes release reliable: a release that fails because Redis is down is kept
and retried by `maintain()`, which a worker calls about once a second.

After a Redis failover the promoted replica may lack the last writes of the
old master (replication is asynchronous): a release acknowledged there can
be lost, and the lease of a request that ended stays counted under this
live worker, which the reaper never touches; an acquire can be lost too, and
an outage longer than the lease TTL lets a reaper drop the leases of this
live worker. So `maintain()` audits: after any Redis error, and every
`AUDIT_EVERY_S` anyway, it releases every lease Redis holds for this worker
that no request of it holds, and takes again the leases its requests hold
that Redis lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from llmlbd.errors import LLMLBError
from llmlbd.policy.fallback import LocalLeastRequest
from llmlbd.policy.framework import Decision, Policy
from llmlbd.request import RoutingRequest
from llmlbd.state.breaker import Breaker
from llmlbd.state.client import REDIS_ERRORS
from llmlbd.state.health import unavailable
from llmlbd.state.leases import Leases
from llmlbd.state.outlier import Released

# REDIS_ERRORS is re-exported for llmlbd.server, which imports it from here.
__all__ = ["Router", "REDIS_ERRORS"]

log = structlog.get_logger("llmlbd.router")

# How long a timed-out acquire is still released by maintain(): longer than a
# Redis stall the breaker rides out, short enough that a retry of the same
# request id after recovery is not cut short for long.
UNSURE_FOR_S = 10.0
# How often maintain() audits this worker's leases when no Redis error asked for it sooner.
AUDIT_EVERY_S = 60.0


class Router:
    def __init__(
        self,
        policy: Policy,
        fallback: LocalLeastRequest,
        leases: Leases,
        breaker: Breaker,
        reap_every_s: float = 2.0,
        observer: Any = None,
    ) -> None:
        self.policy = policy
        self.fallback = fallback
        self.leases = leases
        self.breaker = breaker
        self.reap_every_s = reap_every_s
        self.pending_releases: set[str] = set()
        # Acquires that timed out: request id -> when to stop releasing it (monotonic).
        self.unsure_acquires: dict[str, float] = {}
        self._last_reap = 0.0
        # Request id -> backend of every lease held ("" while its pick is under way).
        self.holding: dict[str, str] = {}
        self.audit_every_s = AUDIT_EVERY_S
        self._audit_due = False
        self._last_audit = time.monotonic()
        # Optional callbacks for metrics: redis_error(op), fallback().
        self.observer = observer
        # Deferred releases (see defer_releases): the arguments of Leases.release, in order.
        self.queued_releases: list[tuple[str, str]] = []
        # Their request ids, so that pick() finds a retry's queued release without a scan.
        self._queued_ids: set[str] = set()
        self._wake_sender: Callable[[], None] | None = None

    def defer_releases(self, wake: Callable[[], None]) -> None:
        """From now on `release()` queues and returns; *wake* is called when the queue
        stops being empty, and the caller's sender then calls `send_releases()`.

        The proxy worker does this so that no response and no next request on a
        kept-alive connection waits for a release's reply, and releases that pile up
        under load leave in one pipeline. A queued release that fails is kept in
        pending_releases and retried by maintain(); the lease TTL and the reaper
        remain the safety net for a worker that dies with releases queued.
        """
        self._wake_sender = wake

    def _redis_failed(self, op: str, exc: Exception) -> None:
        self._audit_due = True
        opened = self.breaker.failure()
        if self.observer:
            self.observer.redis_error(op)
        if opened:
            log.warning(
                "redis_unavailable",
                op=op,
                error=str(exc) or type(exc).__name__,
                fallback=self.fallback.name,
                retry_in_s=self.breaker.reset_s,
            )

    def pick(self, request: RoutingRequest, exclude: frozenset[str] = frozenset()) -> Decision:
        if request.request_id in self._queued_ids:
            # A retry of this request: its failed attempt's lease must go first (the
            # acquire script never counts one request id twice).
            self.send_releases()
        if self.breaker.allow():
            started = time.perf_counter()
            self.holding[request.request_id] = ""
            try:
                decision = self.policy.pick(request, exclude)
            except REDIS_ERRORS as exc:
                self.holding.pop(request.request_id, None)
                self._redis_failed("pick", exc)
                # A timed-out acquire may still run once Redis wakes up (a slow or
                # paused server executes what sat in its socket, in no set order
                # with newer connections): keep releasing it for a while, or that
                # slot stays counted under this live worker forever. Releasing a
                # lease that never landed is a no-op.
                self.unsure_acquires[request.request_id] = time.monotonic() + UNSURE_FOR_S
            except LLMLBError:
                self.holding.pop(request.request_id, None)
                self.breaker.success()
                raise
            else:
                self.holding[decision.request_id] = decision.backend.name
                if self.breaker.state != "closed":
                    log.info("redis_recovered")
                self.breaker.success()
                if self.observer:
                    self.observer.redis_call("pick", time.perf_counter() - started)
                    self.observer.decided(decision.details)
                return decision
        if self.observer:
            self.observer.fallback()
        return self.fallback.pick(request, exclude)

    def release(self, decision: Decision, outcome: str = "") -> None:
        """Give the slot back, exactly once, recording how the backend did (*outcome*: "ok",
        a kind of state.outlier.FAILURES, or "" when it was not the backend's doing);
        never raises. A release retried by maintain() records no outcome."""
        if decision.local:
            self.fallback.release(decision.request_id)
            return
        self.holding.pop(decision.request_id, None)
        call = (decision.request_id, outcome)
        if self._wake_sender is None:
            self._send([call])
            return
        self.queued_releases.append(call)
        self._queued_ids.add(decision.request_id)
        if len(self.queued_releases) == 1:
            self._wake_sender()

    def send_releases(self) -> None:
        """Send every queued release (together); failures are kept for maintain()."""
        while self.queued_releases:
            batch, self.queued_releases = self.queued_releases, []
            self._queued_ids = set()
            self._send(batch)

    def _send(self, calls: list[tuple[str, str]]) -> None:
        started = time.perf_counter()
        try:
            results = self.leases.release_many(calls)
        except REDIS_ERRORS as exc:
            self._redis_failed("release", exc)
            self.pending_releases.update(call[0] for call in calls)
        except Exception:
            # Never lose a release: this worker heartbeats, so the reaper would not free it.
            log.exception("release_failed")
            self.pending_releases.update(call[0] for call in calls)
        else:
            if self.observer:
                self.observer.redis_call("release", time.perf_counter() - started)
            for (request_id, _), released in zip(calls, results):
                if released.event:
                    self._outlier_event(released, request_id)

    def _outlier_event(self, released: Released, request_id: str) -> None:
        """One log line per ejection and per return, from the worker whose release caused it."""
        if released.event == "ejected":
            log.warning(
                "backend_ejected",
                backend=released.backend,
                kind=released.kind,
                failures=released.streak,
                ejections_in_a_row=released.level,
                cooldown_s=released.cooldown_ms / 1000,
                request_id=request_id,
            )
        else:
            log.info(
                "backend_returned",
                backend=released.backend,
                after_ejections=released.level,
                last_failure=released.kind,
                probe_request_id=request_id,
            )
        if self.observer:
            self.observer.outlier(released.event, released.backend, released.kind)

    def maintain(self) -> None:
        """Heartbeat, retry failed releases, reap dead workers' leases, refresh health."""
        self.send_releases()  # normally done at once by the worker's sender
        try:
            self.leases.heartbeat()
            for request_id in list(self.pending_releases):
                self.leases.release(request_id)
                self.pending_releases.discard(request_id)
            now = time.monotonic()
            for request_id, until in list(self.unsure_acquires.items()):
                if self.leases.release(request_id) or now > until:
                    del self.unsure_acquires[request_id]
            now = time.monotonic()
            if now - self._last_reap >= self.reap_every_s:
                self._last_reap = now
                self.leases.reap()
            self._refresh_unavailable()
            if self._audit_due or now - self._last_audit >= self.audit_every_s:
                self._audit()
        except REDIS_ERRORS as exc:
            self._redis_failed("maintain", exc)
        else:
            if self.breaker.state != "closed":
                # maintain() itself just proved Redis answers: route globally again now.
                log.info("redis_recovered")
                self.breaker.success()

    def _audit(self) -> None:
        """Make Redis hold exactly the leases of this worker's requests: release the leases
        no request holds, take again those Redis lost (a lost acquire, or a reaper that
        declared this worker dead while it could not heart-beat)."""
        self._audit_due = False
        self._last_audit = time.monotonic()
        own = self.leases.own()
        queued = {request_id for request_id, _ in self.queued_releases}
        keep = set(self.holding) | self.pending_releases | set(self.unsure_acquires) | queued
        released = restored = 0
        for request_id in own - keep:
            # A pick that began meanwhile holds its own, new request id: never one of these.
            if request_id not in self.holding and self.leases.release(request_id):
                released += 1
        for request_id, backend in list(self.holding.items()):
            # Checked just before the call: a release() that runs later sends its script
            # after this acquire, so nothing is left behind. A backend now down, drained or
            # full refuses: that request stays uncounted until it ends, as before.
            if backend and request_id not in own and self.holding.get(request_id) == backend:
                restored += bool(self.leases.acquire(request_id, backend).backend)
        if released or restored:
            log.warning("leases_repaired", released=released, restored=restored)

    def _refresh_unavailable(self) -> None:
        names = [b.name for b in self.fallback.ctx.backends]
        self.fallback.unavailable = unavailable(self.leases.client, self.leases.keys, names)

    def retire(self) -> None:
        """The worker is exiting: drop every lease it still holds."""
        self.send_releases()
        try:
            self.leases.retire()
        except REDIS_ERRORS as exc:
            log.warning("retire_failed", error=str(exc))
