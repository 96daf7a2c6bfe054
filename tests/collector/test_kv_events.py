"""The collector keeps the precise prefix index exact from KV events: gaps, duplicates, clears,
publisher restarts, silence, ownership and removal."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from collector.kv_events import KVSubscriber
from collector.kv_sequence import Sequencer, batch_ops
from collector.metrics import CollectorMetrics
from llmlbd.config.kv_events import parse_kv_events
from llmlbd.kvblocks import wire
from llmlbd.state.keys import PoolKeys
from llmlbd.state.kv_index import KVIndexWriter, read_holders, read_holdings
from tests.collector.kv_publisher import ScriptedPublisher, removed, stored
from tests.harness import wait_until

KEYS = PoolKeys("kvtest")


class TestSequencer:
    def test_in_order_gap_duplicate_restart(self) -> None:
        s = Sequencer()
        assert s.classify(5, 10.0) == "apply"  # fresh: anything goes
        s.applied(5, 10.0)
        assert s.classify(6, 11.0) == "apply"
        assert s.classify(8, 11.0) == "gap"
        assert s.classify(4, 9.0) == "duplicate"
        assert s.classify(5, 10.0) == "duplicate"
        assert s.classify(0, 12.0) == "restart"  # lower seq, newer server time
        s.reset()
        assert s.classify(0, 1.0) == "apply"


def test_batch_ops_keep_order_and_tiers() -> None:
    events = [
        wire.Removed([7]),
        wire.Stored([1, 2], None, [0] * 32, 16),
        wire.Stored([3], 2, [0] * 16, 16, medium="CPU"),
        wire.Cleared(),
    ]
    ops, size = batch_ops(events)
    assert ops == ["R", "gpu", 7, "S", "gpu", 2, 1, 2, "S", "offload", 1, 3, "C"]
    assert size == 16


class Harness:
    """A real publisher, a real subscriber thread and the real index in Redis."""

    def __init__(self, redis_url: str, replay: bool = True, silent_clear_s: float = 60.0) -> None:
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.publisher = ScriptedPublisher()
        source = dict(self.publisher.source)
        if not replay:
            source.pop("replay_endpoint")
        self.metrics = CollectorMetrics()
        self.owned = {"b1"}
        writer = KVIndexWriter(self.client, KEYS, "b1", "test-collector", 1000, 3000)
        self.subscriber = KVSubscriber(
            "b1",
            parse_kv_events(source),
            writer,
            self.metrics,
            self.owned.__contains__,
            silent_clear_s,
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.subscriber.run, args=(self.stop,), daemon=True)
        self.thread.start()
        wait_until(lambda: self.state().get("seq") == "-1", timeout=10)  # connected + resynced
        time.sleep(0.3)  # the subscription reaches the publisher

    def state(self) -> dict[str, str]:
        return self.client.hgetall(KEYS.kv_state("b1"))

    def gpu(self) -> set[int]:
        return read_holdings(self.client, KEYS, "b1")["gpu"]

    def wait_gpu(self, expected: set[int]) -> None:
        wait_until(lambda: self.gpu() == expected, timeout=10)

    def assert_reverse_index(self) -> None:
        """kvx_holders names b1 for exactly the blocks it holds; kvx_live has it iff live."""
        held = set().union(*read_holdings(self.client, KEYS, "b1").values())
        prefix = KEYS.kv_holders("")
        named = {int(k[len(prefix) :]) for k in self.client.scan_iter(match=prefix + "*")}
        assert named == held
        assert all(read_holders(self.client, KEYS, h) == {"b1"} for h in held)
        live = self.client.zscore(KEYS.kv_live, "b1")
        assert (live or 0) == int(self.state().get("live_until", 0))

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"backend": "b1", **labels})
        return value or 0.0

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.publisher.close()
        self.client.close()


@pytest.fixture
def harness(redis_url):
    made: list[Harness] = []

    def make(**options) -> Harness:
        h = Harness(redis_url, **options)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_store_remove_clear_and_lag(harness) -> None:
    h = harness()
    h.publisher.batch(0, [stored(1, 2, 3), stored(9, medium="CPU")])
    h.wait_gpu({1, 2, 3})
    assert read_holdings(h.client, KEYS, "b1")["offload"] == {9}
    h.publisher.batch(1, [removed(3), stored(4, parent=2)])
    h.wait_gpu({1, 2, 4})
    h.publisher.batch(2, [wire.all_blocks_cleared(), stored(5)])
    h.wait_gpu({5})
    state = h.state()
    assert state["seq"] == "2" and state["block_size"] == "16"
    assert int(state["live_until"]) > 0 and 0 <= int(state["lag_ms"]) < 5000
    assert h.counter("llmlbd_collector_kv_events_total", type="BlockRemoved") == 1
    # The lag is observed just after the batch's write to Redis, which wait_gpu saw: wait
    # for the collector thread to record it rather than race it.
    lag_count = "llmlbd_collector_kv_index_lag_seconds_count"
    wait_until(lambda: (h.metrics.registry.get_sample_value(lag_count) or 0) >= 3, timeout=10)


def test_gap_is_recovered_from_the_replay_socket(harness) -> None:
    h = harness()
    h.publisher.batch(0, [stored(1)])
    h.wait_gpu({1})
    h.publisher.batch(1, [stored(2), removed(1)], send=False)  # lost on the wire
    h.publisher.batch(2, [stored(3)])
    h.wait_gpu({2, 3})
    assert h.counter("llmlbd_collector_kv_resyncs_total", reason="gap_replayed") == 1
    assert 1 in h.publisher.replay_requests
    assert h.state()["seq"] == "2"


def test_gap_beyond_the_replay_buffer_clears_rather_than_keeping_stale_blocks(harness) -> None:
    h = harness()
    h.publisher.batch(0, [stored(1, 2)])
    h.wait_gpu({1, 2})
    h.publisher.batch(1, [removed(2)], send=False)
    h.publisher.batch(2, [stored(7)], send=False)
    h.publisher.forget_before(2)  # seq 1 (and its removal) is gone for good
    h.publisher.batch(3, [stored(8)])
    # Block 2's removal was lost: nothing from before the gap is trusted; what the
    # buffer still has (seq 2) and the live batch are applied.
    h.wait_gpu({7, 8})
    assert h.counter("llmlbd_collector_kv_resyncs_total", reason="gap_lost") == 1
    h.assert_reverse_index()  # block 1 and 2 went with the clear


def test_gap_without_a_replay_socket_clears(harness) -> None:
    h = harness(replay=False)
    h.publisher.batch(0, [stored(1)])
    h.wait_gpu({1})
    h.publisher.batch(2, [stored(3)])
    h.wait_gpu({3})
    assert h.counter("llmlbd_collector_kv_resyncs_total", reason="gap_lost") == 1


def test_duplicates_are_ignored(harness) -> None:
    h = harness()
    first = time.time()
    h.publisher.batch(0, [stored(1)], ts=first)
    h.publisher.batch(1, [removed(1), stored(2)], ts=first + 0.1)
    h.wait_gpu({2})
    # seq 0 again (e.g. a replay overlapping live frames): it must not re-add block 1
    h.publisher.pub.send_multipart(
        [b"kv", wire.seq_bytes(0), wire.encode_batch(first, [stored(1)])]
    )
    h.publisher.batch(2, [stored(3)], ts=first + 0.2)
    h.wait_gpu({2, 3})
    assert h.counter("llmlbd_collector_kv_batches_total", outcome="duplicate") == 1


def test_publisher_restart_clears_and_rebuilds(harness) -> None:
    """vLLM restarted on the same ports: seq starts again at 0 with a newer time and no
    AllBlocksCleared; the old blocks are gone from its cache, so from the index too."""
    h = harness()
    for seq in range(3):
        h.publisher.batch(seq, [stored(10 + seq)])
    h.wait_gpu({10, 11, 12})
    ports = (h.publisher.pub_port, h.publisher.replay_port)
    h.publisher.close()
    wait_until(lambda: h.state().get("live_until") == "0", timeout=10)  # silent at once
    h.publisher = ScriptedPublisher(*ports)
    # The restarted server served a request before the collector reconnected.
    h.publisher.batch(0, [stored(20)], send=False)
    wait_until(
        lambda: h.counter("llmlbd_collector_kv_resyncs_total", reason="connect") >= 2, timeout=10
    )
    h.wait_gpu({20})
    time.sleep(0.3)
    h.publisher.batch(1, [stored(21)])
    h.wait_gpu({20, 21})
    assert int(h.state()["live_until"]) > 0
    h.assert_reverse_index()


def test_silent_publisher_is_untrusted_then_dropped(harness) -> None:
    h = harness(silent_clear_s=0.5)
    h.publisher.batch(0, [stored(1)])
    h.wait_gpu({1})
    h.publisher.close()
    wait_until(lambda: h.state().get("live_until") == "0", timeout=10)
    h.wait_gpu(set())
    assert h.state()["cleared_reason"] == "silent"
    h.assert_reverse_index()  # nothing held, not live
    h.publisher = ScriptedPublisher()  # something for close() to close


def test_not_owned_means_not_subscribed(harness) -> None:
    h = harness()
    h.owned.clear()
    wait_until(lambda: h.subscriber.sub is None, timeout=5)
    h.publisher.batch(0, [stored(1)])
    time.sleep(0.5)
    assert h.gpu() == set()


def test_redis_outage_is_healed_by_a_resync(private_redis) -> None:
    """Batches that could not be written while Redis was down are rebuilt from the replay
    socket once it is back."""
    h = Harness(private_redis.url)
    try:
        h.publisher.batch(0, [stored(1)])
        h.wait_gpu({1})
        private_redis.kill()
        h.publisher.batch(1, [stored(2), removed(1)])  # lost: Redis is down
        time.sleep(1.0)
        private_redis.start()
        h.client = redis.Redis.from_url(private_redis.url, decode_responses=True)
        h.wait_gpu({2})  # Redis came back empty: the replay rebuilt the index
        assert h.metrics.registry.get_sample_value(
            "llmlbd_collector_redis_errors_total", {"op": "kv_index"}
        )
    finally:
        h.close()
