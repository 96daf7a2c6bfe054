"""A scriptable vLLM KV-event publisher for collector tests: any seq, any order, any gap.

Plain pyzmq: a PUB socket the test thread sends on, and a ROUTER replay
socket served by a thread of its own, answering as vLLM 0.32 does.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import zmq

from llmlbd.kvblocks import wire
from tests.harness import free_port


class ScriptedPublisher:
    def __init__(self, pub_port: int | None = None, replay_port: int | None = None) -> None:
        self.pub_port = pub_port or free_port()
        self.replay_port = replay_port or free_port()
        self.context = zmq.Context()
        self.pub = self.context.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(f"tcp://127.0.0.1:{self.pub_port}")
        self.buffer: list[tuple[int, bytes]] = []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.replay_requests: list[int] = []
        self.thread = threading.Thread(target=self._serve_replay, daemon=True)
        self.thread.start()

    @property
    def source(self) -> dict[str, Any]:
        return {
            "endpoint": f"tcp://127.0.0.1:{self.pub_port}",
            "replay_endpoint": f"tcp://127.0.0.1:{self.replay_port}",
            "topic": "kv",
        }

    def batch(
        self, seq: int, events: list[dict], *, send: bool = True, ts: float | None = None
    ) -> None:
        """Buffer batch *seq* for replay and, unless *send* is False (a lost frame), publish it."""
        payload = wire.encode_batch(time.time() if ts is None else ts, events)
        with self.lock:
            self.buffer.append((seq, payload))
        if send:
            self.pub.send_multipart([b"kv", wire.seq_bytes(seq), payload])

    def forget_before(self, seq: int) -> None:
        """The replay buffer wrapped: batches before *seq* are gone."""
        with self.lock:
            self.buffer = [(s, p) for s, p in self.buffer if s >= seq]

    def _serve_replay(self) -> None:
        router = self.context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(f"tcp://127.0.0.1:{self.replay_port}")
        try:
            while not self.closing.is_set():
                if not router.poll(100):
                    continue
                client, _, start = router.recv_multipart()
                start_seq = int.from_bytes(start, "big")
                self.replay_requests.append(start_seq)
                with self.lock:
                    items = [(s, p) for s, p in self.buffer if s >= start_seq]
                for seq, payload in items:
                    router.send_multipart([client, b"", b"kv", wire.seq_bytes(seq), payload])
                router.send_multipart([client, b"", b"", wire.END_SEQ, b""])
        finally:
            router.close()

    def close(self) -> None:
        self.closing.set()
        self.thread.join(2)
        self.pub.close()
        self.context.term()


def stored(*hashes: int, parent: int | None = None, medium: str = "GPU") -> dict:
    return wire.block_stored(list(hashes), parent, [0] * (16 * len(hashes)), 16, medium=medium)


def removed(block_hash: int) -> dict:
    return wire.block_removed(block_hash)
