"""least_busy vs global_least_request vs round_robin on a heterogeneous simulated fleet.

    python bench/least_busy_bench.py            # about 7 minutes on 2 cores
    python bench/least_busy_bench.py --quick    # one rate, a smoke run

Starts a real Redis-compatible server, 8 ``llmlbd sim`` servers (6 on the
h100 profile and 2 on the much slower l4 profile, all with few running
slots so that queues form at loads a 2-core machine can generate), the
collector daemon and a real ``llmlbd start`` (2 gevent workers), all fresh for
each (policy, rate) run so that no run inherits another's queues; the three
policies run each rate back to back. In each run an open-loop Poisson client
sends streaming chat requests, a mix of critical and sheddable (header
``x-llmlbd-criticality``), and measures each request's time to first token
(TTFT: first SSE data line) and status. Reported per policy and rate:

* TTFT p50 / p90 over the requests served (all, and critical only);
* goodput: requests per second served with TTFT <= --slo-ttft-s;
* shed rate: share of sheddable requests answered 429 (only least_busy sheds).

Results are printed as a Markdown table and written to the ``## least_busy``
section of docs/benchmarks.md (``--no-write`` to skip). Nothing is tuned to
a particular outcome: the fleet, rates and SLO are the command's defaults.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # this script's own process only; nothing imports it

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from llmlbd.embedded import EmbeddedRedis  # noqa: E402
from tests.harness import LLMLBD, Proc, free_port, python_module  # noqa: E402
from tests.simfleet import SimFleet  # noqa: E402

MODEL = "sim-llama"
POLICIES = ("least_busy", "global_least_request", "round_robin")
COLLECTOR = {
    "interval_ms": 50,
    "timeout_ms": 500,
    "health_interval_ms": 500,
    "models_refresh_s": 2.0,
    "metrics_port": 0,
}
SECTION = "## least_busy"


def fleet_servers(slow: int, count: int, max_num_seqs: int) -> list[dict]:
    fast = [{"profile": "h100-llama3-8b", "max_num_seqs": max_num_seqs}] * (count - slow)
    return fast + [{"profile": "l4-llama3-8b", "max_num_seqs": max_num_seqs}] * slow


def one_request(port: int, body: bytes, critical: bool, timeout: float) -> dict:
    """Send one streaming request; return status, TTFT and total time (seconds)."""
    level = b"critical" if critical else b"sheddable"
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
        b"Content-Type: application/json\r\nx-llmlbd-criticality: "
        + level
        + b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    start = time.monotonic()
    first = None
    head = b""
    status = -1
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(request)
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                if status < 0:
                    head += data
                    if b"\r\n" in head:
                        status = int(head.split(b" ", 2)[1])
                if first is None and status == 200 and b"data: " in data:
                    first = time.monotonic() - start
    except OSError:
        status = -1
    return {
        "status": status,
        "ttft": first,
        "total": time.monotonic() - start,
        "critical": critical,
    }


def run_rate(
    port: int,
    rate: float,
    seconds: float,
    critical_share: float,
    max_tokens: int,
    seed: int,
    timeout: float,
) -> list[dict]:
    """Open-loop Poisson arrivals at *rate* for *seconds*; wait for every answer."""
    rng = random.Random(seed)
    results: list[dict] = []
    greenlets = []
    start = time.monotonic()
    next_at = start
    index = 0
    while True:
        next_at += rng.expovariate(rate)
        if next_at - start > seconds:
            break
        gevent.sleep(max(0.0, next_at - time.monotonic()))
        critical = rng.random() < critical_share
        body = json.dumps(
            {
                "model": MODEL,
                "max_tokens": max_tokens,
                "ignore_eos": True,
                "stream": True,
                "messages": [
                    {"role": "user", "content": f"request {seed}-{index}: " + "word " * 40}
                ],
            }
        ).encode()
        index += 1
        greenlets.append(
            (
                gevent.spawn(
                    lambda b=body, c=critical: results.append(one_request(port, b, c, timeout))
                ),
                critical,
            )
        )
    gevent.joinall([greenlet for greenlet, _ in greenlets], timeout=timeout + 5)
    # A request still unanswered (the socket timeout is per read) counts as a timeout.
    for greenlet, critical in greenlets:
        if not greenlet.dead:
            greenlet.kill(block=False)
            results.append({"status": -2, "ttft": None, "total": timeout + 5, "critical": critical})
    return results


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarize(results: list[dict], seconds: float, slo: float) -> dict:
    served = [r for r in results if r["status"] == 200 and r["ttft"] is not None]
    critical = [r for r in served if r["critical"]]
    sheddable = [r for r in results if not r["critical"]]
    ttft = [r["ttft"] for r in served]
    return {
        "sent": len(results),
        "ok": len(served),
        "errors": sum(1 for r in results if r["status"] not in (200, 429)),
        "error_statuses": sorted({r["status"] for r in results if r["status"] not in (200, 429)}),
        "ttft_p50": percentile(ttft, 0.5),
        "ttft_p90": percentile(ttft, 0.9),
        "crit_ttft_p50": percentile([r["ttft"] for r in critical], 0.5),
        "crit_ttft_p90": percentile([r["ttft"] for r in critical], 0.9),
        "goodput": sum(1 for r in served if r["ttft"] <= slo) / seconds,
        "crit_goodput": sum(1 for r in critical if r["ttft"] <= slo) / seconds,
        "shed_rate": (
            sum(1 for r in sheddable if r["status"] == 429) / len(sheddable) if sheddable else 0.0
        ),
        "critical_shed": sum(1 for r in results if r["critical"] and r["status"] == 429),
    }


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| rate (req/s) | policy | sent | TTFT p50 (s) | TTFT p90 (s) | critical TTFT p50 / p90 (s) "
        "| goodput (req/s) | critical goodput (req/s) | sheddable shed | critical shed | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        s = row["summary"]
        lines.append(
            f"| {row['rate']:g} | {row['policy']} | {s['sent']} | {fmt(s['ttft_p50'])} | "
            f"{fmt(s['ttft_p90'])} | {fmt(s['crit_ttft_p50'])} / {fmt(s['crit_ttft_p90'])} | "
            f"{s['goodput']:.1f} | {s['crit_goodput']:.1f} | {100 * s['shed_rate']:.0f} % | "
            f"{s['critical_shed']} | {s['errors']} |"
        )
    return "\n".join(lines)


def write_section(text: str) -> Path:
    """Replace (or append) the ## least_busy section of docs/benchmarks.md, nothing else."""
    path = ROOT / "docs" / "benchmarks.md"
    path.parent.mkdir(exist_ok=True)
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = current.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        if not current.endswith("\n"):
            current += "\n"
        path.write_text(current + "\n" + text.rstrip("\n") + "\n")
        return path
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    new = (
        "".join(lines[:start])
        + text.rstrip("\n")
        + "\n"
        + ("\n" if end < len(lines) else "")
        + "".join(lines[end:])
    )
    path.write_text(new)
    return path


def wait_for_metrics(url: str, names: list[str], timeout: float = 20.0) -> None:
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if all(
                client.hget(f"llmlb:{{default}}:backend:{name}", "waiting") is not None
                for name in names
            ):
                return
            time.sleep(0.1)
        raise SystemExit("the collector published no metrics within 20 s")
    finally:
        client.close()


def run_once(
    policy: str, rate: float, servers: list[dict], redis_url: str, args: argparse.Namespace
) -> dict:
    """One policy at one rate on a fresh fleet, collector and proxy sharing a flushed Redis."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    with SimFleet(len(servers), servers=servers, time_scale=args.time_scale) as fleet:
        backends = [{"name": n, "url": u} for n, u in zip(fleet.names, fleet.urls)]
        handle, collector_path = tempfile.mkstemp(prefix="lb-bench-collector-", suffix=".yaml")
        with os.fdopen(handle, "w") as out:
            yaml.safe_dump(
                {"redis": {"url": redis_url}, "collector": COLLECTOR, "backends": backends}, out
            )
        collector = Proc(python_module("collector", "--config", collector_path), name="collector")
        try:
            config = {
                "redis": {"url": redis_url},
                "backends": backends,
                "lb_policy": policy,
                "collector": {"enabled": False},
                "logging": {"level": "info", "access_log": False},
            }
            with LLMLBD(config, workers=2, name=f"llmlbd-{policy}") as proxy:
                wait_for_metrics(redis_url, fleet.names)
                results = run_rate(
                    proxy.port,
                    rate,
                    args.seconds,
                    args.critical_share,
                    args.max_tokens,
                    args.seed + int(rate * 100),
                    args.timeout,
                )
                summary = summarize(results, args.seconds, args.slo_ttft_s)
                summary["load_avg_1m"] = os.getloadavg()[0]
                dead = [
                    name
                    for name, proc in zip(fleet.names, fleet.procs)
                    if proc.popen.poll() is not None
                ]
                if dead:
                    raise SystemExit(
                        f"simulated servers died during the run: {dead} "
                        "(killed from outside?); results are void"
                    )
                return summary
        finally:
            collector.stop()
            os.unlink(collector_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rates", default="4,12,16,20", help="request rates to run, comma-separated (req/s)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each rate")
    parser.add_argument("--critical-share", type=float, default=0.3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--max-num-seqs", type=int, default=2, help="running slots per simulated server"
    )
    parser.add_argument("--slow", type=int, default=2, help="servers on the slow l4 profile")
    parser.add_argument("--servers", type=int, default=8)
    parser.add_argument(
        "--time-scale",
        type=float,
        default=4.0,
        help="simulator time scale (4.0: every GPU step takes four times as "
        "long, so the fleet saturates at rates a 2-core machine can drive)",
    )
    parser.add_argument(
        "--slo-ttft-s",
        type=float,
        default=1.0,
        help="a request counts toward goodput when its TTFT is at most this",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="a request not answered by then counts as an error",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--quick", action="store_true", help="one rate, 6 s: a smoke run")
    parser.add_argument("--no-write", action="store_true", help="do not edit docs/benchmarks.md")
    args = parser.parse_args()
    if args.quick:
        args.rates, args.seconds = "8", 6.0
    rates = [float(r) for r in args.rates.split(",")]
    policies = args.policies.split(",")
    command = " ".join(["python", "bench/least_busy_bench.py", *sys.argv[1:]])

    redis_server = EmbeddedRedis(
        runtime_dir=tempfile.mkdtemp(prefix="lb-bench-redis-"), port=free_port()
    )
    redis_server.start()
    rows: list[dict] = []
    started = time.monotonic()
    try:
        servers = fleet_servers(args.slow, args.servers, args.max_num_seqs)
        # Every policy runs each rate back to back (order rotated per rate), so a background
        # load that changes over minutes weighs on all of them alike; each run gets a fresh
        # fleet, collector and proxy, so no run inherits another's queues.
        for turn, rate in enumerate(rates):
            order = policies[turn % len(policies) :] + policies[: turn % len(policies)]
            for policy in order:
                summary = run_once(policy, rate, servers, redis_server.url, args)
                rows.append({"policy": policy, "rate": rate, "summary": summary})
                print(
                    json.dumps(
                        {
                            "policy": policy,
                            "rate": rate,
                            **{
                                k: (round(v, 3) if isinstance(v, float) else v)
                                for k, v in summary.items()
                            },
                        }
                    ),
                    flush=True,
                )
    finally:
        redis_server.stop()
    wall = time.monotonic() - started
    rows.sort(key=lambda row: (row["rate"], policies.index(row["policy"])))
    loads = [row["summary"]["load_avg_1m"] for row in rows]
    fleet_text = (
        f"{args.servers} `llmlbd sim` servers ({args.servers - args.slow} h100-llama3-8b, "
        f"{args.slow} l4-llama3-8b, max_num_seqs {args.max_num_seqs}, time scale "
        f"{args.time_scale:g}); {args.max_tokens}-token streamed answers; "
        f"{100 * args.critical_share:.0f} % critical, the rest sheddable; "
        f"Poisson arrivals, {args.seconds:g} s per rate; goodput SLO TTFT <= "
        f"{args.slo_ttft_s:g} s; 2 proxy workers, collector every "
        f"{COLLECTOR['interval_ms']} ms; 1-minute load average after each run "
        f"{min(loads):.1f} to {max(loads):.1f} on this shared machine"
    )
    text = (
        f"{SECTION}\n\n`{command}` ({wall / 60:.1f} min on {os.cpu_count()} cores)\n\n"
        f"{fleet_text}.\n\n{table(rows)}\n"
    )
    print()
    print(text)
    if not args.no_write:
        print(f"written to {write_section(text)}")


if __name__ == "__main__":
    main()
