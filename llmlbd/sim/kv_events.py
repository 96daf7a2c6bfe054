"""KV-cache events from the simulator, in vLLM's own wire format and with vLLM's own hashes.

`vllm serve --kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq",
"endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558", "topic": "kv"}'` makes
vLLM publish, once per engine step with something to say, a KVEventBatch:
BlockStored for newly cached full blocks, one BlockRemoved per evicted block,
AllBlocksCleared after a prefix-cache reset. `llmlbd sim --kv-events-config`
takes the same JSON and does the same on a PUB socket (``zmq.green``: the sim
is a gevent process), keeping the last ``buffer_steps`` batches for the replay
ROUTER socket. Frames and payloads come from `llmlbd.kvblocks.wire` (a leaf
module the collector decodes with), and the block hashes the cache uses are
`llmlbd.kvblocks.hashing`'s, so a subscriber recomputes them from token ids
exactly as it would for a real vLLM.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gevent

from llmlbd.kvblocks import hashing, wire
from llmlbd.kvblocks.optional import require

__all__ = ["KVEventsConfig", "KVEventPublisher", "parse_kv_events_config"]


@dataclass(frozen=True)
class KVEventsConfig:
    """vLLM's KVEventsConfig keys that matter to a publisher."""

    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    topic: str = ""

    def as_json(self) -> dict[str, Any]:
        """What vLLM's GET /kv_event_sources shows for one rank."""
        return {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": self.endpoint,
            "replay_endpoint": self.replay_endpoint,
            "buffer_steps": self.buffer_steps,
            "hwm": self.hwm,
            "topic": self.topic,
        }


def parse_kv_events_config(text: str) -> KVEventsConfig | None:
    """The JSON of ``--kv-events-config``; None when events are off. Raises ValueError."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--kv-events-config is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError("--kv-events-config must be a JSON object")
    known = {"enable_kv_cache_events", "publisher", "endpoint", "replay_endpoint"}
    known |= {"buffer_steps", "hwm", "max_queue_size", "topic"}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"--kv-events-config: unknown keys {sorted(unknown)}")
    if not raw.get("enable_kv_cache_events", False) or raw.get("publisher", "zmq") == "null":
        return None
    if raw.get("publisher", "zmq") != "zmq":
        raise ValueError("--kv-events-config: publisher must be 'zmq' or 'null'")
    config = KVEventsConfig(
        endpoint=str(raw.get("endpoint") or "tcp://*:5557"),
        replay_endpoint=raw.get("replay_endpoint") or None,
        buffer_steps=int(raw.get("buffer_steps", 10_000)),
        hwm=int(raw.get("hwm", 100_000)),
        topic=str(raw.get("topic") or ""),
    )
    if config.buffer_steps < 1:
        raise ValueError("--kv-events-config: buffer_steps must be at least 1")
    return config


def _binds(endpoint: str) -> bool:
    """vLLM binds when the endpoint is a wildcard or local transport, else it connects."""
    return "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://"))


class KVEventPublisher:
    """The KV cache's listener: collects events during an engine step, publishes them on flush."""

    def __init__(self, config: KVEventsConfig, block_size: int) -> None:
        zmq = require("zmq.green")
        self.config = config
        self.block_size = block_size
        self.seq = 0
        self.published_batches = 0
        self._pending: list[dict[str, Any]] = []
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self._topic = config.topic.encode()
        self._context = zmq.Context()
        self._pub = self._context.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, config.hwm)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._open(self._pub, config.endpoint)
        self._replay = None
        self._server: gevent.Greenlet[[], None] | None = None
        if config.replay_endpoint:
            self._replay = self._context.socket(zmq.ROUTER)
            self._replay.setsockopt(zmq.LINGER, 0)
            self._open(self._replay, config.replay_endpoint)
            self._server = gevent.spawn(self._serve_replay)

    @staticmethod
    def _open(socket: Any, endpoint: str) -> None:
        if _binds(endpoint):
            socket.bind(endpoint)
        else:
            socket.connect(endpoint)

    # -- the KV cache's listener --------------------------------------------------------

    def on_stored(self, hashes: Sequence[int], new: Sequence[int], origin: Any) -> None:
        """*new* (a subset of *hashes*, a request's chain) were just cached: one BlockStored per
        run of consecutive new blocks, each with the hash of the block before it as parent."""
        if origin is None:
            return
        fresh = set(new)
        tokens: Sequence[int] = getattr(origin, "prompt_ids", None) or []
        lora = getattr(origin, "lora", None)
        salt = getattr(origin, "cache_salt", None)
        size = self.block_size
        run: list[int] = []
        for index, block_hash in enumerate([*hashes, None]):
            if block_hash is not None and block_hash in fresh:
                run.append(index)
                continue
            if run:
                first = run[0]
                self._pending.append(
                    wire.block_stored(
                        [hashes[i] for i in run],
                        hashes[first - 1] if first else None,
                        tokens[first * size : (run[-1] + 1) * size],
                        size,
                        lora_name=lora,
                        extra_keys=[hashing.extra_keys(i == 0, lora, salt) for i in run],
                    )
                )
                run = []

    def on_removed(self, block_hash: int) -> None:
        self._pending.append(wire.block_removed(block_hash))

    def on_cleared(self) -> None:
        self._pending.append(wire.all_blocks_cleared())

    # -- publishing --------------------------------------------------------------------

    def flush(self) -> None:
        """Publish what this engine step produced, as one batch (nothing when nothing happened)."""
        if not self._pending:
            return
        events, self._pending = self._pending, []
        payload = wire.encode_batch(time.time(), events)
        seq = self.seq
        self.seq += 1
        self._buffer.append((seq, payload))
        self._pub.send_multipart([self._topic, wire.seq_bytes(seq), payload])
        self.published_batches += 1

    def _serve_replay(self) -> None:
        assert self._replay is not None
        while True:
            try:
                frames = self._replay.recv_multipart()
            except Exception:  # the socket was closed by close()
                return
            if len(frames) != 3:
                continue
            client, _, start = frames
            start_seq = int.from_bytes(start, "big")
            for seq, payload in list(self._buffer):
                if seq >= start_seq:
                    self._replay.send_multipart(
                        [client, b"", self._topic, wire.seq_bytes(seq), payload]
                    )
            self._replay.send_multipart([client, b"", b"", wire.END_SEQ, b""])

    def close(self) -> None:
        if self._server is not None:
            self._server.kill(block=False)
        self._pub.close()
        if self._replay is not None:
            self._replay.close()
        self._context.term()
