"""llmlbd side by side with the routers users would pick instead, on one simulated fleet.

    python bench/peers.py                          # the recorded run (about 25 minutes)
    python bench/peers.py --write-docs             # ... and rewrite docs/benchmarks.md + docs/img
    python bench/peers.py --scenarios kv-pressure --routers "llmlbd prefix_cache,oracle"
    python bench/peers.py --list                   # scenarios, routers, what is installed
    python bench/peers.py --from-json FILE --write-docs   # rebuild the docs from a saved run

Each peer is installed into its own venv under ${XDG_CACHE_HOME:-~/.cache}/llmlbd-bench/
(pinned versions; nginx and wrk from Debian); a router that cannot be installed or
started is reported as skipped with the reason. Every run starts a fresh fleet of
`llmlbd sim` servers and a fresh router, sends a seeded workload and reads the
servers' own counters. The proxy-overhead part (wrk, zero-delay backends) is
bench/overhead.py, which this command also runs unless --no-overhead.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # this script's own process only

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.peerbench.install import cache_dir, ensure_bench_requirements  # noqa: E402
from bench.peerbench.report import (  # noqa: E402
    failure_lines,
    plot_scenario,
    rate_label,
    reason_lines,
    scenario_table,
    skipped_lines,
    verdicts,
)
from bench.peerbench.results import RunSummary  # noqa: E402
from bench.peerbench.routers import ALL_ROUTERS, RouterUnavailable  # noqa: E402
from bench.peerbench.runner import run_one, settle  # noqa: E402
from bench.peerbench.scenarios import SCENARIOS  # noqa: E402
from bench.peerbench.stats import fmt  # noqa: E402

BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
STOPPING: list[int] = []  # exit codes of the signals received


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Scenarios: " + ", ".join(SCENARIOS) + ". Routers: " + ", ".join(ALL_ROUTERS),
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument(
        "--routers",
        default="",
        help="comma-separated router labels (default: each scenario's own set)",
    )
    parser.add_argument(
        "--rates", default="", help="override every scenario's rates (req/s; 0 = closed loop)"
    )
    parser.add_argument("--duration", type=float, default=0.0, help="simulated seconds per run")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-install", dest="install", action="store_false")
    parser.add_argument("--no-overhead", dest="overhead", action="store_false")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--from-json", default="", help="report a saved run instead of running")
    parser.add_argument("--out", default="", help="results JSON (default: the cache directory)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds: shared-system on 2 fast servers at one rate (the test suite's run)",
    )
    parser.add_argument(
        "--llmlbd-lb-config",
        default="",
        help="JSON object of lb_config keys for the llmlbd routers (e.g. '{\"maxLoadGap\": 16}'; "
        "default: llmlbd's defaults)",
    )
    parser.add_argument(
        "--llmlbd-config",
        default="",
        help="JSON object of other config sections for the llmlbd routers, merged per section "
        '(e.g. \'{"collector": {"interval_ms": 1000}}\'; default: llmlbd\'s defaults)',
    )
    parser.add_argument("--list", action="store_true", help="print scenarios and routers, exit")
    return parser.parse_args(argv)


SMOKE = dataclasses.replace(
    SCENARIOS["shared-system"],
    name="smoke",
    workload="shared-system",
    title="Smoke: shared system prompts on 2 fast servers",
    servers=({}, {}),
    rates=(6.0,),
    duration_s=3.0,
    time_scale=0.5,
    routers=("llmlbd prefix_cache", "oracle"),
)


def scenario_named(name: str):
    return SMOKE if name == "smoke" else SCENARIOS[name]


def plan(args: argparse.Namespace) -> list[tuple[str, str, float]]:
    """(scenario, router, rate) in run order: rate by rate, the routers of a rate back to back."""
    runs = []
    chosen = [r.strip() for r in args.routers.split(",") if r.strip()]
    names = ["smoke"] if args.smoke else [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for name in names:
        if name not in SCENARIOS and name != "smoke":
            raise SystemExit(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
        scenario = scenario_named(name)
        routers = chosen or list(scenario.routers or ALL_ROUTERS)
        for router in routers:
            if router not in ALL_ROUTERS:
                raise SystemExit(f"unknown router {router!r}; known: {', '.join(ALL_ROUTERS)}")
        rates = [float(r) for r in args.rates.split(",")] if args.rates else scenario.rates
        runs += [(name, router, rate) for rate in rates for router in routers]
    return runs


def run_all(args: argparse.Namespace) -> dict:
    runs = plan(args)
    results: list[RunSummary] = []
    skipped: dict[str, str] = {}
    broken: list[str] = []
    bar = None
    if args.progress:
        from tqdm import tqdm

        bar = tqdm(total=len(runs), unit="run", dynamic_ncols=True)
    started = time.time()
    loads = []
    for scenario_name, router, rate in runs:
        if STOPPING:
            raise SystemExit(STOPPING[0])
        if bar is not None:
            bar.set_description(f"{scenario_name} {router} @ {rate_label(rate)}")
        if router in skipped:
            if bar is not None:
                bar.update(1)
            continue
        try:
            summary = _run_with_retry(args, scenario_name, router, rate, bar)
            results.append(summary)
            _echo(bar, _line(summary))
        except RouterUnavailable as exc:
            skipped[router] = str(exc)
            _echo(bar, f"SKIPPED {router}: {exc}")
        except Exception as exc:  # a run that broke twice is reported, the others go on
            broken.append(f"{scenario_name} / {router} / {rate_label(rate)}: {exc}")
            _echo(bar, f"BROKEN {broken[-1]}")
        loads.append(os.getloadavg()[0])
        settle(0.5)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "minutes": round((time.time() - started) / 60, 1),
        "load_average": [round(min(loads), 1), round(max(loads), 1)] if loads else [],
        "command": "python bench/peers.py " + " ".join(sys.argv[1:]),
        "results": [r.to_dict() for r in results],
        "skipped": skipped,
        "broken": broken,
    }


def _run_with_retry(args, scenario_name: str, router: str, rate: float, bar) -> RunSummary:
    """One run; a second try when the first breaks. On a machine shared with other test
    suites a free port can be taken between finding it and binding it."""
    for attempt in (1, 2):
        try:
            return run_one(
                scenario_named(scenario_name),
                router,
                rate,
                args.seed,
                duration_s=args.duration or None,
                install=args.install,
            )
        except Exception as exc:
            if attempt == 2:
                raise
            _echo(bar, f"retrying {scenario_name} / {router} / {rate_label(rate)} after: {exc}")
            settle(3)
    raise AssertionError("unreachable")


def _line(s: RunSummary) -> str:
    return (
        f"{s.scenario} {s.router:28s} rate {rate_label(s.rate):>6}  ttft p50/p90 "
        f"{fmt(s.ttft_p50)}/{fmt(s.ttft_p90)} s  hit {fmt(s.hit_rate * 100, 1)} %  "
        f"done {s.completed} failed {s.failed} shed {s.shed} skipped {s.skipped}  "
        f"cpu/1k {fmt(s.cpu_s_per_1000, 1)} s  rss {fmt(s.rss_mb, 0)} MB {s.note}"
    )


def _echo(bar, text: str) -> None:
    if bar is not None:
        bar.write(text)
    else:
        print(text, flush=True)


def render(run: dict, overhead_md: str, img_dir: Path) -> str:
    """The generated part of docs/benchmarks.md's peers section; plots go to *img_dir*."""
    results = [RunSummary.from_dict(r) for r in run["results"]]
    load = run.get("load_average") or ["?", "?"]
    parts = [
        f"Command: `{run['command']}` (started {run['started']}, {run['minutes']} min, "
        f"1-minute load average {load[0]} to {load[-1]} between runs; 2-core VM).",
        "",
    ]
    if run["skipped"]:
        parts += skipped_lines(run["skipped"]) + [""]
    for line in run.get("broken", []):
        parts.append(f"- run broken twice, not in the tables: {line}")
    for name, scenario in [*SCENARIOS.items(), ("smoke", SMOKE)]:
        rows = [r for r in results if r.scenario == name]
        if not rows:
            continue
        image = img_dir / f"peers-{name}.png"
        plot_scenario(scenario.title, rows, image, scenario.kv_bound)
        parts += [
            f"#### {scenario.title}",
            "",
            scenario.about + f" Time scale {scenario.time_scale:g}; "
            f"{scenario.duration_s:g} simulated seconds of arrivals per run.",
            "",
            scenario_table(rows, tiers=name == "tiers"),
            "",
            f"![{scenario.title}](img/{image.name})",
            "",
        ]
        failures = failure_lines(rows)
        if failures:
            parts += ["Failed requests and notes:", ""] + failures + [""]
        reasons = reason_lines(rows)
        if reasons:
            parts += ["llmlbd's decision reasons (its request log, warm-up included):", ""]
            parts += reasons + [""]
        lines = verdicts(name, rows)
        if lines:
            parts += ["Targets:", ""] + [f"- {line}" for line in lines] + [""]
    if overhead_md:
        parts += [overhead_md, ""]
    return "\n".join(parts).rstrip() + "\n"


def write_docs(generated: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    current = path.read_text()
    block = f"{BEGIN}\n{generated}{END}"
    if BEGIN in current:
        current = re.sub(
            re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, current, flags=re.S
        )
    else:
        current = current.rstrip() + "\n\n## Peers\n\n" + block + "\n"
    path.write_text(current)


def _exit_on_signals() -> None:
    """SIGTERM and SIGINT raise SystemExit in the main greenlet, so that it unwinds through
    every run's cleanup (fleets and routers stopped). gevent runs signal handlers in a
    greenlet of their own, where an exception would reach nobody."""
    main = gevent.getcurrent()

    def stop(code: int) -> None:
        STOPPING.append(code)  # checked between runs, in case a library swallows the exit
        gevent.kill(main, SystemExit(code))

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop, 128 + signum)


def main(argv: list[str] | None = None) -> int:
    _exit_on_signals()
    args = parse_args(argv)
    if args.list:
        for name, scenario in SCENARIOS.items():
            print(f"{name}: {scenario.title}; rates {', '.join(map(rate_label, scenario.rates))}")
            print(f"    routers: {', '.join(scenario.routers or ALL_ROUTERS)}")
        return 0
    ensure_bench_requirements()
    if args.llmlbd_lb_config:
        from bench.peerbench import routers

        routers.LLMLBD_LB_CONFIG.update(json.loads(args.llmlbd_lb_config))
    if args.llmlbd_config:
        from bench.peerbench import routers

        routers.LLMLBD_CONFIG.update(json.loads(args.llmlbd_config))
    if args.from_json:
        run = json.loads(Path(args.from_json).read_text())
    else:
        run = run_all(args)
        out = (
            Path(args.out)
            if args.out
            else cache_dir() / "results" / time.strftime("peers-%Y%m%d-%H%M%S.json")
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(run, indent=1))
        print(f"results: {out}")
    overhead_md = run.get("overhead_md", "")
    if args.overhead and not args.from_json and not args.smoke:
        from bench.overhead import run_overhead

        overhead_md = run_overhead(install=args.install, progress=args.progress)
        run["overhead_md"] = overhead_md
        out.write_text(json.dumps(run, indent=1))
    # Plots land in docs/img only when the docs are rewritten too.
    img_dir = ROOT / "docs" / "img" if args.write_docs else cache_dir() / "img"
    generated = render(run, overhead_md, img_dir)
    print(generated)
    if args.write_docs:
        write_docs(generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
