"""PoolSnapshot: exact in-flight counts and drains on every call, metrics re-read only
when the collector published since and the refresh interval passed."""

from __future__ import annotations

import time

from llmlbd.state.keys import PoolKeys
from llmlbd.state.members import set_drained
from llmlbd.state.scripts import ScriptSet
from llmlbd.state.snapshot import PoolSnapshot, read_pool
from llmlbd.state.types import Backend

BACKENDS = [Backend(f"b{i}", f"http://127.0.0.1:{9000 + i}") for i in range(3)]


def publish(client, keys: PoolKeys, name: str, **fields: str) -> None:
    client.hset(keys.scrape_owners, name, "col 99999999999999")
    pairs = [x for kv in fields.items() for x in kv]
    ScriptSet(client).collector_publish(
        keys=[keys.scrape_owners, keys.backend(name)],
        args=["col", name, "0", "", len(fields), *pairs],
    )


def test_counts_exact_metrics_refreshed_on_publish(redis_client):
    keys = PoolKeys("snap")
    for b in BACKENDS:
        publish(redis_client, keys, b.name, waiting="1")
    snapshot = PoolSnapshot(redis_client, keys, refresh_ms=200)
    first = snapshot.read(BACKENDS)
    assert [s.metrics["waiting"] for s in first] == ["1", "1", "1"]
    assert snapshot.metrics_reads == 1

    # In-flight and drains are exact at once; a metric changed without a publish is not
    # seen (only the collector writes metrics), nor is a publish within the interval.
    redis_client.hset(keys.inflight, "b1", 4)
    set_drained(redis_client, keys, "b2", True)
    publish(redis_client, keys, "b0", waiting="9")
    second = snapshot.read(BACKENDS)
    assert [s.inflight for s in second] == [0, 4, 0]
    assert [s.drained for s in second] == [False, False, True]
    assert second[0].metrics["waiting"] == "1" and snapshot.metrics_reads == 1

    time.sleep(0.25)
    third = snapshot.read(BACKENDS)
    assert third[0].metrics["waiting"] == "9" and snapshot.metrics_reads == 2
    # Nothing published since: the interval passing alone reads no hash.
    time.sleep(0.25)
    snapshot.read(BACKENDS)
    assert snapshot.metrics_reads == 2
    # The same answer a full read gives, metric ages included (Redis clock).
    full = read_pool(redis_client, keys, BACKENDS)
    assert [s.metrics for s in snapshot.read(BACKENDS)] == [s.metrics for s in full]


def test_a_new_member_is_read_at_once(redis_client):
    keys = PoolKeys("snap2")
    snapshot = PoolSnapshot(redis_client, keys, refresh_ms=60_000)
    snapshot.read(BACKENDS[:2])
    publish(redis_client, keys, "b2", waiting="5")
    states = snapshot.read(BACKENDS)
    assert states[2].metrics["waiting"] == "5"


def publish_aged(client, keys: PoolKeys, name: str, age_ms: int) -> None:
    """What the collector sends: metrics *age_ms* old (scraped_at = Redis now - age)."""
    client.hset(keys.scrape_owners, name, "col 99999999999999")
    ScriptSet(client).collector_publish(
        keys=[keys.scrape_owners, keys.backend(name)],
        args=["col", name, str(age_ms), "", 1, "waiting", "0"],
    )


def test_the_copys_lag_never_makes_fresh_metrics_look_stale(redis_client):
    """A held metric past stale_after is re-read at once when the collector published since,
    however long the refresh interval: what Redis holds may be fresh."""
    keys = PoolKeys("snap3")
    publish_aged(redis_client, keys, "b0", age_ms=150)
    snapshot = PoolSnapshot(redis_client, keys, refresh_ms=60_000, stale_after_ms=200)
    held = snapshot.read(BACKENDS[:1])[0].metrics["scraped_at"]
    time.sleep(0.1)  # the copy's scraped_at is now past stale_after
    publish_aged(redis_client, keys, "b0", age_ms=0)
    fresh = snapshot.read(BACKENDS[:1])[0].metrics["scraped_at"]
    assert int(fresh) > int(held) and snapshot.metrics_reads == 2
    # Without a publish since, nothing is re-read: a dead collector's metrics age on.
    time.sleep(0.25)
    snapshot.read(BACKENDS[:1])
    assert snapshot.metrics_reads == 2


def test_read_some_reads_only_the_backends_asked_and_says_when_a_reread_is_due(redis_client):
    """read_some: exact in-flight counts and drains of a subset, this copy's metrics, and
    a flag once the collector published and the refresh interval passed (or a backend
    asked for is not in the copy); it never re-reads a hash itself."""
    keys = PoolKeys("snap4")
    for b in BACKENDS:
        publish(redis_client, keys, b.name, waiting="2")
    snapshot = PoolSnapshot(redis_client, keys, refresh_ms=200)
    snapshot.read(BACKENDS[:2])
    redis_client.hset(keys.inflight, "b1", 3)
    set_drained(redis_client, keys, "b0", True)
    states, due = snapshot.read_some(BACKENDS[:2])
    assert [(s.name, s.inflight, s.drained) for s in states] == [("b0", 0, True), ("b1", 3, False)]
    assert [s.metrics["waiting"] for s in states] == ["2", "2"] and not due
    assert snapshot.read_some(BACKENDS)[1]  # b2 is not in the copy
    publish(redis_client, keys, "b0", waiting="7")
    assert not snapshot.read_some(BACKENDS[:2])[1]  # published, but within the interval
    time.sleep(0.25)
    states, due = snapshot.read_some(BACKENDS[:2])
    assert due and states[0].metrics["waiting"] == "2" and snapshot.metrics_reads == 1


def test_a_member_without_metrics_is_re_read_sooner_and_boundedly(redis_client):
    """A copy read while only some members had been scraped re-reads within tens of ms of a
    publish, not after the refresh interval; a member that never gets metrics costs a few
    re-reads at doubling intervals, not one per call."""
    keys = PoolKeys("snap5")
    publish(redis_client, keys, "b0", waiting="1")
    snapshot = PoolSnapshot(redis_client, keys, refresh_ms=60_000, soon_ms=20)
    assert "scraped_at" not in snapshot.read(BACKENDS)[1].metrics
    publish(redis_client, keys, "b1", waiting="2")
    time.sleep(0.03)
    assert snapshot.read(BACKENDS)[1].metrics["waiting"] == "2"
    assert snapshot.metrics_reads == 2
    # b2 never answers while the collector keeps publishing the others: the intervals
    # double (20, 40, 80, 160, 320 ms...), so 0.7 s of calls every 5 ms re-read a few times.
    start = time.monotonic()
    while time.monotonic() - start < 0.7:
        publish(redis_client, keys, "b0", waiting="1")
        snapshot.read(BACKENDS)
        time.sleep(0.005)
    # (at least 40 + 80 + 160 ms pass, even on a loaded host; never more than 4 fit)
    assert 2 + 3 <= snapshot.metrics_reads <= 2 + 4
    # read_some says a re-read is due for a held member without metrics, after the interval.
    some = PoolSnapshot(redis_client, keys, refresh_ms=60_000, soon_ms=300)
    some.read(BACKENDS)
    publish(redis_client, keys, "b0", waiting="1")
    assert not some.read_some(BACKENDS)[1]
    time.sleep(0.35)
    assert some.read_some(BACKENDS)[1]
    assert not some.read_some(BACKENDS[:2])[1]  # both have metrics: nothing is due for them


def test_a_chunked_re_read_reads_every_hash_once(redis_client):
    """read(chunk=n) re-reads the metrics n hashes per round trip, with the same result as
    one round trip, and counts as one re-read."""
    keys = PoolKeys("snap6")
    for i, b in enumerate(BACKENDS):
        publish(redis_client, keys, b.name, waiting=str(i))
    chunked = PoolSnapshot(redis_client, keys, refresh_ms=60_000)
    states = chunked.read(BACKENDS, chunk=2)
    assert [s.metrics["waiting"] for s in states] == ["0", "1", "2"]
    assert chunked.metrics_reads == 1
    assert [s.metrics for s in states] == [
        s.metrics for s in read_pool(redis_client, keys, BACKENDS)
    ]
