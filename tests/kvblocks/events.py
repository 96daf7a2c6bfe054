"""Simulated vLLM servers that publish KV events, and a plain SUB/DEALER reader for tests."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import zmq

from llmlbd.kvblocks import wire
from tests.harness import free_port
from tests.simfleet import SimFleet


@dataclass(frozen=True)
class EventPorts:
    pub: int
    replay: int

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.pub}"

    @property
    def replay_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.replay}"

    def sim_config(self, topic: str = "kv", **extra: object) -> str:
        """vLLM's --kv-events-config for a server that binds both sockets on these ports."""
        return json.dumps(
            {
                "enable_kv_cache_events": True,
                "publisher": "zmq",
                "endpoint": f"tcp://*:{self.pub}",
                "replay_endpoint": f"tcp://*:{self.replay}",
                "topic": topic,
                **extra,
            }
        )


def event_fleet(
    count: int, servers: list[dict] | None = None, **options: object
) -> tuple[SimFleet, list[EventPorts]]:
    """A SimFleet whose servers publish KV events on ports of their own."""
    ports = [EventPorts(free_port(), free_port()) for _ in range(count)]
    per_server = [
        {**((servers or [{}] * count)[i]), "kv_events_config": ports[i].sim_config()}
        for i in range(count)
    ]
    return SimFleet(count, servers=per_server, **options), ports


def backends_config(fleet: SimFleet, ports: list[EventPorts]) -> list[dict]:
    """The config's `backends` for an event fleet, each with its `kv_events` source."""
    return [
        {
            "name": name,
            "url": url,
            "kv_events": {
                "endpoint": p.endpoint,
                "replay_endpoint": p.replay_endpoint,
                "topic": "kv",
            },
        }
        for name, url, p in zip(fleet.names, fleet.urls, ports)
    ]


class Reader:
    """A SUB socket on one publisher (and a DEALER for its replay socket)."""

    def __init__(self, ports: EventPorts) -> None:
        self.ports = ports
        self.context = zmq.Context()
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.connect(ports.endpoint)
        time.sleep(0.3)  # PUB/SUB drops what is sent before the subscription reaches the publisher

    def next(self, timeout_s: float = 5.0) -> list[bytes]:
        if not self.sub.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no KV event batch within {timeout_s} s")
        return self.sub.recv_multipart()

    def batches(self, idle_s: float = 0.5) -> list[tuple[int, wire.Batch]]:
        """Every batch until the publisher has been quiet for *idle_s*."""
        out = []
        while self.sub.poll(int(idle_s * 1000)):
            frames = self.sub.recv_multipart()
            out.append((wire.read_seq(frames[1]), wire.decode_batch(frames[2])))
        return out

    def replay(self, start_seq: int, timeout_s: float = 5.0) -> list[tuple[int, bytes]]:
        dealer = self.context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.ports.replay_endpoint)
        try:
            dealer.send_multipart(wire.replay_request(start_seq))
            out = []
            while True:
                if not dealer.poll(int(timeout_s * 1000)):
                    raise TimeoutError("replay did not end")
                item = wire.read_replay(dealer.recv_multipart())
                if item is None:
                    return out
                out.append(item)
        finally:
            dealer.close()

    def close(self) -> None:
        self.sub.close()
        self.context.term()
