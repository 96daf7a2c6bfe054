"""Outlier ejection in the lease scripts (release.lua, _lib.lua) against a real Redis.

Consecutive failures eject a backend from every decision at once (the
`ejected` ZSET read by ``ineligible()``; out of the ordered index); after the
cool-down it is half-open and exactly one request probes it; the probe's
outcome brings it back or ejects it for twice as long. Times are Redis's.
"""

from __future__ import annotations

import time

import pytest

from llmlbd.config.loader import Backend
from llmlbd.state.health import unavailable
from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases
from llmlbd.state.ordered_index import Membership, read_index
from llmlbd.state.outlier import OutlierParams, outlier_view
from llmlbd.state.prefix import PrefixIndex, PrefixParams
from llmlbd.state.snapshot import PoolSnapshot, read_pool
from tests.state.least_request import acquire_least

NAMES = ["a", "b", "c"]
PARAMS = OutlierParams(failures=3, base_ms=300, max_ms=700, probe_ms=400)


@pytest.fixture
def keys():
    return PoolKeys("outlier")


@pytest.fixture
def leases(redis_client, keys):
    lease = Leases(redis_client, keys, "host:1:out", ttl_ms=5000, outlier=PARAMS)
    lease.heartbeat()
    return lease


def fail_on(leases, backend: str, times: int, kind: str = "connect", tag: str = "f"):
    """*times* requests on *backend* that fail with *kind*; the last release's result."""
    released = None
    for i in range(times):
        assert leases.acquire(f"{tag}{i}", backend).backend == backend
        released = leases.release(f"{tag}{i}", kind)
    return released


def wait_until_due(client, keys, name: str) -> None:
    """Sleep until Redis's clock passes *name*'s ejection."""
    until = client.zscore(keys.ejected, name)
    while True:
        seconds, micros = client.time()
        now = int(seconds) * 1000 + int(micros) // 1000
        if now > until:
            return
        time.sleep((until - now + 5) / 1000)


def load(leases, n: int) -> None:
    """*n* requests in flight on b and on c (through the scripts: the index follows)."""
    for name in ("b", "c"):
        for i in range(n):
            assert leases.acquire(f"load-{name}{i}", name).backend == name


def index_all(client, keys) -> set[str]:
    return set(read_index(client, keys).get(keys.index_all, {}))


def test_below_the_threshold_nothing_is_ejected_and_a_success_resets(leases, redis_client, keys):
    acquire_least(leases, "sync", NAMES, [1, 1, 1])  # build the index
    leases.release("sync")
    assert fail_on(leases, "a", 2).event == ""
    assert leases.acquire("ok1", "a").backend == "a"
    assert leases.release("ok1", "ok").event == ""
    assert outlier_view(redis_client, keys) == ({}, {})  # the streak is gone
    assert fail_on(leases, "a", 2, tag="g").event == ""  # 2 more: still under 3
    assert "a" in index_all(redis_client, keys)


def test_consecutive_failures_eject_everywhere_at_once(leases, redis_client, keys):
    acquire_least(leases, "sync", NAMES, [1, 1, 1])
    leases.release("sync")
    released = fail_on(leases, "a", 3, kind="status")
    assert (released.event, released.backend, released.kind) == ("ejected", "a", "status")
    assert (released.cooldown_ms, released.level, released.streak) == (300, 1, 3)
    # Out of the ordered index and refused by every path, in the very next decision.
    assert "a" not in index_all(redis_client, keys)
    assert leases.acquire("x", "a").reason == "ejected"
    picked = {acquire_least(leases, f"r{i}", NAMES, [1, 1, 1]).backend for i in range(20)}
    assert picked == {"b", "c"}
    backends = [Backend(n, f"http://{n}") for n in NAMES]
    (a, *_) = read_pool(redis_client, keys, backends)
    assert a.ejected_until_ms is not None
    snapshot = PoolSnapshot(redis_client, keys, refresh_ms=60_000)
    assert [s.ejected_until_ms is not None for s in snapshot.read(backends)] == [1, 0, 0]
    # ... and so does least_busy's shortlist read of a few backends (large pools).
    some, _ = snapshot.read_some(backends[:2])
    assert [s.ejected_until_ms is not None for s in some] == [1, 0]
    # The workers' fallback (Redis away) avoids it too, from the last view it read.
    assert unavailable(redis_client, keys, NAMES) == {"a"}
    # Nothing leaked: the ejection did not touch the counts.
    assert int(redis_client.hget(keys.inflight, "a") or 0) == 0


def test_half_open_takes_exactly_one_probe_and_its_success_brings_it_back(
    leases, redis_client, keys
):
    acquire_least(leases, "sync", NAMES, [1, 1, 1])
    leases.release("sync")
    fail_on(leases, "a", 3)
    wait_until_due(redis_client, keys, "a")
    # Cool-down over: the next least-request decision may pick it again (one probe only).
    load(leases, 5)  # make "a" the least loaded
    probe = acquire_least(leases, "probe", NAMES, [1, 1, 1])
    assert probe.backend == "a"
    second = acquire_least(leases, "second", NAMES, [1, 1, 1])
    assert second.backend != "a"  # the probe is out: nobody else goes there
    assert leases.acquire("third", "a").reason == "ejected"
    assert "a" not in index_all(redis_client, keys)
    # A straggler's success (not the probe) does not end the ejection.
    released = leases.release("second", "ok")
    assert released.event == ""
    released = leases.release("probe", "ok")
    assert (released.event, released.backend, released.level) == ("returned", "a", 1)
    assert outlier_view(redis_client, keys) == ({}, {})
    assert "a" in index_all(redis_client, keys)
    assert leases.acquire("after", "a").backend == "a"


def test_a_failed_probe_doubles_the_cooldown_up_to_the_max(leases, redis_client, keys):
    fail_on(leases, "a", 3)
    cooldowns = []
    for round_ in range(3):
        wait_until_due(redis_client, keys, "a")
        assert leases.acquire(f"p{round_}", "a").backend == "a"
        released = leases.release(f"p{round_}", "timeout")
        assert released.event == "ejected" and released.kind == "timeout"
        cooldowns.append(released.cooldown_ms)
    assert cooldowns == [600, 700, 700]  # 300 doubled, then capped at 700
    _, records = outlier_view(redis_client, keys)
    assert records["a"].level == 4 and records["a"].kind == "timeout"


def test_a_lost_probe_lets_another_request_probe_after_the_window(leases, redis_client, keys):
    fail_on(leases, "a", 3)
    wait_until_due(redis_client, keys, "a")
    assert leases.acquire("lost", "a").backend == "a"
    assert leases.acquire("early", "a").reason == "ejected"
    wait_until_due(redis_client, keys, "a")  # the probe window (400 ms) passes
    assert leases.acquire("next", "a").backend == "a"
    assert leases.release("lost", "ok").event == ""  # no longer the probe: not counted
    assert leases.release("next", "ok").event == "returned"


def test_failures_during_an_ejection_are_not_counted_again(leases, redis_client, keys):
    for i in range(5):
        leases.acquire(f"s{i}", "a")  # in flight when the ejection comes
    fail_on(leases, "a", 3)
    for i in range(5):
        assert leases.release(f"s{i}", "reset").event == ""
    _, records = outlier_view(redis_client, keys)
    assert records["a"].level == 1 and records["a"].streak == 0
    assert redis_client.hget(keys.inflight, "a") is None  # every lease released


def test_no_outcome_records_nothing_and_zero_failures_disables(redis_client, keys):
    off = Leases(redis_client, keys, "host:2:off", ttl_ms=5000, outlier=OutlierParams(failures=0))
    for i in range(10):
        off.acquire(f"o{i}", "a")
        assert off.release(f"o{i}", "connect").event == ""
    on = Leases(redis_client, keys, "host:3:on", ttl_ms=5000, outlier=PARAMS)
    for i in range(10):
        on.acquire(f"n{i}", "a")
        assert on.release(f"n{i}", "").event == ""
    assert outlier_view(redis_client, keys) == ({}, {})


@pytest.mark.parametrize("path", ["acquire_backend", "least_request", "prefix"])
def test_every_acquire_script_takes_a_half_open_backend_as_one_probe(
    path, leases, redis_client, keys
):
    """The probe is claimed in the shared `reserve`: whichever script reserves first."""
    fail_on(leases, "a", 3)
    wait_until_due(redis_client, keys, "a")
    load(leases, 9)
    index = PrefixIndex(leases, PrefixParams(min_match_blocks=1))

    def take(request_id: str) -> str | None:
        if path == "acquire_backend":
            return leases.acquire(request_id, "a").backend
        if path == "least_request":
            return acquire_least(leases, request_id, NAMES, [1, 1, 1]).backend
        names = ["a", "b", "c"]
        r = index.acquire(request_id, Membership.of(names, [1.0] * 3), 7, [], ["h1"], [1])
        return r.backend

    assert take("probe") == "a"
    assert take("other") != "a"
    ejected, records = outlier_view(redis_client, keys)
    assert records["a"].probe == "probe" and "a" in ejected


def test_health_checks_clear_an_ejection_only_after_seeing_the_backend_down(
    leases, redis_client, keys
):
    """The collector's publish: `up` -> `up` leaves the ejection (that backend's health
    check passes while its requests fail); `down` -> `up` (restarted) clears it. A publish
    after the cool-down puts a half-open backend back into the index."""
    from llmlbd.state import backend_fields as F
    from llmlbd.state.collectors import CollectorLeases

    collector = CollectorLeases(redis_client, keys, "col-1", 60_000)
    assert collector.claim(NAMES) == set(NAMES)
    for name in NAMES:
        collector.publish(name, {F.HEALTH: F.HEALTH_UP})
    acquire_least(leases, "sync", NAMES, [1, 1, 1])
    leases.release("sync")
    fail_on(leases, "a", 3)
    collector.publish("a", {F.HEALTH: F.HEALTH_UP})
    assert "a" in outlier_view(redis_client, keys)[0]
    assert "a" not in index_all(redis_client, keys)
    wait_until_due(redis_client, keys, "a")
    collector.publish("a", {F.HEALTH: F.HEALTH_UP})
    assert "a" in index_all(redis_client, keys)  # half-open: pickable, still recorded
    assert "a" in outlier_view(redis_client, keys)[0]

    fail_on(leases, "b", 3)
    collector.publish("b", {F.HEALTH: F.HEALTH_DOWN})
    assert "b" in outlier_view(redis_client, keys)[0]
    collector.publish("b", {F.HEALTH: F.HEALTH_UP})
    ejected, records = outlier_view(redis_client, keys)
    assert "b" not in ejected and "b" not in records
    assert "b" in index_all(redis_client, keys)


def test_a_removed_member_takes_its_outlier_state_with_it(leases, redis_client, keys):
    acquire_least(leases, "sync", NAMES, [1, 1, 1])
    leases.release("sync")
    fail_on(leases, "a", 3)
    fail_on(leases, "b", 1, tag="b")
    assert set(outlier_view(redis_client, keys)[1]) == {"a", "b"}
    acquire_least(leases, "after", ["b", "c"], [1, 1])  # a new membership: resync
    ejected, records = outlier_view(redis_client, keys)
    assert ejected == {} and set(records) == {"b"}
