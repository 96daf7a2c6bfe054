"""Subscribe to each backend's vLLM KV events and keep the precise prefix index in Redis.

One thread per backend with ``kv_events`` in the config, active while this
collector owns the backend. The stream is ZMQ PUB/SUB, which drops whatever
was sent before the subscription and while disconnected, so the index is
rebuilt rather than trusted across those moments:

- **connect** (first, or after the publisher went away): the backend's index
  is cleared and rebuilt from the replay socket (vLLM keeps its last
  ``buffer_steps`` batches, 10,000 by default); a stream without a replay
  socket starts empty and learns from the next batches.
- **gap** (a seq skipped): the missing batches are replayed; if the replay
  socket no longer has them, the index is cleared and rebuilt from what it
  has, never left holding blocks whose removal was lost.
- **duplicate** (a seq already applied, with a timestamp not newer): ignored.
- **restart** (a seq lower than expected with a newer timestamp: vLLM
  restarted, its cache is empty and it sends no AllBlocksCleared): cleared,
  then rebuilt from the new publisher's replay.
- **silent** (the ZMQ monitor reports the connection down): the index stops
  being trusted at once (policies treat the backend as publishing nothing)
  and is dropped after ``collector.kv_silent_clear_s``.

Index lag (batch server time -> applied in Redis) is a histogram.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from collector.kv_sequence import Sequencer, batch_ops
from collector.logs import get_logger
from collector.metrics import CollectorMetrics
from llmlbd.config.kv_events import KVEventsSource
from llmlbd.kvblocks import wire
from llmlbd.kvblocks.optional import require
from llmlbd.state.kv_index import KVIndexWriter

__all__ = ["KVSubscriber", "LIVE_TTL_MS"]

POLL_MS = 200
LIVE_EVERY_S = 1.0
LIVE_TTL_MS = 3000  # three missed refreshes and the proxies stop trusting the index
REPLAY_TIMEOUT_S = 2.0
MAX_COALESCED = 64  # batches folded into one Redis call when they arrive together


def _zmq() -> Any:
    """pyzmq, or its gevent flavour when this collector runs on greenlets."""
    try:
        from gevent import monkey

        if monkey.is_module_patched("socket"):
            return require("zmq.green")
    except ImportError:
        pass
    return require("zmq")


class KVSubscriber:
    """One backend's KV-event stream -> its part of the index."""

    def __init__(
        self,
        name: str,
        source: KVEventsSource,
        writer: KVIndexWriter,
        metrics: CollectorMetrics,
        is_owned: Callable[[str], bool],
        silent_clear_s: float,
    ) -> None:
        self.name = name
        self.source = source
        self.writer = writer
        self.metrics = metrics
        self.is_owned = is_owned
        self.silent_clear_s = silent_clear_s
        self.sequencer = Sequencer()
        self.zmq = _zmq()
        self.context = self.zmq.Context()
        self.sub: Any = None
        self.monitor: Any = None
        self.connected = False
        self.silent_since: float | None = None
        self._live_at = 0.0
        self.log = get_logger(backend=name)

    # -- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    if not self.is_owned(self.name):
                        self._close()
                        stop.wait(POLL_MS / 1000)
                        continue
                    if self.sub is None:
                        self._open()
                    self._pump()
                    self._keep_alive()
                except Exception as exc:  # Redis down or a bad frame: retry, never die
                    self.metrics.redis_errors.labels("kv_index").inc()
                    self.log.warning("kv_events_error", error=str(exc))
                    # The index may have missed writes: subscribe again, and the new
                    # connection rebuilds it from the replay socket.
                    self._close()
                    self.sequencer.reset()
                    stop.wait(0.5)
        finally:
            self._close()
            self.context.term()

    def _open(self) -> None:
        zmq = self.zmq
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, self.source.topic.encode())
        self.monitor = self.sub.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self.sub.connect(self.source.endpoint)
        self.silent_since = time.monotonic()

    def _close(self) -> None:
        if self.sub is not None:
            try:
                self.sub.disable_monitor()
            except Exception:
                pass
            self.monitor.close(linger=0)
            self.sub.close(linger=0)
            self.sub = self.monitor = None
        if self.connected:
            self.connected = False
            self.metrics.kv_connected.labels(self.name).set(0)

    def _pump(self) -> None:
        zmq = self.zmq
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        ready = dict(poller.poll(POLL_MS))
        if self.monitor in ready:
            self._on_monitor()
        if self.sub in ready:
            frames: list[list[bytes]] = []
            while len(frames) < MAX_COALESCED:
                try:
                    frames.append(self.sub.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
            self._on_frames(frames)

    def _on_monitor(self) -> None:
        recv_monitor_message = require("zmq.utils.monitor").recv_monitor_message
        while True:
            try:
                message = recv_monitor_message(self.monitor, self.zmq.NOBLOCK)
            except self.zmq.Again:
                return
            if message["event"] == self.zmq.EVENT_CONNECTED:
                self.connected = True
                self.silent_since = None
                self.metrics.kv_connected.labels(self.name).set(1)
                self._resync("connect")
            elif message["event"] == self.zmq.EVENT_DISCONNECTED:
                self.connected = False
                self.silent_since = time.monotonic()
                self.metrics.kv_connected.labels(self.name).set(0)
                self.writer.silent()
                self.log.info("kv_events_disconnected", endpoint=self.source.endpoint)

    def _keep_alive(self) -> None:
        now = time.monotonic()
        if self.connected:
            if now - self._live_at >= LIVE_EVERY_S:
                self.writer.live()
                self._live_at = now
        elif self.silent_since is not None and now - self.silent_since > self.silent_clear_s:
            self.writer.clear("silent")
            self.metrics.kv_resyncs.labels(self.name, "silent").inc()
            self.sequencer.reset()
            self.silent_since = None

    # -- sequence handling -------------------------------------------------------------

    def _on_frames(self, frames: list[list[bytes]]) -> None:
        pending: list[tuple[int, wire.Batch]] = []
        for parts in frames:
            try:
                seq = wire.read_seq(parts[1])
                batch = wire.decode_batch(parts[2])
            except (IndexError, wire.WireError) as exc:
                self.metrics.kv_batches.labels(self.name, "bad").inc()
                self.log.warning("kv_events_bad_frame", error=str(exc))
                continue
            verdict = self.sequencer.classify(seq, batch.ts)
            if verdict == "apply":
                pending.append((seq, batch))
                self.sequencer.applied(seq, batch.ts)
                continue
            self._apply(pending, "applied")
            pending = []
            if verdict == "duplicate":
                self.metrics.kv_batches.labels(self.name, "duplicate").inc()
            elif verdict == "gap":
                self._recover_gap(seq, batch)
            else:
                self._resync("restart", upto=(seq, batch))
        self._apply(pending, "applied")

    def _recover_gap(self, seq: int, batch: wire.Batch) -> None:
        assert self.sequencer.next is not None
        missing_from = self.sequencer.next
        replayed = self._replay(missing_from)
        if replayed and replayed[0][0] == missing_from:
            self.metrics.kv_resyncs.labels(self.name, "gap_replayed").inc()
            self._apply_in_order(replayed, "replayed")
        else:
            self.log.warning("kv_events_gap_lost", expected=missing_from, got=seq)
            self.metrics.kv_resyncs.labels(self.name, "gap_lost").inc()
            self.writer.clear("gap")
            self.sequencer.reset()
            self._apply_in_order(replayed, "replayed")
        if self.sequencer.next is None or seq >= self.sequencer.next:
            self._apply([(seq, batch)], "applied")
            self.sequencer.applied(seq, batch.ts)
        else:
            self.metrics.kv_batches.labels(self.name, "duplicate").inc()

    def _resync(self, reason: str, upto: tuple[int, wire.Batch] | None = None) -> None:
        """Clear the backend's index and rebuild it from the replay socket (from seq 0)."""
        self.writer.clear(reason)
        self.metrics.kv_resyncs.labels(self.name, reason).inc()
        self.sequencer.reset()
        self._apply_in_order(self._replay(0), "replayed")
        if upto is not None:
            seq, batch = upto
            if self.sequencer.next is None or seq >= self.sequencer.next:
                self._apply([upto], "applied")
                self.sequencer.applied(seq, batch.ts)
        self.log.info("kv_index_resynced", reason=reason, next_seq=self.sequencer.next)

    def _apply_in_order(self, replayed: list[tuple[int, bytes]], outcome: str) -> None:
        batches = []
        for seq, payload in replayed:
            if self.sequencer.next is not None and seq < self.sequencer.next:
                continue
            try:
                batch = wire.decode_batch(payload)
            except wire.WireError:
                self.metrics.kv_batches.labels(self.name, "bad").inc()
                continue
            batches.append((seq, batch))
            self.sequencer.applied(seq, batch.ts)
        for start in range(0, len(batches), MAX_COALESCED):
            self._apply(batches[start : start + MAX_COALESCED], outcome)

    def _replay(self, start_seq: int) -> list[tuple[int, bytes]]:
        """Every batch the publisher still buffers from *start_seq* on ([] without a replay
        socket or when it does not answer in time)."""
        if not self.source.replay_endpoint:
            return []
        zmq = self.zmq
        dealer = self.context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        out: list[tuple[int, bytes]] = []
        try:
            dealer.connect(self.source.replay_endpoint)
            dealer.send_multipart(wire.replay_request(start_seq))
            deadline = time.monotonic() + REPLAY_TIMEOUT_S
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not dealer.poll(int(left * 1000)):
                    self.log.warning("kv_replay_timeout", start_seq=start_seq, got=len(out))
                    return out
                item = wire.read_replay(dealer.recv_multipart())
                if item is None:
                    return out
                out.append(item)
        except wire.WireError as exc:
            self.log.warning("kv_replay_bad_frame", error=str(exc))
            return out
        finally:
            dealer.close(linger=0)

    def _apply(self, batches: list[tuple[int, wire.Batch]], outcome: str) -> None:
        if not batches:
            return
        ops: list[str | int] = []
        block_size = None
        for _, batch in batches:
            batch_ops_, size = batch_ops(batch.events)
            ops += batch_ops_
            block_size = size or block_size
            for event in batch.events:
                self.metrics.kv_events.labels(self.name, _EVENT_NAMES[type(event)]).inc()
        seq, last = batches[-1]
        applied = self.writer.apply(ops, seq, last.ts, block_size)
        self.metrics.kv_batches.labels(self.name, outcome).inc(len(batches))
        if outcome == "applied":
            self.metrics.kv_lag.observe(applied.lag_ms / 1000.0)
        if applied.dropped:
            self.log.info("kv_index_bounded", dropped=applied.dropped)


_EVENT_NAMES = {
    wire.Stored: "BlockStored",
    wire.Removed: "BlockRemoved",
    wire.Cleared: "AllBlocksCleared",
}
