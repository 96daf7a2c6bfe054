"""prefix_cache on a simulated fleet: hit rate, TTFT and throughput against other policies.

    python bench/prefix_bench.py                      # full run, a few minutes
    python bench/prefix_bench.py --quick              # one rate, short runs
    python bench/prefix_bench.py --write-docs         # also rewrite the prefix_cache
                                                      # section of docs/benchmarks.md
    python bench/prefix_bench.py --memory-only        # Redis memory per 1,000 conversations

Fleet: 8 ``llmlbd sim`` servers (L4 profile: a slow GPU with a small KV cache,
2,200 blocks of 16 tokens; --num-gpu-blocks changes it), a real Redis, and the
real collector publishing their metrics (queue, KV use, num_gpu_blocks) as in
production.

Workload: users (12 per request/s of the rate) hold multi-turn chats; each conversation starts with
one of a few long shared system prompts, lasts 3-8 turns, then the user
starts a new one. Requests arrive open-loop (Poisson, RATE per simulated
second); each arrival is the next turn of a random idle user (an arrival
finding no idle user is counted and skipped). Every request streams
``max_tokens`` tokens (ignore_eos), and the next turn carries the answer.

Routing runs in this process with the real policy classes and the real Lua
scripts (the code a proxy worker runs), then the request goes straight to
the chosen backend: the proxy's HTTP overhead is measured elsewhere
(bench/README.md) and would only eat this 2-core machine's CPU. Policies:
prefix_cache, global_least_request, round_robin, and an *oracle* that asks
every server for its true cache state (POST /debug/cache_match) and applies
prefix_cache's own rule (longest match within the same load bound, else
least loaded): it shows what a perfect index would achieve with the same
decision rule.

Figures: prefix-cache hit rate from the servers' own counters (hit tokens /
queried tokens), TTFT p50/p90 and output tokens/s, all in simulated time
(wall time divided by the time scale); each run starts on a fresh fleet and
an empty Redis.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # this script's own process only; nothing imports it

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import redis  # noqa: E402
import requests  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.docsection import write_section  # noqa: E402
from bench.peerbench.workloads import text  # noqa: E402
from llmlbd.config.loader import config_from_dict  # noqa: E402
from llmlbd.embedded import EmbeddedRedis  # noqa: E402
from llmlbd.policy.context import PolicyContext  # noqa: E402
from llmlbd.policy.framework import Decision  # noqa: E402
from llmlbd.policy.registry import load_policy_class  # noqa: E402
from llmlbd.request import RoutingRequest  # noqa: E402
from llmlbd.state.keys import PoolKeys  # noqa: E402
from llmlbd.state.leases import Leases  # noqa: E402
from tests.harness import Proc, free_port, python_module, wait_until  # noqa: E402
from tests.simfleet import SimFleet  # noqa: E402

MODEL = "sim-llama"


# -- workload ------------------------------------------------------------------------------
@dataclass
class User:
    index: int
    rng: random.Random
    messages: list[dict] = field(default_factory=list)
    turns_left: int = 0
    busy: bool = False

    def next_body(self, systems: list[str], max_tokens: int) -> dict:
        if self.turns_left == 0:
            self.messages = [{"role": "system", "content": self.rng.choice(systems)}]
            self.turns_left = self.rng.randint(3, 8)
        self.messages.append({"role": "user", "content": text(self.rng, self.rng.randint(60, 150))})
        self.turns_left -= 1
        return {
            "model": MODEL,
            "messages": list(self.messages),
            "stream": True,
            "max_tokens": max_tokens,
            "ignore_eos": True,
        }

    def answered(self, answer: str) -> None:
        self.messages.append({"role": "assistant", "content": answer})


# -- routing -------------------------------------------------------------------------------
class Oracle:
    """prefix_cache's decision rule on the servers' true cache state (not a real policy)."""

    name = "oracle"

    def __init__(self, ctx: PolicyContext, urls: dict[str, str], session: requests.Session):
        self.ctx = ctx
        self.urls = urls
        self.session = session
        lb = config_from_dict({"lb_policy": "prefix_cache"}).lb_config
        self.gap, self.ratio = lb.maxLoadGap, lb.maxLoadRatio
        self.min_tokens = lb.minMatchBlocks * 16

    def _match(self, name: str, body: dict) -> int:
        reply = self.session.post(self.urls[name] + "/debug/cache_match", json=body, timeout=10)
        return int(reply.json()["matched_tokens"])

    def pick(self, request: RoutingRequest, exclude: frozenset[str]) -> Decision:
        names = [b.name for b in self.ctx.backends]
        jobs = {n: gevent.spawn(self._match, n, request.body) for n in names}
        gevent.joinall(list(jobs.values()))
        matched = {n: job.value or 0 for n, job in jobs.items()}
        inflight = {n: int(self.ctx.client.hget(self.ctx.keys.inflight, n) or 0) for n in names}
        low = min(inflight.values())
        bound = max(low + self.gap, low * self.ratio)
        order = self.ctx.rng.sample(names, len(names))
        fits = [n for n in order if inflight[n] <= bound and matched[n] >= self.min_tokens]
        if fits:
            name = max(fits, key=lambda n: (matched[n], -inflight[n]))
        else:
            name = min(order, key=lambda n: inflight[n])
        assert self.ctx.leases is not None
        reservation = self.ctx.leases.acquire(request.request_id, name)
        return Decision(
            self.ctx.by_name[name], request.request_id, self.name, "oracle", reservation.inflight
        )


# -- one run -------------------------------------------------------------------------------
@dataclass
class RunResult:
    policy: str
    rate: float
    offered: int = 0
    skipped: int = 0
    completed: int = 0
    failed: int = 0
    ttft: list[float] = field(default_factory=list)
    output_tokens: int = 0
    duration: float = 0.0
    decision_ms: list[float] = field(default_factory=list)
    hits: int = 0
    queries: int = 0
    preemptions: int = 0
    per_backend: dict[str, int] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0

    def pct(self, q: float) -> float:
        if not self.ttft:
            return float("nan")
        data = sorted(self.ttft)
        return data[min(len(data) - 1, int(q * len(data)))]

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.duration if self.duration else 0.0

    max_tokens: int = 0

    @property
    def sustained(self) -> bool:
        """At least 95 % of the offered requests served (skipped and failed ones count
        against it) and the median request waited under one second for its first token."""
        return self.completed >= 0.95 * self.offered and self.pct(0.5) < 1.0


class BackendDied(RuntimeError):
    """A simulated server exited during a run (the run is repeated once)."""


def start_collector(redis_url: str, backends: list[dict]) -> Proc:
    config = {
        "redis": {"url": redis_url},
        "backends": backends,
        "lb_policy": "prefix_cache",
        "collector": {"interval_ms": 250, "metrics_port": 0},
        "logging": {"level": "warning"},
    }
    handle, path = tempfile.mkstemp(prefix="prefix-bench-", suffix=".yaml")
    with os.fdopen(handle, "w") as out:
        yaml.safe_dump(config, out)
    return Proc(python_module("llmlbd", "collector", "--config", path), name="collector")


def run_one(
    policy_name: str, rate: float, args: argparse.Namespace, redis_url: str, seed: int
) -> RunResult:
    # One client for every greenlet, as a proxy worker has: callers wait for a connection.
    client = redis.Redis(
        connection_pool=redis.BlockingConnectionPool.from_url(
            redis_url, decode_responses=True, max_connections=64, timeout=30
        )
    )
    client.flushall()
    result = RunResult(policy_name, rate, max_tokens=args.max_tokens)
    fleet = SimFleet(
        args.backends,
        time_scale=args.time_scale,
        profile=args.profile,
        num_gpu_blocks=args.num_gpu_blocks,
        mean_output_tokens=args.max_tokens,
    )
    collector = None
    fleet.start()
    try:
        backends = [{"name": n, "url": u} for n, u in zip(fleet.names, fleet.urls)]
        keys = PoolKeys("default")
        if args.collector:
            collector = start_collector(redis_url, backends)
            wait_until(
                lambda: all(client.hget(keys.backend(n), "num_gpu_blocks") for n in fleet.names),
                timeout=30,
                message="collector",
            )
        lb = {} if policy_name != "prefix_cache" else dict(args.lb or {})
        cfg = config_from_dict(
            {
                "lb_policy": "prefix_cache" if policy_name == "oracle" else policy_name,
                "backends": backends,
                "lb_config": lb,
            }
        )
        ctx = bench_context(cfg, client, keys, seed)
        leases = ctx.leases
        session = bench_session()
        urls = dict(zip(fleet.names, fleet.urls))
        policy = (
            Oracle(ctx, urls, session)
            if policy_name == "oracle"
            else load_policy_class(policy_name)(ctx)
        )

        drive(policy, result, args, fleet, session, urls, leases, seed)
        session.close()
    finally:
        if collector is not None:
            collector.stop(5)
        fleet.stop()
        client.close()
    return result


def bench_context(cfg, client, keys: PoolKeys, seed: int) -> PolicyContext:
    """The policy context a benchmark run decides with: real leases on the run's Redis."""
    leases = Leases(client, keys, f"bench-{os.getpid()}", 600_000)
    return PolicyContext(
        cfg.backends,
        cfg.lb_config,
        keys,
        leases,
        client,
        stale_after_ms=cfg.collector.stale_after_ms,
        rng=random.Random(seed),
    )


def bench_session() -> requests.Session:
    """One HTTP session for a run's many concurrent requests to the fleet."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=16, pool_maxsize=512)
    session.mount("http://", adapter)
    return session


def drive(policy, result: RunResult, args, fleet, session, urls, leases, seed: int) -> None:
    """Offer the multi-turn chat workload to *policy* at ``result.rate`` and fill *result* in
    (shared with bench/precise_bench.py)."""
    rate = result.rate
    systems = [
        text(random.Random(seed * 100 + i), args.system_words) for i in range(args.system_prompts)
    ]
    count = args.users or max(32, int(rate * args.users_per_rate))
    users = [User(i, random.Random(seed * 1000 + i)) for i in range(count)]
    scale = args.time_scale
    finished_at = [0.0]

    def one(user: User, request_index: int) -> None:
        body = user.next_body(systems, args.max_tokens)
        request = RoutingRequest(
            request_id=f"bench-{seed}-{request_index}",
            method="POST",
            path="/v1/chat/completions",
            body=body,
            model=MODEL,
        )
        arrived = time.perf_counter()
        decision = None
        try:
            decision = policy.pick(request, frozenset())
            result.decision_ms.append((time.perf_counter() - arrived) * 1000)
            name = decision.backend.name
            result.per_backend[name] = result.per_backend.get(name, 0) + 1
            first = None
            pieces = []
            with session.post(
                urls[name] + "/v1/chat/completions", json=body, stream=True, timeout=600
            ) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"HTTP {response.status_code}")
                for line in response.iter_lines():
                    if not line.startswith(b"data: ") or line == b"data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    choices = chunk.get("choices") or []
                    content = choices[0].get("delta", {}).get("content") if choices else None
                    if content:
                        if first is None:
                            first = time.perf_counter()
                        pieces.append(content)
                        result.output_tokens += 1
            result.ttft.append(((first or time.perf_counter()) - arrived) / scale)
            result.completed += 1
            user.answered("".join(pieces))
        except Exception as exc:
            result.failed += 1
            user.turns_left = 0
            if result.failed <= 3:
                print(f"  request failed: {exc}", flush=True)
        finally:
            if decision is not None:
                leases.release(decision.request_id)
            user.busy = False
            finished_at[0] = time.perf_counter()

    arrivals = random.Random(seed + 1)
    started = time.perf_counter()
    end = started + args.duration * scale
    next_at = started
    greenlets = []
    index = 0
    while True:
        next_at += arrivals.expovariate(rate) * scale
        if next_at >= end:
            break
        gevent.sleep(max(0.0, next_at - time.perf_counter()))
        result.offered += 1
        idle = [u for u in users if not u.busy]
        if not idle:
            result.skipped += 1
            continue
        user = arrivals.choice(idle)
        user.busy = True
        index += 1
        greenlets.append(gevent.spawn(one, user, index))
    gevent.joinall(greenlets, timeout=args.grace * scale)
    unfinished = [g for g in greenlets if not g.dead]
    gevent.killall(unfinished, block=True, timeout=5)
    result.failed += len(unfinished)
    result.duration = (max(finished_at[0], started) - started) / scale
    dead = [proc.name for proc in fleet.procs if proc.popen.poll() is not None]
    if dead:
        raise BackendDied(f"{', '.join(dead)} exited during the run")
    for url in fleet.urls:
        state = requests.get(url + "/debug/state", timeout=10).json()
        result.hits += state["prefix_cache_hits"]
        result.queries += state["prefix_cache_queries"]
        result.preemptions += state["preemptions"]


# -- Redis memory per 1,000 conversations -------------------------------------------------
def measure_memory(
    redis_url: str, conversations: int = 1000, turns: int = 4, system_words: int = 700
) -> dict:
    """Route *conversations* x *turns* chats through prefix_cache (no backend needed) and
    read Redis's used_memory before and after."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushall()
    names = [f"b{i}" for i in range(8)]
    cfg = config_from_dict(
        {
            "lb_policy": "prefix_cache",
            "backends": [
                {"name": n, "url": f"http://127.0.0.1:{9000 + i}"} for i, n in enumerate(names)
            ],
        }
    )
    keys = PoolKeys("default")
    leases = Leases(client, keys, "memory", 600_000)
    ctx = PolicyContext(cfg.backends, cfg.lb_config, keys, leases, client, rng=random.Random(1))
    policy = load_policy_class("prefix_cache")(ctx)
    systems = [text(random.Random(i), system_words) for i in range(4)]
    rng = random.Random(2)
    # load the script and settle the allocator before the baseline
    warm = RoutingRequest(
        "warm",
        "POST",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x" * 300}]},
        MODEL,
    )
    leases.release(policy.pick(warm, frozenset()).request_id)
    client.flushall()
    before = int(client.info("memory")["used_memory"])
    prompt_chars = 0
    for c in range(conversations):
        messages = [{"role": "system", "content": rng.choice(systems)}]
        for t in range(turns):
            messages.append({"role": "user", "content": text(rng, rng.randint(40, 110))})
            request = RoutingRequest(
                f"m-{c}-{t}",
                "POST",
                "/v1/chat/completions",
                {"model": MODEL, "messages": list(messages)},
                MODEL,
            )
            leases.release(policy.pick(request, frozenset()).request_id)
            messages.append({"role": "assistant", "content": text(rng, 60)})
        prompt_chars += sum(len(m["content"]) for m in messages[:-1])
    after = int(client.info("memory")["used_memory"])
    prefix_keys = sum(1 for _ in client.scan_iter(keys.prefix_pattern(), count=1000))
    owned = sum(client.zcard(keys.prefix_owned_by(n)) for n in names)
    client.close()
    return {
        "conversations": conversations,
        "turns": turns,
        "system_words": system_words,
        "bytes": after - before,
        "bytes_per_1000": (after - before) * 1000 // conversations,
        "prefix_keys": prefix_keys,
        "owned_entries": owned,
        "avg_last_prompt_chars": prompt_chars // conversations,
    }


# -- report --------------------------------------------------------------------------------
def table(results: list[RunResult]) -> str:
    lines = [
        "| rate (req/s) | policy | hit rate | TTFT p50 (s) | TTFT p90 (s) | output tok/s "
        "| done / sent | skipped | failed | preemptions | decision ms (wall, mean) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r.rate:g} | {r.policy} | {r.hit_rate:.1%} | {r.pct(0.5):.2f} | {r.pct(0.9):.2f} "
            f"| {r.tokens_per_s:.0f} | {r.completed} / {r.offered - r.skipped} | {r.skipped} "
            f"| {r.failed} | {r.preemptions} | "
            f"{statistics.fmean(r.decision_ms) if r.decision_ms else 0:.1f} |"
        )
    return "\n".join(lines)


def verdict(results: list[RunResult]) -> list[str]:
    by = {(r.policy, r.rate): r for r in results}
    rates = sorted({r.rate for r in results})
    sustained = [
        rate
        for rate in rates
        if ("prefix_cache", rate) in by and by[("prefix_cache", rate)].sustained
    ]
    if not sustained:
        return [
            "prefix_cache sustained none of the rates (< 95 % of the offered requests "
            "served, or median TTFT of 1 s or more)."
        ]
    top = sustained[-1]
    out = [
        f"Highest rate prefix_cache sustained (>= 95 % of the offered requests served, "
        f"median TTFT under 1 s): {top:g} req/s."
    ]
    pc = by[("prefix_cache", top)]
    if ("oracle", top) in by:
        oracle = by[("oracle", top)]
        gap = (oracle.hit_rate - pc.hit_rate) / oracle.hit_rate if oracle.hit_rate else 0.0
        out.append(
            f"Hit rate {pc.hit_rate:.1%} vs oracle {oracle.hit_rate:.1%}: "
            f"{gap:+.1%} below the oracle (target: within 10 %) -> "
            f"{'met' if gap <= 0.10 else 'MISSED'}."
        )
    if ("round_robin", top) in by:
        rr = by[("round_robin", top)]
        ratio = rr.pct(0.9) / pc.pct(0.9) if pc.pct(0.9) else float("nan")
        out.append(
            f"TTFT p90 {pc.pct(0.9):.2f} s vs round_robin {rr.pct(0.9):.2f} s: "
            f"{ratio:.1f}x better (target: >= 2x) -> {'met' if ratio >= 2 else 'MISSED'}."
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", type=int, default=8)
    parser.add_argument("--profile", default="l4-llama3-8b")
    parser.add_argument(
        "--num-gpu-blocks",
        type=int,
        default=2200,
        help="KV blocks (16 tokens) per server: 2200 (35k tokens) is the L4 profile's own",
    )
    parser.add_argument("--time-scale", type=float, default=0.5)
    parser.add_argument("--rates", default="6,12,18,24", help="requests per simulated second")
    parser.add_argument(
        "--duration", type=float, default=45.0, help="simulated seconds of arrivals"
    )
    parser.add_argument(
        "--grace", type=float, default=30.0, help="simulated seconds allowed after the last arrival"
    )
    parser.add_argument(
        "--users",
        type=int,
        default=0,
        help="users in the run (default 0: --users-per-rate x rate, at least 32)",
    )
    parser.add_argument(
        "--users-per-rate",
        type=float,
        default=12.0,
        help="users per request/s: each user sends a turn about every 12 s",
    )
    parser.add_argument("--system-prompts", type=int, default=4)
    parser.add_argument("--system-words", type=int, default=800, help="about a token a word")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument(
        "--policies", default="prefix_cache,oracle,global_least_request,round_robin"
    )
    parser.add_argument("--no-collector", dest="collector", action="store_false")
    parser.add_argument(
        "--lb",
        type=json.loads,
        default=None,
        help="extra lb_config for prefix_cache, JSON, e.g. '{\"maxLoadGap\": 8}'",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="one rate, 30 s of arrivals")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rates, args.duration = "12", 30.0

    # Import every policy now, so that the whole run uses the same code.
    for name in args.policies.split(","):
        if name != "oracle":
            load_policy_class(name)
    server = EmbeddedRedis(
        runtime_dir=tempfile.mkdtemp(prefix="prefix-bench-redis-"), port=free_port()
    )
    server.start()
    try:
        memory = measure_memory(server.url)
        print(
            f"Redis memory: {memory['bytes_per_1000'] / 1e6:.1f} MB per 1,000 conversations "
            f"({memory})",
            flush=True,
        )
        if args.memory_only:
            return 0
        results = []
        for rate in [float(x) for x in args.rates.split(",")]:
            for policy in args.policies.split(","):
                t0 = time.perf_counter()
                try:
                    result = run_one(policy, rate, args, server.url, args.seed)
                except BackendDied as exc:
                    print(f"  {exc}: running it again", flush=True)
                    result = run_one(policy, rate, args, server.url, args.seed)
                results.append(result)
                print(
                    f"rate {rate:g} {policy:22s} hit {result.hit_rate:6.1%}  "
                    f"ttft p50 {result.pct(0.5):6.2f}s p90 {result.pct(0.9):6.2f}s  "
                    f"tok/s {result.tokens_per_s:6.0f}  done {result.completed}/"
                    f"{result.offered - result.skipped} skipped {result.skipped} failed "
                    f"{result.failed}  spread {sorted(result.per_backend.values())}  "
                    f"({time.perf_counter() - t0:.0f} s wall)",
                    flush=True,
                )
    finally:
        server.stop()
    report = table(results)
    lines = verdict(results)
    print()
    print(report)
    print()
    print("\n".join(lines))
    if args.write_docs:
        command = "python bench/prefix_bench.py " + " ".join(sys.argv[1:])
        write_section("## prefix_cache", section_text(args, command, report, lines, memory))
    return 0


def section_text(args, command, report, verdict_lines, memory) -> str:
    users = (
        f"{args.users} users"
        if args.users
        else f"{args.users_per_rate:g} users per request/s of the rate (at least 32)"
    )
    return f"""## prefix_cache

Command: `{command}` ({time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, 2-core VM).

Fleet: {args.backends} `llmlbd sim` servers, profile `{args.profile}`, {args.num_gpu_blocks}
KV blocks of 16 tokens each, time scale {args.time_scale:g}; the real collector publishes
their metrics to Redis. Workload: {users}, in multi-turn chats (3-8 turns) over
{args.system_prompts} shared system prompts of about {args.system_words} words; Poisson
arrivals for {args.duration:g} simulated seconds per run; {args.max_tokens} output tokens per
request. An arrival that finds every user waiting for an answer is skipped (counted).
Times and rates are simulated (wall time / time scale), except the decision time. The
oracle applies prefix_cache's decision rule to the servers' true cache state (its decision
time is its fan-out to 8 servers, and it is in its TTFT). Hit rate = hit tokens / queried
tokens, from the servers' counters. Each run starts with a fresh fleet and an empty Redis.

{report}

{chr(10).join("- " + line for line in verdict_lines)}

Redis memory per 1,000 active conversations ({memory["turns"]} turns each, system prompts of
{memory["system_words"]} words, last prompt ~{memory["avg_last_prompt_chars"]:,} characters):
**{memory["bytes_per_1000"] / 1e6:.1f} MB** ({memory["prefix_keys"]:,} prefix keys,
{memory["owned_entries"]:,} owned-index entries; `used_memory` delta, default settings).
"""


if __name__ == "__main__":
    sys.exit(main())
