"""Where a proxied request's CPU goes: µs of worker CPU per request and per streamed chunk.

Starts two zero-delay backends (bench/zero_backend.py) and `llmlbd start`
with the default config (embedded Redis on a unix socket, the collector,
the request log on, 2 workers), drives it with wrk (-t1 -c32), and

1. measures the workers' CPU (utime + stime from /proc) over wrk runs,
   divided by the requests served: µs per request (median of the rounds);
2. starts a second llmlbd whose workers sample their own stacks per
   millisecond of CPU (llmlbd/server/cpuprofile.py, SIGPROF; py-spy counts
   preempted time as busy, see that module) and splits the CPU by category
   (request parsing, policy + Redis, upstream request, upstream body,
   relaying, request log, metrics, gunicorn, gevent hub) by the deepest
   llmlbd or library frame of each sample.

Per streamed chunk is (stream µs - plain µs) / chunks, overall and per category.

With `--compare DIR` it instead runs two llmlbd side by side, this tree and
the llmlbd + collector packages under DIR (e.g. `git archive main llmlbd
collector | tar -x -C DIR`), in interleaved wrk rounds, and prints the
median CPU per request and req/s of each: one change measured at a time.
Both are started anew each round, in turn first: with the two started once,
the one started second measured 0.90-0.93x the CPU per request of the other
in an A/A run (one tree against itself); so use an even number of rounds.

Run: python bench/hotpath_profile.py [--seconds 8] [--rounds 3] [--keep DIR]
     python bench/hotpath_profile.py --compare /tmp/base [--seconds 5] [--rounds 6]
     python bench/hotpath_profile.py --compare /tmp/base --new /tmp/new   # two snapshots
     python bench/hotpath_profile.py --compare-setting redis.local_unix_socket=false --redis-tcp
Needs wrk (apt-get install -y wrk).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wrkbench as wb

from llmlbd.server.worker import cpuprofile

# Deepest matching frame wins; frames that match nothing (gevent's socket
# wrappers, stdlib socket, json, llmlbd/sockets.py) are charged to the caller
# that owns them, and so are frames of a rule whose category is None.
# Each rule: (category, path fragment, function names or None for all).
RULES: list[tuple[str | None, str, frozenset[str] | None]] = [
    ("profiler", "llmlbd/server/worker/cpuprofile.py", None),
    (None, "llmlbd/server/worker/http1.py", frozenset({"fill", "close"})),  # _Connection's I/O
    ("request log", "/structlog/", None),
    ("request log", "/logging/", None),
    ("request log", "llmlbd/logs.py", None),
    ("request log", "llmlbd/server/worker/requestlog.py", None),
    ("request log", "llmlbd/server/worker/wsgi.py", frozenset({"_log_request"})),
    ("metrics", "/prometheus_client/", None),
    ("metrics", "llmlbd/metrics.py", None),
    ("policy + Redis", "/redis/", None),
    ("policy + Redis", "llmlbd/state/", None),
    ("policy + Redis", "llmlbd/policy/", None),
    ("parse request", "llmlbd/server/parse.py", None),
    ("parse request", "llmlbd/request.py", None),
    ("parse request", "llmlbd/server/worker/forward.py", frozenset({"request_headers"})),
    (
        "parse request",
        "llmlbd/server/worker/wsgi.py",
        frozenset({"_read_body", "_client_headers", "<dictcomp>"}),
    ),
    ("upstream request", "llmlbd/server/worker/http1.py", frozenset({"request", "_read_head"})),
    ("upstream request", "llmlbd/server/worker/http1.py", frozenset({"_connect", "_checkout"})),
    ("upstream request", "llmlbd/server/worker/http1.py", frozenset({"__init__", "header"})),
    (
        "upstream body",
        "llmlbd/server/worker/http1.py",
        frozenset({"iter_body", "_chunked", "_line"}),
    ),
    (
        "upstream body",
        "llmlbd/server/worker/http1.py",
        frozenset({"release", "checkin", "discard"}),
    ),
    ("relay", "llmlbd/server/worker/relay.py", None),
    ("relay", "llmlbd/server/worker/forward.py", frozenset({"response_headers"})),
    (
        "client: read request",
        "llmlbd/server/worker/front.py",
        frozenset(
            {
                "_read_head",
                "_environ",
                "fill",
                "read",
                "_read_length",
                "_read_chunked",
                "skip_buffered",
            }
        ),
    ),
    ("client: write response", "llmlbd/server/worker/front.py", None),
    ("client: write response", "llmlbd/server/worker/onewrite.py", None),
    ("gunicorn: worker loop", "llmlbd/server/master/app.py", None),  # gunicorn hooks
    ("app dispatch", "llmlbd/server/", None),
    (
        "gunicorn: read request",
        "gunicorn/http/wsgi.py",
        frozenset({"create", "base_environ", "proxy_environ", "default_environ"}),
    ),
    ("gunicorn: write response", "gunicorn/http/wsgi.py", None),
    ("gunicorn: read request", "gunicorn/http/", None),
    ("gunicorn: worker loop", "gunicorn/", None),
    ("gevent hub + other", "", None),
]
CATEGORIES = [c for c in dict.fromkeys(rule[0] for rule in RULES) if c and c != "profiler"]


def categorise(stack: str) -> str:
    """The category of one raw py-spy stack ("f (file:line);..." root first)."""
    frames = stack.split(";")
    for frame in reversed(frames):
        qualname, _, where = frame.partition(" (")
        name = qualname.rpartition(".")[2]
        rule = next(
            (r for r in RULES[:-1] if r[1] in where and (r[2] is None or name in r[2])), None
        )
        if rule is not None and rule[0] is not None:
            return rule[0]
    return "gevent hub + other"


def read_stacks(folder: Path) -> Counter[str]:
    """Every worker's cumulative stack counts, summed."""
    stacks: Counter[str] = Counter()
    for path in folder.glob("*.stacks"):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack:
                stacks[stack] += int(count)
    return stacks


def profile(proxy: wb.LLMLBD, folder: Path, stream: bool, seconds: float) -> Counter[str]:
    """CPU samples by category over one wrk run (the sampler's overhead left out)."""
    wb.settle(1.2)  # the workers rewrite their files every second
    before = read_stacks(folder)
    wb.run_wrk(proxy.port, seconds, stream=stream)
    wb.settle(1.2)
    window = read_stacks(folder)
    window.subtract(before)
    mode = "stream" if stream else "plain"
    (folder / f"window-{mode}.txt").write_text(
        "".join(f"{stack} {count}\n" for stack, count in window.items() if count > 0)
    )
    shares: Counter[str] = Counter()
    for stack, count in window.items():
        shares[categorise(stack)] += count
    del shares["profiler"]
    return shares


def measure(proxy: wb.LLMLBD, stream: bool, seconds: float, rounds: int) -> tuple[float, float]:
    """Median over rounds of (req/s, worker CPU µs per request)."""
    pids = proxy.worker_pids()
    rates, costs = [], []
    for _ in range(rounds):
        before = wb.cpu_seconds(pids)
        result = wb.run_wrk(proxy.port, seconds, stream=stream)
        used = wb.cpu_seconds(pids) - before
        if result.errors:
            print(f"  warning: {result.errors} errors in this round", flush=True)
        rates.append(result.rps)
        costs.append(used / max(1, result.requests) * 1e6)
        wb.settle()
    return wb.median(rates), wb.median(costs)


def compare(
    base_root: str | None,
    workers: int,
    seconds: float,
    rounds: int,
    base_setting: dict[str, Any] | None = None,
    redis_url: str | None = None,
    new_root: str | None = None,
) -> None:
    """Interleaved rounds: the tree under *base_root* (else this one with *base_setting*,
    e.g. {"redis": {"local_unix_socket": False}}) vs this one, same backends; both on
    *redis_url* when given, else each on its embedded Redis."""
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    shared = {"redis": {"url": redis_url}} if redis_url else {}
    base_extra = {k: {**shared.get(k, {}), **v} for k, v in (base_setting or {}).items()}
    base_extra = {**shared, **base_extra}
    with wb.zero_backends(2) as ports:
        # No cwd on sys.path, so the base tree's packages are the ones imported.
        base_env = {"PYTHONPATH": base_root, "PYTHONSAFEPATH": "1"} if base_root else None
        new_env = {"PYTHONPATH": new_root, "PYTHONSAFEPATH": "1"} if new_root else None
        starts = (("base", base_extra, base_env), ("new", shared, new_env))
        for index in range(rounds):
            # An A/A run (one tree against itself, 2026-11-30) put the instance started
            # second at 0.90-0.93x the CPU per request and 1.1-1.2x the rate of the first,
            # whatever the order of the runs: so each round starts both anew, in turn
            # first, and runs them in that order (use an even count of rounds).
            order = starts if index % 2 == 0 else starts[::-1]
            with contextlib.ExitStack() as stack:
                proxies = [
                    (label, stack.enter_context(wb.llmlbd(ports, workers, extra=extra, env=env)))
                    for label, extra, env in order
                ]
                for _, proxy in proxies:
                    wb.run_wrk(proxy.port, 2)
                for mode, stream in (("plain", False), ("stream", True)):
                    for label, proxy in proxies:
                        samples.setdefault((mode, label), []).append(
                            measure(proxy, stream, seconds, 1)
                        )
    balance = "even: balanced" if rounds % 2 == 0 else "ODD: unbalanced"
    print(
        f"{rounds} interleaved rounds of {seconds:g} s, each started anew, the first "
        f"alternating ({balance}), load average {wb.load_average()}"
    )
    for mode in ("plain", "stream"):
        base_rows, new_rows = samples[(mode, "base")], samples[(mode, "new")]
        # Each round's pair ran back to back under about the same load: compare within it.
        cpu_ratio = wb.median([n[1] / b[1] for b, n in zip(base_rows, new_rows)])
        rps_ratio = wb.median([n[0] / b[0] for b, n in zip(base_rows, new_rows)])
        print(
            f"{mode:6} base {wb.median([r[0] for r in base_rows]):7.0f} req/s "
            f"{wb.median([r[1] for r in base_rows]):6.0f} µs/req   new "
            f"{wb.median([r[0] for r in new_rows]):7.0f} req/s "
            f"{wb.median([r[1] for r in new_rows]):6.0f} µs/req   median of round ratios: "
            f"CPU/request new/base {cpu_ratio:.2f}, req/s new/base {rps_ratio:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3, help="wrk rounds per mode (median)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-profile", action="store_true", help="CPU per request only")
    parser.add_argument("--keep", help="folder for the workers' stack files (default: a temp dir)")
    parser.add_argument("--compare", metavar="DIR", help="A/B against the llmlbd tree in DIR")
    parser.add_argument(
        "--tree",
        metavar="DIR",
        help="profile the llmlbd + collector packages under DIR instead of this tree "
        "(DIR's worker must call llmlbd.server.worker.cpuprofile.start_if_enabled())",
    )
    parser.add_argument(
        "--new",
        metavar="DIR",
        help="with --compare: the llmlbd tree in DIR as 'new' instead of this one (a snapshot, "
        "so that editing this tree during a run does not change what runs)",
    )
    parser.add_argument(
        "--compare-setting",
        metavar="SECTION.KEY=JSON",
        help="A/B this tree with the setting (base) against this tree's default (new)",
    )
    parser.add_argument(
        "--redis-tcp",
        action="store_true",
        help="with --compare/--compare-setting: both on one Redis on 127.0.0.1 TCP (that also "
        "listens on a unix socket) instead of each one's embedded Redis on its socket",
    )
    args = parser.parse_args()
    if args.compare or args.compare_setting:
        setting = None
        if args.compare_setting:
            key, _, value = args.compare_setting.partition("=")
            section, _, name = key.partition(".")
            setting = {section: {name: json.loads(value)}}
        if not args.redis_tcp:
            compare(
                args.compare, args.workers, args.seconds, args.rounds, setting, new_root=args.new
            )
            return
        from llmlbd.embedded import EmbeddedRedis

        with EmbeddedRedis(port=wb.free_port()) as redis_server:
            compare(
                args.compare,
                args.workers,
                args.seconds,
                args.rounds,
                setting,
                redis_server.url,
                new_root=args.new,
            )
        return

    rows: dict[str, tuple[float, float, Counter[str]]] = {}
    modes = (("plain", False), ("stream", True))
    with wb.zero_backends(2) as ports:
        tree_env = {"PYTHONPATH": args.tree, "PYTHONSAFEPATH": "1"} if args.tree else {}
        with wb.llmlbd(ports, args.workers, env=tree_env) as proxy:
            wb.run_wrk(proxy.port, 2)  # warm the pools and the scripts
            # Modes interleaved round by round, so a change in the machine's load hits both.
            runs: dict[str, list[tuple[float, float]]] = {mode: [] for mode, _ in modes}
            for _ in range(args.rounds):
                for mode, stream in modes:
                    runs[mode].append(measure(proxy, stream, args.seconds, 1))
            for mode, _ in modes:
                rps = wb.median([r[0] for r in runs[mode]])
                cost = wb.median([r[1] for r in runs[mode]])
                rows[mode] = (rps, cost, Counter())
                print(
                    f"{mode:6} {rps:8.0f} req/s   worker CPU {cost:6.0f} µs/request   "
                    f"load {wb.load_average()}",
                    flush=True,
                )
        if not args.no_profile:
            folder = Path(args.keep or tempfile.mkdtemp(prefix="hotpath-profile-"))
            folder.mkdir(parents=True, exist_ok=True)
            env = {cpuprofile.ENV: str(folder), **tree_env}
            with wb.llmlbd(ports, args.workers, env=env) as proxy:
                wb.run_wrk(proxy.port, 2)
                for mode, stream in modes:
                    shares = profile(proxy, folder, stream, args.seconds)
                    rows[mode] = (*rows[mode][:2], shares)
    print()
    print(render(rows, args))


def render(rows: dict[str, tuple[float, float, Counter[str]]], args: argparse.Namespace) -> str:
    plain_rps, plain_cost, plain_shares = rows["plain"]
    stream_rps, stream_cost, stream_shares = rows["stream"]

    def split(cost: float, shares: Counter[str]) -> dict[str, float]:
        total = sum(shares.values()) or 1
        return {c: cost * shares[c] / total for c in CATEGORIES}

    plain, stream = split(plain_cost, plain_shares), split(stream_cost, stream_shares)
    lines = [
        f"wrk -t1 -c32, {args.seconds:g} s x {args.rounds} rounds per mode, "
        f"{args.workers} workers, load average {wb.load_average()}",
        f"plain {plain_rps:.0f} req/s, {plain_cost:.0f} µs/request; stream ({wb.CHUNKS} chunks) "
        f"{stream_rps:.0f} req/s, {stream_cost:.0f} µs/request, "
        f"{(stream_cost - plain_cost) / wb.CHUNKS:.0f} µs/chunk",
        "",
        "| category | plain µs/request | share | stream µs/request | µs per extra chunk |",
        "|---|---|---|---|---|",
    ]
    for category in CATEGORIES:
        share = plain[category] / plain_cost if plain_cost else 0
        per_chunk = (stream[category] - plain[category]) / wb.CHUNKS
        lines.append(
            f"| {category} | {plain[category]:.0f} | {share:.0%} | {stream[category]:.0f} "
            f"| {per_chunk:.1f} |"
        )
    lines.append(
        f"| **total** | **{plain_cost:.0f}** | 100% | **{stream_cost:.0f}** "
        f"| **{(stream_cost - plain_cost) / wb.CHUNKS:.1f}** |"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
