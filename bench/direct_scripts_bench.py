"""Two costs of one request-path script call, measured alone (docs/benchmarks.md,
"Hot path, round three"):

1. packing an acquire-sized EVALSHA (6 keys, 11 args): redis-py's packer against
   DirectScripts' own (µs per command);
2. one EVALSHA round trip on one connection to a real Redis over loopback TCP and over
   its unix socket, interleaved rounds (client CPU and wall µs per call, medians);
3. the same round trip on the unix socket with redis-py's reply reader backed by hiredis
   and by its pure-Python RESP3 parser, interleaved rounds ("Hot path, round four").

Run: python bench/direct_scripts_bench.py [--calls 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from llmlbd.embedded import EmbeddedRedis  # noqa: E402
from llmlbd.state.direct_scripts import DirectScripts  # noqa: E402
from tests.harness import free_port  # noqa: E402

KEYS = ("{p}:inflight", "{p}:leases", "{p}:workers", "{p}:drained", "{p}:ejected", "{p}:w")
ARGS = ("0123456789abcdef0123456789abcdef", "host:1:p", 12345, 5000, "b0", "b1", "b2", 1, 1, 1, 7)


def packing(calls: int) -> None:
    client = redis.Redis(connection_pool=redis.ConnectionPool.from_url("redis://127.0.0.1:1"))
    script = DirectScripts(client, local_unix_socket=False).release
    conn = client.connection_pool.connection_class(**client.connection_pool.connection_kwargs)

    def theirs() -> bytes:
        return b"".join(conn.pack_command("EVALSHA", script.sha, len(KEYS), *KEYS, *ARGS))

    def ours() -> bytes:
        return script._pack(conn, KEYS, ARGS)

    assert theirs() == ours()
    a = timeit.timeit(theirs, number=calls) / calls * 1e6
    b = timeit.timeit(ours, number=calls) / calls * 1e6
    print(f"pack EVALSHA (6 keys, 11 args): redis-py {a:.1f} µs, DirectScripts {b:.1f} µs")


def round_trips(calls: int, rounds: int) -> None:
    with EmbeddedRedis(port=free_port()) as server:
        urls = {"tcp": server.url, "unix": f"unix://{server.socket_path}"}
        sha = redis.Redis.from_url(server.url).script_load("return redis.call('INCR', KEYS[1])")
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in urls}
        for _ in range(rounds):
            for name, url in urls.items():
                conn = redis.ConnectionPool.from_url(url).get_connection()
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(calls):
                    conn.send_command("EVALSHA", sha, 1, "k")
                    conn.read_response()
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                results[name].append((cpu / calls * 1e6, wall / calls * 1e6))
                conn.disconnect()
        for name, rows in results.items():
            cpus, walls = sorted(r[0] for r in rows), sorted(r[1] for r in rows)
            print(
                f"EVALSHA round trip over {name:4}: client CPU {cpus[len(cpus) // 2]:.1f} µs, "
                f"wall {walls[len(walls) // 2]:.1f} µs per call (median of {rounds})"
            )


def reply_parsers(calls: int, rounds: int) -> None:
    """hiredis against redis-py's Python parser, reading an acquire-like reply (2 items)."""
    from redis._parsers import _HiredisParser, _RESP3Parser

    with EmbeddedRedis(port=free_port()) as server:
        url = f"unix://{server.socket_path}"
        sha = redis.Redis.from_url(url).script_load("return {KEYS[1], 12}")
        conns = {
            name: redis.ConnectionPool.from_url(
                url, decode_responses=True, parser_class=parser, protocol=3
            ).get_connection()
            for name, parser in (("hiredis", _HiredisParser), ("Python RESP3", _RESP3Parser))
        }
        results: dict[str, list[float]] = {name: [] for name in conns}
        for _ in range(rounds):
            for name, conn in conns.items():
                cpu = time.process_time()
                for _ in range(calls):
                    conn.send_command("EVALSHA", sha, 1, "k")
                    conn.read_response()
                results[name].append((time.process_time() - cpu) / calls * 1e6)
        for name, cpus in results.items():
            print(
                f"EVALSHA round trip, replies read by {name:12}: client CPU "
                f"{sorted(cpus)[len(cpus) // 2]:.1f} µs per call (median of {rounds})"
            )
        for conn in conns.values():
            conn.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    packing(args.calls)
    round_trips(args.calls, args.rounds)
    reply_parsers(args.calls, args.rounds)


if __name__ == "__main__":
    main()
