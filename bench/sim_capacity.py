"""How much load one simulated server holds, and what it costs in CPU per request.

    python bench/sim_capacity.py --concurrency 500 --requests-per-client 2 --max-tokens 100

starts one ``python -m llmlbd.sim`` process, opens CONCURRENCY streaming
connections at once (each client sends its requests one after another), and
reports errors, throughput and the server process's own CPU time (from
/proc/PID/stat) per request and per streamed token. Run it twice with
different --max-tokens to split the per-request cost from the per-token
cost. If "server CPU use" nears 100 % of one core, the server is CPU-bound:
a benchmark at that load measures the simulator, not the system under test.

The client is gevent on raw sockets so that it stays cheap next to the
server on a 2-core machine.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # this script's own process only; nothing imports it

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

from gevent.pool import Pool  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.simfleet import SimFleet  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one_request(port: int, body: bytes, stream: bool) -> tuple[bool, int, float]:
    """(ok, tokens received, seconds to the first event or body)."""
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    start = time.monotonic()
    first = None
    parts = []
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        sock.sendall(request)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            if first is None and (b"data: " in data or b'"choices"' in data):
                first = time.monotonic() - start
            parts.append(data)
    raw = b"".join(parts)
    ok = raw.startswith(b"HTTP/1.1 200") and (
        b"data: [DONE]" in raw if stream else b'"usage"' in raw
    )
    return ok, raw.count(b'"delta":{"content":" '), first or 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--prompt-words", type=int, default=150)
    parser.add_argument("--no-stream", action="store_true")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument(
        "--sim-arg",
        action="append",
        default=[],
        help="extra sim option as key=value (python spelling), e.g. max_num_seqs=512",
    )
    args = parser.parse_args()
    stream = not args.no_stream
    options = {"time_scale": args.time_scale}
    for item in args.sim_arg:
        key, _, value = item.partition("=")
        options[key] = value
    with SimFleet(1, **options) as fleet:
        port, pid = fleet.ports[0], fleet.procs[0].pid
        results = []

        def client(index: int) -> None:
            for round_ in range(args.requests_per_client):
                words = " ".join(f"w{index}x{round_}y{i}" for i in range(args.prompt_words))
                body = json.dumps(
                    {
                        "model": "sim-llama",
                        "max_tokens": args.max_tokens,
                        "ignore_eos": True,
                        "stream": stream,
                        "messages": [{"role": "user", "content": words}],
                    }
                ).encode()
                try:
                    results.append(one_request(port, body, stream))
                except OSError as exc:
                    results.append((False, 0, 0.0))
                    print("error:", exc, file=sys.stderr)

        cpu_before = cpu_seconds(pid)
        start = time.monotonic()
        pool = Pool(args.concurrency)
        for index in range(args.concurrency):
            pool.spawn(client, index)
        while not pool.join(timeout=0.5):
            pass
        wall = time.monotonic() - start
        cpu = cpu_seconds(pid) - cpu_before
        with urllib.request.urlopen(fleet.url + "/debug/state") as response:
            state = json.load(response)
        rss = rss_mb(pid)
    ok = sum(1 for r in results if r[0])
    tokens = sum(r[1] for r in results) if stream else ok * args.max_tokens
    ttfts = sorted(r[2] for r in results if r[0])
    print(
        json.dumps(
            {
                "command": " ".join(["python", "bench/sim_capacity.py", *sys.argv[1:]]),
                "concurrency": args.concurrency,
                "requests": len(results),
                "ok": ok,
                "errors": len(results) - ok,
                "stream": stream,
                "max_tokens": args.max_tokens,
                "time_scale": args.time_scale,
                "wall_s": round(wall, 2),
                "server_cpu_s": round(cpu, 2),
                "server_cpu_use": round(cpu / wall, 3),
                "server_cpu_ms_per_request": round(1000 * cpu / max(ok, 1), 3),
                "server_cpu_us_per_token": round(1e6 * cpu / max(tokens, 1), 2),
                "tokens_streamed": tokens,
                "tokens_per_s": round(tokens / wall),
                "ttft_p50_s": round(ttfts[len(ttfts) // 2], 3) if ttfts else None,
                "engine_steps": state["steps"],
                "preemptions": state["preemptions"],
                "server_rss_mb": round(rss, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
