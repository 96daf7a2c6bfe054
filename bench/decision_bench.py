"""Decision cost against pool size: latency and Redis CPU per decision, per policy.

    python bench/decision_bench.py                  # 8, 64, 512, 2,048 backends; ~10 min on 2 busy cores
    python bench/decision_bench.py --quick          # 8 and 512 backends, fewer decisions
    python bench/decision_bench.py --tree /work/main --no-write   # the same, another checkout
    python bench/decision_bench.py --policies prefix_cache --occupied        # worst cases of
    python bench/decision_bench.py --policies prefix_cache --shared-prefix   # prefix_cache
    python bench/decision_bench.py --policies prefix_cache --precise   # lb_config.index: precise
    python bench/decision_bench.py --policies prefix_cache --prompt-blocks 190  # long prompts

Starts a dedicated Redis-compatible server on a free port. For each pool size,
policy and replica count it seeds the pool (every backend up, serving the
model, fresh metrics), then runs *replicas* client processes at once, each
one a real policy object (llmlbd.policy.registry, the worker's code) making
decisions back to back: ``pick`` (which reserves the lease) then ``release``.
Reported per cell:

* decision latency p50 / p99 (ms): the ``pick`` call as the proxy makes it,
  over every replica's decisions;
* Redis CPU per decision (ms): the server's used_cpu_sys + used_cpu_user
  delta over the cell, divided by the decisions (each one pick + release);
* client CPU per decision (ms): the replica processes' own CPU time over the
  cell (building the request, hashing its prompt, pick and release through
  redis-py), divided by the decisions;
* script time per decision (ms): INFO commandstats usec of EVALSHA/EVAL
  (every Redis call of a decision is a script). Unlike the CPU figure it
  leaves out the server's idle cost (cron, connections) that a slow decision
  rate spreads over fewer decisions, but it is wall time: on a loaded host it
  includes the server being descheduled mid-script;
* the host's 1-minute load average at the end of the cell (the machine is
  shared: latencies include waiting for a core, Redis CPU does not).

``--tree`` imports llmlbd from another checkout (e.g. main, for the figures
before a change). Results are printed as Markdown and written to the
``## Decision cost`` section of docs/benchmarks.md unless --no-write.
"""

from __future__ import annotations

import argparse
import inspect
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Decision cost"
POLICIES = ("global_least_request", "least_busy", "prefix_cache")
MODEL = "sim-llama"


def _import_tree(tree: Path) -> None:
    sys.path.insert(0, str(tree))


def seed_pool(url: str, pool: str, count: int, occupied: bool = False) -> None:
    """Every backend up, serving MODEL, with fresh idle metrics; nothing in flight. With
    *occupied*, every backend's prefix index already holds one entry (prefix_cache's
    worst case: no empty index to send a miss to, see docs/benchmarks.md)."""
    import redis

    from llmlbd.state.keys import PoolKeys

    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    keys = PoolKeys(pool)
    seconds, micros = client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.hset(
            keys.backend(f"b{i}"),
            mapping={
                "url": f"http://127.0.0.1:{20000 + i}",
                "health": "up",
                "models": MODEL,
                "scraped_at": now_ms,
                "waiting": 0,
                "running": 0,
                "kv_usage": 0.1,
                "num_gpu_blocks": 10000,
                "block_size": 16,
            },
        )
        if occupied:
            pipe.zadd(keys.prefix_owned_by(f"b{i}"), {"seed-entry": now_ms})
            pipe.pexpire(keys.prefix_owned_by(f"b{i}"), 3_600_000)
    pipe.execute()
    client.close()


def _policy(
    url: str, pool: str, policy: str, count: int, worker: str, precise: bool = False
) -> Any:
    import redis

    from llmlbd.config.loader import config_from_dict
    from llmlbd.policy.context import PolicyContext
    from llmlbd.policy.registry import load_policy_class
    from llmlbd.state.keys import PoolKeys
    from llmlbd.state.leases import Leases

    cfg = config_from_dict(
        {
            "lb_policy": policy,
            **({"lb_config": {"index": "precise"}} if precise else {}),
            "backends": [
                {"name": f"b{i}", "url": f"http://127.0.0.1:{20000 + i}"} for i in range(count)
            ],
        }
    )
    client = redis.Redis.from_url(url, decode_responses=True)
    keys = PoolKeys(pool)
    leases = Leases(client, keys, worker, 60_000)
    leases.heartbeat()
    # The metrics are seeded once per cell: a long staleness bound keeps them usable.
    ctx = PolicyContext(
        cfg.backends,
        cfg.lb_config,
        keys,
        leases,
        client,
        stale_after_ms=600_000,
        rng=random.Random(worker),
    )
    return load_policy_class(policy)(ctx)


# --shared-prefix: every conversation starts with this system prompt (~35 blocks).
SYSTEM = "You are the assistant of a large shop; answer briefly and politely. " * 35


# --precise: a completions prompt given as token ids (no tokenizer needed), 20 blocks of
# 16 tokens, one of 97 conversations: its first token says which. With --shared-prefix,
# after SHARED_IDS (4 blocks every backend holds: a system prompt spread over the pool).
SHARED_IDS = [(31 * t) % 30000 for t in range(64)]


def _precise_prompt(i: int, shared: bool = False) -> list[int]:
    own = [1000 + i % 97] + [(i % 97 * 7 + t) % 30000 for t in range(319)]
    return SHARED_IDS + own[: 320 - len(SHARED_IDS)] if shared else own


def _request(
    i: int, worker: str, shared: bool = False, precise: bool = False, prompt_blocks: int = 0
) -> Any:
    from llmlbd.request import RoutingRequest

    if precise:
        body = {"model": MODEL, "prompt": _precise_prompt(i, shared)}
        return RoutingRequest(f"{worker}-{i}", "POST", "/v1/completions", body, model=MODEL)

    # Distinct conversations: prefix_cache sees a miss-then-hit mix, not one hot prefix.
    text = f"conversation {i % 97} of {worker}: " + "tell me about load balancing. " * 20
    if prompt_blocks:  # --prompt-blocks: a long chat (blockChars = 64 characters a block)
        text = (text * (prompt_blocks * 64 // len(text) + 1))[: prompt_blocks * 64]
    messages = [{"role": "user", "content": text}]
    if shared:
        messages.insert(0, {"role": "system", "content": SYSTEM})
    # The conversation is a session too (the OpenAI `user` field: session_affinity's
    # sessions, a mix of new and returning ones); the other policies ignore it.
    body = {"model": MODEL, "messages": messages, "user": f"{worker}-conversation-{i % 97}"}
    return RoutingRequest(f"{worker}-{i}", "POST", "/v1/chat/completions", body, model=MODEL)


def seed_shared_prefix(url: str, pool: str, count: int) -> None:
    """Every backend already holds SYSTEM's levels, and other prompts branched off after
    it: the state a popular system prompt reaches once it has spread over the pool."""
    import redis

    from llmlbd.request import RoutingRequest
    from llmlbd.state.keys import PoolKeys

    chooser = _policy(url, pool, "prefix_cache", count, "bench:seed")
    body = {"model": MODEL, "messages": [{"role": "system", "content": SYSTEM}]}
    hashes = chooser.levels(
        RoutingRequest("seed", "POST", "/v1/chat/completions", body, model=MODEL)
    ).hashes
    client = redis.Redis.from_url(url, decode_responses=True)
    keys = PoolKeys(pool)
    seconds, micros = client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.zadd(keys.prefix_owned_by(f"b{i}"), {h: now_ms for h in hashes})
        pipe.pexpire(keys.prefix_owned_by(f"b{i}"), 3_600_000)
    for h in hashes:
        pipe.hset(keys.prefix(h), mapping={f"b{i}": now_ms for i in range(count)})
        pipe.pexpire(keys.prefix(h), 3_600_000)
    pipe.hset(keys.prefix(hashes[-1]), "#", count)
    pipe.execute()
    client.close()


def seed_kv_index(url: str, pool: str, count: int, shared: bool = False) -> None:
    """--precise: every backend's KV-event stream is live (for the whole cell), and each
    of the 97 conversations' blocks are held by one backend (conversation c by b{c % count},
    as its events would say); with *shared*, every backend also holds SHARED_IDS' blocks and
    the odd conversations are held by nobody (a new conversation on the shared prefix)."""
    import redis

    from llmlbd.state.keys import PoolKeys
    from llmlbd.state.kv_index import KVIndexWriter

    chooser = _policy(url, pool, "prefix_cache", count, "bench:seed", precise=True)
    client = redis.Redis.from_url(url, decode_responses=True)
    held: dict[int, list[int]] = {}
    for c in range(97):
        request = _request(c, "seed", shared=shared, precise=True)
        hashes = chooser.precise.block_hashes(request, frozenset()).hashes
        if not (shared and c % 2):  # shared: odd conversations are new (the prefix only)
            held.setdefault(c % count, []).extend(hashes)
    common = hashes[: len(SHARED_IDS) // 16] if shared else []
    for i in range(count):
        writer = KVIndexWriter(client, PoolKeys(pool), f"b{i}", "bench", 100_000, 3_600_000)
        blocks = common + held.get(i, [])
        writer.apply(["S", "gpu", len(blocks), *blocks] if blocks else [], 0, 0.0, 16)
    client.close()


def replica(
    args: tuple[str, str, str, str, int, int, int, bool, bool, int, Any, Any],
) -> tuple[list[float], float]:
    tree, url, pool, policy, count, warmup, decisions, shared, precise, blocks, ready, start = args
    _import_tree(Path(tree))
    worker = f"bench:{os.getpid()}:{random.getrandbits(24):06x}"
    chooser = _policy(url, pool, policy, count, worker, precise)
    leases = chooser.ctx.leases
    # The proxy reports each request's outcome with its release (outlier ejection);
    # a tree from before that (--tree) takes only the request id.
    outcome = ("ok",) if "outcome" in inspect.signature(leases.release).parameters else ()
    latencies: list[float] = []
    cpu = 0.0
    for i in range(warmup + decisions):
        if i == warmup:  # warm (scripts loaded, index built): measure from here, all at once
            ready.put(worker)
            start.wait()
            cpu = time.process_time()
        request = _request(i, worker, shared, precise, blocks)
        began = time.perf_counter()
        decision = chooser.pick(request, frozenset())
        took = time.perf_counter() - began
        if precise and decision.details.get("index") != "precise":  # not the fallback
            raise RuntimeError(f"--precise decided by {decision.details}")
        leases.release(decision.request_id, *outcome)
        if i >= warmup:
            latencies.append(took * 1000)
    return latencies, time.process_time() - cpu


def redis_cpu_s(url: str) -> tuple[float, float]:
    """(the server's CPU seconds, seconds spent running scripts) so far."""
    import redis

    client = redis.Redis.from_url(url)
    cpu = client.info("cpu")
    stats = client.info("commandstats")
    client.close()
    scripts = sum(float(stats.get(f"cmdstat_{c}", {}).get("usec", 0)) for c in ("evalsha", "eval"))
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]), scripts / 1e6


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_cell(
    tree: str,
    url: str,
    policy: str,
    count: int,
    replicas: int,
    decisions: int,
    occupied: bool = False,
    shared: bool = False,
    precise: bool = False,
    prompt_blocks: int = 0,
) -> dict[str, Any]:
    pool = "bench"
    seed_pool(url, pool, count, occupied)
    if shared and not precise:
        seed_shared_prefix(url, pool, count)
    if precise:
        seed_kv_index(url, pool, count, shared)
    ctx = multiprocessing.get_context("spawn")
    manager = ctx.Manager()
    ready, start = manager.Queue(), manager.Event()
    warmup = max(5, decisions // 10)
    with ctx.Pool(replicas) as workers:
        job = workers.map_async(
            replica,
            [
                (
                    tree,
                    url,
                    pool,
                    policy,
                    count,
                    warmup,
                    decisions,
                    shared,
                    precise,
                    prompt_blocks,
                    ready,
                    start,
                )
            ]
            * replicas,
        )
        for _ in range(replicas):
            ready.get(timeout=600)
        before = redis_cpu_s(url)
        start.set()
        results = job.get()
        after = redis_cpu_s(url)
    manager.shutdown()
    latencies = [x for r, _ in results for x in r]
    total = decisions * replicas
    return {
        "policy": policy,
        "backends": count,
        "replicas": replicas,
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 0.99),
        "cpu_ms": (after[0] - before[0]) * 1000 / total,
        "client_ms": sum(c for _, c in results) * 1000 / total,
        "script_ms": (after[1] - before[1]) * 1000 / total,
        "load": os.getloadavg()[0],
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| policy | backends | replicas | p50 (ms) | p99 (ms) | Redis CPU / decision (ms) "
        "| scripts / decision (ms) | client CPU / decision (ms) | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['backends']:,} | {r['replicas']} | {r['p50']:.2f} | "
            f"{r['p99']:.2f} | {r['cpu_ms']:.3f} | {r['script_ms']:.3f} | "
            f"{r['client_ms']:.3f} | {r['load']:.1f} |"
        )
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]]) -> str:
    """p99 and Redis CPU at the largest pool over the smallest, per policy and replicas."""
    lines = [
        "| policy | replicas | p99 ratio | Redis CPU ratio | script time ratio | target 1.5x |",
        "|---|---:|---:|---:|---:|---|",
    ]
    cells = {(r["policy"], r["replicas"], r["backends"]): r for r in rows}
    sizes = sorted({r["backends"] for r in rows})
    for policy in dict.fromkeys(r["policy"] for r in rows):
        for replicas in sorted({r["replicas"] for r in rows}):
            small, large = (
                cells.get((policy, replicas, sizes[0])),
                cells.get((policy, replicas, sizes[-1])),
            )
            if not small or not large:
                continue
            p99 = large["p99"] / small["p99"]
            cpu = large["cpu_ms"] / small["cpu_ms"]
            script = large["script_ms"] / small["script_ms"]
            met = "met" if p99 <= 1.5 and cpu <= 1.5 else "missed"
            lines.append(
                f"| {policy} | {replicas} | {p99:.2f} | {cpu:.2f} | {script:.2f} | {met} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--replicas", default="1,3")
    parser.add_argument("--decisions", type=int, default=0, help="per replica and cell")
    parser.add_argument("--tree", default=str(ROOT), help="checkout whose llmlbd is measured")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--occupied",
        action="store_true",
        help="every backend's prefix index starts with one entry (prefix_cache's worst case)",
    )
    parser.add_argument(
        "--shared-prefix",
        action="store_true",
        help="prompts start with one system prompt every backend already holds (with "
        "--precise: 4 blocks, and half the conversations are new)",
    )
    parser.add_argument(
        "--precise",
        action="store_true",
        help="lb_config.index: precise, every backend's KV-event index live and seeded",
    )
    parser.add_argument(
        "--prompt-blocks",
        type=int,
        default=0,
        help="each chat prompt is this many 64-character blocks (issue 13's workload 1: "
        "~190 for a 3,000-token context), one of 97 conversations per replica",
    )
    opts = parser.parse_args()
    _import_tree(Path(opts.tree))
    from llmlbd.embedded import EmbeddedRedis
    from tests.harness import free_port

    sizes = [int(s) for s in opts.sizes.split(",") if s] or (
        [8, 512] if opts.quick else [8, 64, 512, 2048]
    )
    decisions = opts.decisions or (200 if opts.quick else 500)
    rows = []
    with EmbeddedRedis(
        runtime_dir=tempfile.mkdtemp(prefix="decision-bench-"), port=free_port()
    ) as server:
        for policy in opts.policies.split(","):
            for count in sizes:
                for replicas in (int(r) for r in opts.replicas.split(",")):
                    row = run_cell(
                        opts.tree,
                        server.url,
                        policy,
                        count,
                        replicas,
                        decisions,
                        opts.occupied,
                        opts.shared_prefix,
                        opts.precise,
                        opts.prompt_blocks,
                    )
                    rows.append(row)
                    print(table([row]).splitlines()[-1], flush=True)
    command = "python bench/decision_bench.py " + " ".join(sys.argv[1:])
    text = (
        f"{SECTION}\n\n`{command.strip()}` ({decisions} decisions per replica and cell, each "
        "a `pick` then a `release`; a dedicated Redis; 2 shared cores).\n\n"
        + table(rows)
        + "\n\nLargest pool over smallest (the issue's target: within 1.5x):\n\n"
        + ratios(rows)
        + "\n"
    )
    print(text)
    if not opts.no_write:
        sys.path.insert(0, str(ROOT))  # this checkout's bench/, whatever --tree measured
        from bench.docsection import write_section

        write_section(SECTION, text)


if __name__ == "__main__":
    main()
