"""Proxy overhead: direct vs nginx vs vllm-router vs llmlbd in front of two zero-delay backends.

    python bench/overhead.py                     # 3 interleaved rounds, 5 s per cell
    python bench/overhead.py --rounds 5 --seconds 8 --connections 64
    python bench/overhead.py --targets direct,llmlbd --modes plain

The load generator is wrk (C, Debian package `wrk`), so that the client is not the
bottleneck; bench/wrk_chat.lua POSTs a 16-token chat completion (STREAM=1 for SSE).
The backends are bench/zero_backend.py processes, which answer at once (a stream's
16 events each in its own write, as a server generating tokens would).
"direct" drives each backend with its own wrk, the connections split evenly, and
sums their rates. Every target runs in every round, in the same order, plain then
streaming, so that a noisy moment on this shared machine hits all of them; each
figure is the median over the rounds, and each router's rate is reported as a
ratio to direct and to vllm-router.

llmlbd runs with its default config (request log on, 2 workers, embedded Redis
and collector); nginx with least_conn and keep-alive upstreams; vllm-router with
round_robin and RUST_LOG=warn. A target that cannot be installed or started is
listed as skipped with the reason.

Importable: ``run_overhead()`` returns the Markdown section; ``measure()`` the
figures (bench/proxy_bench.py may reuse both).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.peerbench.install import ensure_debian  # noqa: E402
from bench.peerbench.routers import RouterUnavailable, start_router  # noqa: E402
from bench.peerbench.stats import fmt, median, ratio  # noqa: E402
from bench.wrkbench import parse_wrk, wrk_popen, zero_backends  # noqa: E402

__all__ = [
    "Cell",
    "measure",
    "parse_wrk",
    "run_overhead",
    "overhead_table",
]  # parse_wrk: wrkbench's

TARGETS = ("direct", "nginx least_conn", "vllm-router round_robin", "llmlbd global_least_request")
MODES = ("plain", "streaming")


@dataclass
class Cell:
    """One (target, mode): the rounds' rates and latencies."""

    rates: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    errors: int = 0


def _run_cell(wrk: str, urls: list[str], connections: int, seconds: float, stream: bool) -> dict:
    """One wrk per URL, connections split evenly, all at once; rates summed."""
    share = max(1, connections // len(urls))
    procs = [wrk_popen(url, share, seconds, stream, wrk=wrk) for url in urls]
    parsed = [parse_wrk(p.communicate(timeout=seconds + 60)[0]) for p in procs]
    return {
        "rate": sum(p["rate"] for p in parsed),
        "p50_ms": max(p["p50_ms"] for p in parsed),
        "p99_ms": max(p["p99_ms"] for p in parsed),
        "errors": sum(p["errors"] for p in parsed),
    }


def measure(
    targets: tuple[str, ...] = TARGETS,
    modes: tuple[str, ...] = MODES,
    rounds: int = 3,
    seconds: float = 5.0,
    connections: int = 32,
    install: bool = True,
    progress: bool = True,
) -> tuple[dict[tuple[str, str], Cell], dict[str, str]]:
    """Interleaved rounds over every (target, mode); returns the cells and skipped targets."""
    wrk, reason = ensure_debian("wrk", "wrk", install)
    if wrk is None:
        return {}, {target: reason for target in targets}
    running, skipped = {}, {}
    with zero_backends(2) as ports:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        try:
            return _measure(
                urls,
                running,
                skipped,
                wrk,
                targets,
                modes,
                rounds,
                seconds,
                connections,
                install,
                progress,
            )
        finally:
            for router in running.values():
                router.stop()


def _measure(
    urls: list[str],
    running: dict,
    skipped: dict[str, str],
    wrk: str,
    targets: tuple[str, ...],
    modes: tuple[str, ...],
    rounds: int,
    seconds: float,
    connections: int,
    install: bool,
    progress: bool,
) -> tuple[dict[tuple[str, str], Cell], dict[str, str]]:
    """Start the routers, then every (target, mode) once per round, in the same order."""
    for target in targets:
        if target == "direct":
            continue
        try:
            running[target] = start_router(
                target, [(f"zero-{i}", u) for i, u in enumerate(urls)], ["sim-llama"], install
            )
        except RouterUnavailable as exc:
            skipped[target] = str(exc)
    cells: dict[tuple[str, str], Cell] = {}
    live = [t for t in targets if t == "direct" or t in running]
    total = rounds * len(modes) * len(live)
    bar = _progress(total) if progress else None
    for _ in range(rounds):
        for mode in modes:
            for target in live:
                target_urls = urls if target == "direct" else [running[target].url]
                result = _run_cell(wrk, target_urls, connections, seconds, mode == "streaming")
                cell = cells.setdefault((target, mode), Cell())
                cell.rates.append(result["rate"])
                cell.p50_ms.append(result["p50_ms"])
                cell.p99_ms.append(result["p99_ms"])
                cell.errors += result["errors"]
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return cells, skipped


def _progress(total: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="cell", desc="proxy overhead", dynamic_ncols=True)


def overhead_table(cells: dict[tuple[str, str], Cell]) -> str:
    head = (
        "| mode | target | req/s (median) | rounds (req/s) | vs direct | vs vllm-router "
        "| latency p50 / p99 (ms, median) | errors |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    modes = list(dict.fromkeys(mode for _, mode in cells))
    for mode in modes:
        direct = (
            median(cells[("direct", mode)].rates) if ("direct", mode) in cells else float("nan")
        )
        vr_cell = cells.get(("vllm-router round_robin", mode))
        vr = median(vr_cell.rates) if vr_cell else float("nan")
        for (target, cell_mode), cell in cells.items():
            if cell_mode != mode:
                continue
            rate = median(cell.rates)
            lines.append(
                f"| {mode} | {target} | {rate:,.0f} | {' '.join(f'{r:.0f}' for r in cell.rates)} "
                f"| {fmt(ratio(rate, direct))} | {fmt(ratio(rate, vr))} "
                f"| {fmt(median(cell.p50_ms))} / {fmt(median(cell.p99_ms))} | {cell.errors} |"
            )
    return "\n".join(lines)


def run_overhead(
    rounds: int = 3,
    seconds: float = 5.0,
    connections: int = 32,
    targets: tuple[str, ...] = TARGETS,
    modes: tuple[str, ...] = MODES,
    install: bool = True,
    progress: bool = True,
) -> str:
    """Measure, and return the Markdown section for docs/benchmarks.md."""
    cells, skipped = measure(targets, modes, rounds, seconds, connections, install, progress)
    command = (
        f"python bench/overhead.py --rounds {rounds} --seconds {seconds:g} "
        f"--connections {connections}"
    )
    parts = [
        "#### Proxy overhead",
        "",
        f"Command: `{command}` (also run by `bench/peers.py`). Two zero-delay backends "
        f"(`bench/zero_backend.py`, 16-token answers), wrk with 1 thread and "
        f"{connections} connections, {seconds:g} s per cell, {rounds} interleaved rounds; "
        "medians. wrk, the router and the backends share the 2 cores.",
        "",
    ]
    parts += [f"- **{t}** skipped: {why}" for t, why in skipped.items()]
    if cells:
        parts += ["", overhead_table(cells)]
    return "\n".join(parts).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    parser.add_argument("--modes", default=",".join(MODES), help="plain, streaming")
    parser.add_argument("--no-install", dest="install", action="store_false")
    args = parser.parse_args()
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    for target in targets:
        if target not in TARGETS:
            parser.error(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if set(modes) - set(MODES):
        parser.error(f"modes are {', '.join(MODES)}")
    print(run_overhead(args.rounds, args.seconds, args.connections, targets, modes, args.install))
    return 0


if __name__ == "__main__":
    sys.exit(main())
