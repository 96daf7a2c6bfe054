"""Redis sizing: routing decisions per Redis core-second, memory per backend.

    python bench/redis_sizing.py [--backends 16,64,256] [--seconds 10] [--clients 4]

Against a private redis-server on a free port, with the real scripts of
llmlbd/state: each *decision* is what a proxy worker does per request with
`global_least_request` (acquire_least_request over every backend, then
release), each from its own client connection, unpipelined, as the proxy
sends them. Reported: decisions per second achieved by *clients* Python
processes, Redis's own CPU (INFO used_cpu_user + used_cpu_sys) over the
same window, hence **decisions per Redis core-second** (what sizes the
server: a Redis core does that many whatever the clients), and the Redis
memory of one backend (its hash as the collector writes it, its owner entry
and its member entry).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FIELDS = {
    "waiting": "3",
    "running": "24",
    "kv_usage": "0.413721",
    "prefix_queries": "3280442",
    "prefix_hits": "1311840",
    "block_size": "16",
    "num_gpu_blocks": "27000",
    "scrape_ms": "1.2",
    "health": "up",
    "fails": "0",
    "successes": "12",
    "models": "meta-llama/Llama-3.1-8B-Instruct",
    "url": "http://10.0.12.34:8000",
}


def names(count: int) -> list[str]:
    return [f"gpu-node-{i:04d}" for i in range(count)]


def populate(url: str, count: int) -> int:
    """Backends as the collector and `llmlbctl backend add` leave them; returns used_memory delta."""
    import json

    import redis

    from llmlbd.state.collectors import CollectorLeases
    from llmlbd.state.keys import PoolKeys

    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    before = int(client.info("memory")["used_memory"])
    keys = PoolKeys("default")
    leases = CollectorLeases(client, keys, "sizing:1:abc", 60_000)
    backends = names(count)
    leases.claim(backends)
    for name in backends:
        client.hset(keys.members, name, json.dumps({"url": FIELDS["url"], "weight": 1.0}))
        leases.publish(name, FIELDS, scraped_age_ms=0, models_age_ms=0)
    after = int(client.info("memory")["used_memory"])
    client.close()
    return after - before


def decide(url: str, count: int, seconds: float, out: multiprocessing.Queue) -> None:
    """One proxy-like client: acquire the least-loaded backend, release it, as fast as it can."""
    import redis

    from llmlbd.state.keys import PoolKeys
    from llmlbd.state.leases import Leases

    client = redis.Redis.from_url(url, decode_responses=True)
    leases = Leases(client, PoolKeys("default"), f"sizing:{os.getpid()}:w", 10_000)
    leases.heartbeat()
    backends = names(count)
    weights = [1.0] * count
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        request_id = uuid.uuid4().hex
        reservation = leases.acquire_least_request(request_id, backends, weights)
        assert reservation.backend, reservation.reason
        leases.release(request_id)
        done += 1
        if done % 500 == 0:
            leases.heartbeat()
    out.put(done)
    client.close()


def redis_cpu(url: str) -> float:
    import redis

    client = redis.Redis.from_url(url)
    info = client.info("cpu")
    client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="16,64,256")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()

    from llmlbd.embedded import EmbeddedRedis
    from tests.harness import free_port

    server = EmbeddedRedis(runtime_dir=tempfile.mkdtemp(prefix="llmlbd-sizing-"), port=free_port())
    server.start()
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {args.clients} client "
        f"processes, {args.seconds:g} s per size; server: {server.binary}"
    )
    print(
        f"  {'backends':>8s} {'decisions/s':>12s} {'redis CPU':>10s} {'per core-s':>11s} "
        f"{'bytes/backend':>14s}"
    )
    try:
        populate(server.url, 1)  # loads the scripts, whose memory is not the backends'
        for count in (int(c) for c in args.backends.split(",")):
            memory = populate(server.url, count)
            out: multiprocessing.Queue = multiprocessing.Queue()
            cpu0, t0 = redis_cpu(server.url), time.monotonic()
            procs = [
                multiprocessing.Process(target=decide, args=(server.url, count, args.seconds, out))
                for _ in range(args.clients)
            ]
            for p in procs:
                p.start()
            total = sum(out.get() for _ in procs)
            for p in procs:
                p.join()
            elapsed = time.monotonic() - t0
            cpu = redis_cpu(server.url) - cpu0
            print(
                f"  {count:8d} {total / elapsed:12.0f} {cpu / elapsed * 100:9.0f}% "
                f"{total / cpu:11.0f} {memory / count:14.0f}",
                flush=True,
            )
    finally:
        server.stop()
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
