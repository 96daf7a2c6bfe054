"""Direct vs through llmlbd, against the same fast local backend, measured in one run.

For each of non-streaming and streaming requests at each concurrency (1, 32
and 256 clients by default; closed loop, so at 32 and 256 the machine is
saturated and latency is mostly queueing, while 1 client shows the latency
llmlbd adds by itself), the same load generator drives the backend directly
and then through llmlbd (global_least_request, gunicorn + gevent workers,
real Redis): requests/s, latency p50/p99, TTFT p50/p99 and the llmlbd/direct
ratio. The client is gevent on raw keep-alive sockets so that it costs less
than what it measures; on a 2-core machine everything (client, backend,
llmlbd, Redis) still shares the cores, so read ratios, not absolutes.

Run: python bench/proxy_bench.py [--seconds 6] [--concurrency 32 256] [--workers 2]
Writes the table to stdout and, with --write-docs, into docs/benchmarks.md.

`--side-by-side` runs bench/overhead.py instead (the one side-by-side harness,
shared with bench/peers.py): wrk -t1 -c32 against two zero-delay backends
(bench/zero_backend.py) directly (one wrk per backend, at the same time,
summed), nginx least_conn, vllm-router and llmlbd with its default config
(request log on), plain and streaming (16 chunks), in interleaved rounds;
it prints medians and the ratios to direct and to vllm-router. Peers are
installed as bench/peers.py installs them (bench/peerbench/install.py).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.harness import LLMLBD, StubBackends  # noqa: E402

BODY = json.dumps(
    {
        "model": "stub-model",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "Say hello in eight tokens."}],
    }
)
STREAM_BODY = json.dumps(
    {
        "model": "stub-model",
        "max_tokens": 8,
        "stream": True,
        "messages": [{"role": "user", "content": "Say hello in eight tokens."}],
    }
)


def request_bytes(body: str, port: int) -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


class Conn:
    """One keep-alive HTTP/1.1 connection that reads exactly one response at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.buf += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def roundtrip(self, payload: bytes) -> tuple[int, float, float]:
        """Send one request; return (status, seconds to first body byte, total seconds)."""
        started = time.perf_counter()
        self.sock.sendall(payload)
        status = int(self._line().split()[1])
        length, chunked = None, False
        while True:
            line = self._line()
            if not line:
                break
            name, _, value = line.decode().partition(":")
            name = name.lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        first = None
        if chunked:
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    self._line()
                    break
                self._exactly(size)
                self._line()
                if first is None:
                    first = time.perf_counter() - started
        else:
            self._exactly(length or 0)
            first = time.perf_counter() - started
        return status, first or 0.0, time.perf_counter() - started


def run_load(port: int, body: str, concurrency: int, seconds: float) -> dict:
    payload = request_bytes(body, port)
    ttfb: list[float] = []
    total: list[float] = []
    errors = [0]
    stop_at = time.perf_counter() + seconds

    def client() -> None:
        conn = Conn(port)
        while time.perf_counter() < stop_at:
            try:
                status, first, whole = conn.roundtrip(payload)
            except (OSError, ValueError):
                errors[0] += 1
                conn = Conn(port)
                continue
            if status != 200:
                errors[0] += 1
            ttfb.append(first)
            total.append(whole)

    warm = Conn(port)
    for _ in range(20):
        warm.roundtrip(payload)
    started = time.perf_counter()
    gevent.joinall([gevent.spawn(client) for _ in range(concurrency)])
    elapsed = time.perf_counter() - started

    def pct(values: list[float], q: float) -> float:
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else 0.0

    return {
        "rps": len(total) / elapsed,
        "p50_ms": pct(total, 0.5),
        "p99_ms": pct(total, 0.99),
        "ttft_p50_ms": pct(ttfb, 0.5),
        "ttft_p99_ms": pct(ttfb, 0.99),
        "requests": len(total),
        "errors": errors[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 32, 256],
        help="clients; 1 shows the added latency alone, without queueing",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="wrk: direct vs nginx vs vllm-router vs llmlbd (default config), two backends",
    )
    parser.add_argument("--rounds", type=int, default=3, help="side-by-side: interleaved rounds")
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="replace the '## Proxy overhead' section of docs/benchmarks.md",
    )
    args = parser.parse_args()
    if args.side_by_side:
        from bench.overhead import run_overhead

        print(run_overhead(args.rounds, args.seconds), flush=True)
        return

    from llmlbd.embedded import EmbeddedRedis
    from tests.harness import free_port

    redis_server = EmbeddedRedis(
        runtime_dir=tempfile.mkdtemp(prefix="bench-redis-"), port=free_port()
    ).start()
    rows = []
    try:
        with StubBackends(1) as backend:
            config = {
                "redis": {"url": redis_server.url},
                "backends": backend.config(),
                "collector": {"enabled": False},
                "logging": {"level": "info"},  # the default: request log on
            }
            with LLMLBD(config, workers=args.workers, name="bench-llmlbd") as proxy:
                direct_port, proxy_port = backend.ports[0], proxy.port
                for mode, body in (("non-streaming", BODY), ("streaming", STREAM_BODY)):
                    for concurrency in args.concurrency:
                        direct = run_load(direct_port, body, concurrency, args.seconds)
                        through = run_load(proxy_port, body, concurrency, args.seconds)
                        rows.append((mode, concurrency, direct, through))
                        print(
                            f"{mode:14} c={concurrency:<4} direct {direct['rps']:8.0f} rps  "
                            f"llmlbd {through['rps']:8.0f} rps  ratio "
                            f"{through['rps'] / direct['rps']:.2f}  TTFT p50 "
                            f"{direct['ttft_p50_ms']:.2f} -> {through['ttft_p50_ms']:.2f} ms  "
                            f"errors {direct['errors']}/{through['errors']}",
                            flush=True,
                        )
    finally:
        redis_server.stop()

    table = render(rows, args)
    print()
    print(table)
    if args.write_docs:
        write_docs(table)


def render(rows: list, args: argparse.Namespace) -> str:
    lines = [
        "## Proxy overhead (issue 2)",
        "",
        f"Command: `python bench/proxy_bench.py --seconds {args.seconds:g} --concurrency "
        f"{' '.join(map(str, args.concurrency))} --workers {args.workers} --write-docs`  ",
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}; backend: "
        "`tests/fakeserver.py` stub mode (one gevent process), llmlbd: "
        f"{args.workers} gevent workers, global_least_request, request log on, real Redis on TCP; the "
        "load generator shares the same cores. Run on "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}.",
        "",
        "| mode | clients | direct req/s | llmlbd req/s | ratio | latency p50 direct / llmlbd (ms) "
        "| latency p99 direct / llmlbd (ms) | TTFT p50 direct / llmlbd (ms) "
        "| TTFT p99 direct / llmlbd (ms) | added TTFT p50 (ms) | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, concurrency, d, t in rows:
        lines.append(
            f"| {mode} | {concurrency} | {d['rps']:.0f} | {t['rps']:.0f} | "
            f"{t['rps'] / d['rps']:.2f} | {d['p50_ms']:.1f} / {t['p50_ms']:.1f} | "
            f"{d['p99_ms']:.1f} / {t['p99_ms']:.1f} | {d['ttft_p50_ms']:.2f} / "
            f"{t['ttft_p50_ms']:.2f} | {d['ttft_p99_ms']:.1f} / {t['ttft_p99_ms']:.1f} | "
            f"{t['ttft_p50_ms'] - d['ttft_p50_ms']:.2f} | {d['errors']} / {t['errors']} |"
        )
    return "\n".join(lines) + "\n"


def write_docs(table: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start = text.find("## Proxy overhead")
    if start == -1:
        header_end = text.find("\n## ")
        insert_at = header_end + 1 if header_end != -1 else len(text)
        text = text[:insert_at] + table + "\n" + text[insert_at:]
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + table + (text[end + 1 :] if end != -1 else "")
    path.write_text(text)


if __name__ == "__main__":
    main()
