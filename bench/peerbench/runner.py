"""One run: a fresh fleet, one router in front of it, one workload at one rate.

Every run starts a fresh fleet (empty caches) and a fresh router (no routing state
carried over from another run). The servers' own counters (``/debug/state``:
prefix-cache hit and queried tokens, requests served) are read after the
warm-up and at the end; their difference gives the hit rate and the spread.
The router's CPU seconds are those of its whole process session over the
measured part; its RSS is read at the end.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

import requests

from bench.peerbench.install import cache_dir
from bench.peerbench.loadgen import Director, run_load, warm_up
from bench.peerbench.procstat import (
    session_cpu_by_program,
    session_cpu_seconds,
    session_rss_bytes,
)
from bench.peerbench.results import RunSummary, summarize
from bench.peerbench.routers import RouterUnavailable, sim_options_for, start_router
from bench.peerbench.scenarios import Scenario
from bench.peerbench.stats import percentile, ratio
from bench.peerbench.workloads import MODEL
from tests.simfleet import SimFleet

__all__ = ["run_one"]


def _counters(urls: list[str]) -> list[dict]:
    return [requests.get(url + "/debug/state", timeout=10).json() for url in urls]


def _fleet(scenario: Scenario, router: str) -> SimFleet:
    options = dict(scenario.sim_options)
    options.update(sim_options_for(router))
    options["model_path"] = str(cache_dir() / "sim-tokenizer")
    return SimFleet(
        len(scenario.servers),
        servers=[dict(s) for s in scenario.servers],
        time_scale=scenario.time_scale,
        **options,
    )


def models_of(scenario: Scenario) -> list[str]:
    loras = dict(scenario.sim_options).get("lora")
    return [MODEL] + (str(loras).split(",") if loras else [])


def run_one(
    scenario: Scenario,
    router: str,
    rate: float,
    seed: int,
    duration_s: float | None = None,
    install: bool = True,
    on_done=None,
) -> RunSummary:
    """Run *router* on *scenario* at *rate* (0: closed loop). Raises RouterUnavailable."""
    duration = duration_s or scenario.duration_s
    with _fleet(scenario, router) as fleet:
        running = start_router(
            router, list(zip(fleet.names, fleet.urls)), models_of(scenario), install
        )
        director = Director(running.url, running.headers, fleet.urls, scenario.time_scale)
        try:
            population = scenario.population(seed)
            if scenario.warm_up:
                warm_up(population, director)
            before = _counters(fleet.urls)
            cpu_before = session_cpu_seconds(running.session) if running.session else math.nan
            split_before = session_cpu_by_program(running.session) if running.session else {}
            records, offered, skipped, took = run_load(
                population, director, rate, duration, seed, on_done=on_done
            )
            cpu = session_cpu_seconds(running.session) - cpu_before if running.session else math.nan
            rss = session_rss_bytes(running.session) if running.session else math.nan
            split = session_cpu_by_program(running.session) if running.session else {}
            after = _counters(fleet.urls)
            dead = [p.name for p in fleet.procs if p.popen.poll() is not None]
            if running.session and not _alive(running.session):
                raise RouterUnavailable("the router exited during the run")
        finally:
            director.close()
            running.stop()
    summary = summarize(router, scenario.name, rate, records, offered, skipped, max(took, duration))
    hits = sum(a["prefix_cache_hits"] - b["prefix_cache_hits"] for a, b in zip(after, before))
    queries = sum(
        a["prefix_cache_queries"] - b["prefix_cache_queries"] for a, b in zip(after, before)
    )
    summary.hit_rate = ratio(hits, queries)
    summary.spread = [a["requests_total"] - b["requests_total"] for a, b in zip(after, before)]
    summary.cpu_s_per_1000 = ratio(cpu * 1000, len(records)) if records else math.nan
    summary.rss_mb = rss / 1e6
    summary.cpu_split = {
        name: round((seconds - split_before.get(name, 0.0)) * 1000 / len(records), 2)
        for name, seconds in split.items()
        if records
    }
    if dead:
        summary.note = f"server(s) exited: {', '.join(dead)}"
    if running.log_path is not None:
        summary.reasons, ttfb = request_log(running.log_path)
        summary.router_ttfb_ms = [percentile(ttfb, 0.5), percentile(ttfb, 0.9)]
    return summary


def request_log(log_path: Path) -> tuple[dict[str, int], list[float]]:
    """From llmlbd's request log (warm-up included): how often each decision reason came up,
    and each request's ttfb_ms (wall ms from its arrival to the backend's first body byte,
    which a streaming vLLM sends with the first token: prefill included)."""
    reasons: Counter[str] = Counter()
    ttfb: list[float] = []
    for line in log_path.read_text(errors="replace").splitlines():
        if '"request_done"' in line:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            reasons[str(entry.get("reason"))] += 1
            if isinstance(entry.get("ttfb_ms"), (int, float)):
                ttfb.append(float(entry["ttfb_ms"]))
    return dict(reasons.most_common()), ttfb


def _alive(session: int) -> bool:
    from bench.peerbench.procstat import session_pids

    return bool(session_pids(session))


def settle(seconds: float = 1.0) -> None:
    """A pause between runs, so one run's exiting processes do not cost the next one CPU."""
    time.sleep(seconds)
