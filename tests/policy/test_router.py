"""The Router in process, against a real Redis the test kills and restarts.

Covers what the end-to-end tests only reach through subprocesses: pick and
release through the global policy, the switch to the worker-local fallback
when Redis goes away (behind the breaker), releases kept while Redis is
down and retried by maintain() once it is back, and the switch back.
"""

from __future__ import annotations

import random
import tempfile
import time

import pytest
import redis

from llmlbd.config.loader import Backend, config_from_dict
from llmlbd.embedded import EmbeddedRedis
from llmlbd.errors import ModelNotFound
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.fallback import LocalLeastRequest
from llmlbd.policy.profiles.least_request import GlobalLeastRequest
from llmlbd.policy.router import Router
from llmlbd.request import RoutingRequest
from llmlbd.state import backend_fields as F
from llmlbd.state.breaker import Breaker
from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases
from tests.harness import free_port, wait_until

BACKENDS = [Backend("a", "http://a", 1.0), Backend("b", "http://b", 1.0)]
KEYS = PoolKeys("router")


class Observer:
    """Records what the Router reports (the server's Observer feeds Prometheus)."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def redis_error(self, op: str) -> None:
        self.events.append(f"error:{op}")

    def redis_call(self, op: str, seconds: float) -> None:
        self.events.append(f"call:{op}")

    def decided(self, details: dict) -> None:
        self.events.append("decided")

    def fallback(self) -> None:
        self.events.append("fallback")

    def outlier(self, event: str, backend: str, kind: str) -> None:
        self.events.append(f"{event}:{backend}:{kind}")


@pytest.fixture
def server():
    """A Redis of the test's own that saves its data, so a restart finds the leases again."""
    with EmbeddedRedis(
        runtime_dir=tempfile.mkdtemp(prefix="llmlbd-test-router-"), port=free_port()
    ) as srv:
        yield srv


@pytest.fixture
def admin(server):
    client = redis.Redis.from_url(server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def router(server):
    client = redis.Redis.from_url(
        server.url, decode_responses=True, socket_timeout=0.5, socket_connect_timeout=0.5
    )
    rng = random.Random(3)
    lb_config = config_from_dict({"lb_config": {"maxRequestCount": 0}}).lb_config
    leases = Leases(client, KEYS, "host:1:router", ttl_ms=30_000)
    ctx = PolicyContext(list(BACKENDS), lb_config, KEYS, leases, client, rng=rng)
    local = LocalLeastRequest(PolicyContext(list(BACKENDS), lb_config, KEYS, None, rng=rng))
    # reset_s long: the breaker stays open until maintain() proves Redis is back.
    router = Router(GlobalLeastRequest(ctx), local, leases, Breaker(2, 60.0), observer=Observer())
    router.maintain()  # first heartbeat
    yield router
    client.close()


def request(i: int, model: str = "") -> RoutingRequest:
    return RoutingRequest(f"req-{i}", "POST", "/v1/completions", body={}, model=model)


def counts(admin) -> dict[str, int]:
    return {k: int(v) for k, v in admin.hgetall(KEYS.inflight).items() if int(v)}


def test_pick_and_release_through_the_global_policy(router, admin) -> None:
    decisions = [router.pick(request(i)) for i in range(4)]
    assert not any(d.local for d in decisions)
    assert counts(admin) == {"a": 2, "b": 2}
    assert admin.hlen(KEYS.leases) == 4
    for decision in decisions:
        router.release(decision)
    assert counts(admin) == {} and admin.hlen(KEYS.leases) == 0
    assert router.observer.events.count("decided") == 4
    assert router.breaker.state == "closed"


def test_a_client_error_is_no_redis_failure(router) -> None:
    router.maintain()
    router.leases.client.hset(KEYS.backend("a"), F.MODELS, "x")
    router.leases.client.hset(KEYS.backend("b"), F.MODELS, "y")
    with pytest.raises(ModelNotFound):
        router.pick(request(1, model="m"))
    assert router.breaker.state == "closed" and router.breaker.failures == 0
    assert "fallback" not in router.observer.events


def test_outage_falls_back_keeps_releases_and_recovers(router, server, admin) -> None:
    held = router.pick(request(1))  # a global lease, taken before the outage
    restart_data = admin.hgetall(KEYS.inflight)
    admin.save()
    server.kill()

    # Redis is gone: the failing pick is answered locally, the breaker opens at the 2nd failure.
    local = [router.pick(request(10 + i)) for i in range(3)]
    assert all(d.local and d.reason == "redis_unavailable" for d in local)
    assert router.breaker.state == "open"
    assert router.observer.events.count("error:pick") == 2  # open: no more calls to Redis
    assert sum(router.fallback.inflight.values()) == 3

    # Releasing the global lease cannot reach Redis: it is kept, not lost.
    router.release(held)
    assert router.pending_releases == {held.request_id}
    router.maintain()  # still down: kept again
    assert router.pending_releases == {held.request_id}

    # Local decisions release locally, whatever Redis does.
    for decision in local:
        router.release(decision)
    assert not router.fallback.inflight and not router.fallback.held

    server.start()  # back, with the data of the snapshot: the lease is still counted
    assert admin.hgetall(KEYS.inflight) == restart_data
    router.maintain()  # retries the release and closes the breaker
    assert router.pending_releases == set()
    assert counts(admin) == {} and admin.hlen(KEYS.leases) == 0
    assert router.breaker.state == "closed"

    back = router.pick(request(20))
    assert not back.local
    router.release(back)
    assert counts(admin) == {}


def test_maintain_refreshes_what_the_fallback_avoids(router, admin) -> None:
    admin.sadd(KEYS.drained, "a")
    router.maintain()
    assert router.fallback.unavailable == {"a"}
    admin.srem(KEYS.drained, "a")
    admin.hset(KEYS.backend("b"), F.HEALTH, F.HEALTH_DOWN)
    router.maintain()
    assert router.fallback.unavailable == {"b"}


def test_a_pick_probes_after_the_reset_period(router, server) -> None:
    server.kill()
    router.pick(request(1))
    router.pick(request(2))
    assert router.breaker.state == "open"
    router.breaker.reset_s = 0.05
    time.sleep(0.1)
    # The probe finds Redis still down: answered locally, the breaker re-opens.
    assert router.pick(request(3)).local
    assert router.breaker.state == "open"
    server.start()
    time.sleep(0.1)
    probe = router.pick(request(4))  # the probe succeeds: global again
    assert not probe.local and router.breaker.state == "closed"
    router.release(probe)


def test_release_outcomes_eject_a_backend_once_and_the_fallback_avoids_it(router, admin) -> None:
    """Failed outcomes reported through Router.release count toward the shared ejection
    (default threshold 5); the worker that decided it reports it once; the pool then
    routes elsewhere, and the local fallback's view of the pool leaves it out too."""
    failures = 0
    for i in range(40):
        decision = router.pick(request(i))
        if decision.backend.name == "a":
            failures += 1
            router.release(decision, "connect")
        else:
            router.release(decision, "ok")
        if failures == 5:
            break
    events = router.observer.events
    assert [e for e in events if e.startswith("ejected")] == ["ejected:a:connect"]
    assert {router.pick(request(100 + i)).backend.name for i in range(6)} == {"b"}
    router.maintain()
    assert router.fallback.unavailable == {"a"}


def test_a_lease_lost_to_a_failover_is_released_by_the_audit(router, server, admin) -> None:
    """A release acknowledged by a master that died before its replica got it: the promoted
    Redis still holds the lease under this live worker, which the reaper never touches.
    After a Redis error, maintain() releases every lease of this worker that no request of
    it holds, and keeps the ones its requests hold."""
    held = router.pick(request(1))
    # The lost release: a lease of this worker (same script, same worker id) that no
    # request of the router holds, as after a failover that lost its release.
    assert router.leases.acquire("lost-1", "a").backend == "a"
    admin.save()
    server.kill()
    assert router.pick(request(2)).local  # a Redis error: the audit is due
    server.start()
    wait_until(lambda: _answers(admin), timeout=10, message="Redis back")
    router.maintain()
    assert router.breaker.state == "closed"
    assert set(admin.hkeys(KEYS.leases)) == {held.request_id}
    assert sum(counts(admin).values()) == 1
    router.release(held)
    assert counts(admin) == {} and admin.hlen(KEYS.leases) == 0


def test_the_audit_also_runs_now_and_then_without_an_error(router, admin) -> None:
    """A lost release with no error seen by this worker (it was idle during the failover):
    the periodic audit releases it; a pick under way keeps its lease."""
    router.maintain()
    assert router.leases.acquire("lost-2", "b").backend == "b"
    held = router.pick(request(3))
    router.maintain()  # the audit is not due yet
    assert admin.hexists(KEYS.leases, "lost-2")
    router.audit_every_s = 0.0
    router.maintain()
    assert set(admin.hkeys(KEYS.leases)) == {held.request_id}
    router.release(held)
    assert counts(admin) == {}


def _answers(client) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_the_audit_takes_again_a_lease_redis_lost(router, admin) -> None:
    """The promoted replica lacks an acquire (or a reaper dropped this live worker's leases
    during a long outage): the request still runs on its backend, so after a Redis error
    maintain() takes its lease again, and its release later frees it."""
    router.maintain()
    held = router.pick(request(4))
    router.leases.release(held.request_id)  # Redis lost it; the router still holds it
    assert counts(admin) == {}
    router.audit_every_s = 0.0  # as after a Redis error: the next maintain() audits
    router.maintain()
    lease = admin.hget(KEYS.leases, held.request_id)
    assert lease is not None and lease.split(" ")[:2] == [held.backend.name, "host:1:router"]
    assert counts(admin) == {held.backend.name: 1}
    router.maintain()  # audits again: nothing more to repair, counted once
    assert counts(admin) == {held.backend.name: 1}
    router.release(held)
    assert counts(admin) == {} and admin.hlen(KEYS.leases) == 0


def test_deferred_releases_wait_for_the_sender_and_survive_an_outage(router, server, admin):
    woken: list[int] = []
    router.defer_releases(lambda: woken.append(len(router.queued_releases)))
    decisions = [router.pick(request(i)) for i in range(4)]
    for decision in decisions[:3]:
        router.release(decision)
    assert woken == [1]  # woken once, when the queue stopped being empty
    assert counts(admin) == {"a": 2, "b": 2}  # nothing sent yet: the caller did not wait
    router.send_releases()  # the sender: all three in one batch
    assert router.queued_releases == []
    assert sum(counts(admin).values()) == 1 and admin.hlen(KEYS.leases) == 1

    # A batch that cannot reach Redis is kept and sent by maintain() once it is back.
    admin.save()
    server.kill()
    router.release(decisions[3])
    router.send_releases()
    assert router.pending_releases == {decisions[3].request_id}
    server.start()
    router.maintain()
    assert router.pending_releases == set()
    assert counts(admin) == {} and admin.hlen(KEYS.leases) == 0


def test_a_retry_sends_its_own_queued_release_before_picking_again(router, admin):
    router.defer_releases(lambda: None)
    other = router.pick(request(2))
    router.release(other)
    first = router.pick(request(1))
    router.release(first)  # the attempt failed; the request is retried under the same id
    retry = router.pick(request(1), exclude=frozenset({first.backend.name}))
    assert retry.backend.name != first.backend.name
    assert admin.hgetall(KEYS.leases).keys() == {"req-1"}
    router.release(retry)
    router.send_releases()
    assert counts(admin) == {}


def test_retire_sends_queued_releases_first(router, admin):
    router.defer_releases(lambda: None)
    router.release(router.pick(request(1)))
    assert admin.hlen(KEYS.leases) == 1
    router.retire()
    assert counts(admin) == {} and admin.hlen(KEYS.leases) == 0 and not router.queued_releases
