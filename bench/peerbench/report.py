"""Tables, target verdicts and plots of the peer benchmark (tables and verdicts are pure)."""

from __future__ import annotations

import math
from pathlib import Path

from bench.peerbench.results import RunSummary
from bench.peerbench.stats import fmt, relative_gap

__all__ = [
    "failure_lines",
    "plot_scenario",
    "rate_label",
    "reason_lines",
    "scenario_table",
    "skipped_lines",
    "verdicts",
]

PEER_PREFIXES = ("vllm-router", "sglang-router", "litellm", "nginx")
# Process names as runs before procstat read redis-server's rewritten title recorded them.
_PROGRAMS = {"redis.sock": "redis-server", "llmlbd": "llmlbd (gunicorn master + workers)"}


def rate_label(rate: float) -> str:
    return "closed" if rate == 0 else f"{rate:g}"


def _order(rate: float) -> float:
    return math.inf if rate == 0 else rate  # closed loop last


def scenario_table(rows: list[RunSummary], tiers: bool = False) -> str:
    """One Markdown row per (rate, router), in the order they were given within a rate."""
    head = (
        "| rate (req/s) | router | TTFT p50 / p90 / p99 (s) | ITL p50 / p99 (ms) | output tok/s "
        "| done / failed / shed | skipped | hit rate | router CPU s per 1k req | router RSS (MB) "
        "| requests per server |"
    )
    if tiers:
        head += " critical TTFT p90 (s) | critical shed |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in sorted(rows, key=lambda r: _order(r.rate)):
        cells = [
            rate_label(row.rate),
            row.router,
            f"{fmt(row.ttft_p50)} / {fmt(row.ttft_p90)} / {fmt(row.ttft_p99)}",
            f"{fmt(row.itl_p50 * 1000, 0)} / {fmt(row.itl_p99 * 1000, 0)}",
            fmt(row.output_tok_s, 0),
            f"{row.completed} / {row.failed} / {row.shed}",
            str(row.skipped),
            fmt(row.hit_rate * 100, 1, " %"),
            fmt(row.cpu_s_per_1000, 1),
            fmt(row.rss_mb, 0),
            # the servers count inference requests only (embeddings show as "-")
            " ".join(str(n) for n in row.spread) if sum(row.spread) else "-",
        ]
        if tiers:
            cells += [fmt(row.critical_ttft_p90), str(row.critical_shed)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reason_lines(rows: list[RunSummary]) -> list[str]:
    """llmlbd's own account of its decisions (its request log), one line per run."""
    out = []
    for row in sorted(rows, key=lambda r: _order(r.rate)):
        if row.reasons:
            counts = ", ".join(f"{reason} {n}" for reason, n in row.reasons.items())
            line = f"- {row.router} at {rate_label(row.rate)}: {counts}"
            if len(row.router_ttfb_ms) == 2:
                p50, p90 = row.router_ttfb_ms
                line += (
                    f"; ttfb_ms (arrival to the backend's first body byte, prefill included) "
                    f"p50 {fmt(p50, 0)} / p90 {fmt(p90, 0)} ms (wall)"
                )
            if row.cpu_split:
                parts = ", ".join(
                    f"{_PROGRAMS.get(name, name)} {seconds:g}"
                    for name, seconds in row.cpu_split.items()
                )
                line += f"; CPU s per 1k requests by process: {parts}"
            out.append(line)
    return out


def failure_lines(rows: list[RunSummary]) -> list[str]:
    """Why the failed requests failed, for the runs that had any."""
    out = []
    for row in sorted(rows, key=lambda r: _order(r.rate)):
        if row.failures:
            counts = ", ".join(f"{n} {why}" for why, n in sorted(row.failures.items()))
            out.append(f"- {row.router} at {rate_label(row.rate)}: {counts}")
        if row.note:
            out.append(f"- {row.router} at {rate_label(row.rate)}: {row.note}")
    return out


def skipped_lines(skipped: dict[str, str]) -> list[str]:
    return [f"- **{router}** skipped: {reason}" for router, reason in sorted(skipped.items())]


def _is_peer(router: str) -> bool:
    return router.startswith(PEER_PREFIXES)


def _by_rate(rows: list[RunSummary]) -> dict[float, dict[str, RunSummary]]:
    table: dict[float, dict[str, RunSummary]] = {}
    for row in rows:
        table.setdefault(row.rate, {})[row.router] = row
    return table


def verdicts(scenario: str, rows: list[RunSummary]) -> list[str]:
    """The issue's targets for *scenario*, checked against the measured rows."""
    out: list[str] = []
    for rate, runs in sorted(_by_rate(rows).items(), key=lambda item: _order(item[0])):
        label = f"rate {rate_label(rate)}"
        if scenario.startswith("kv-pressure"):
            out += _kv_verdict(label, runs)
        elif scenario in ("shared-system", "single-shot"):
            out += _peer_gap_verdict(label, runs)
        elif scenario == "tiers":
            out += _tiers_verdict(label, runs)
    return out


def _met(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def _best_other(runs: dict[str, RunSummary], ours: RunSummary, key) -> RunSummary | None:
    """The router other than *ours* (and the oracle, which is no router) with the lowest key."""
    others = [r for name, r in runs.items() if name not in (ours.router, "oracle")]
    return min(others, key=lambda r: _nan_last(key(r))) if others else None


def _kv_verdict(label: str, runs: dict[str, RunSummary]) -> list[str]:
    ours = runs.get("llmlbd prefix_cache")
    if ours is None:
        return []
    out = []
    best_p90 = _best_other(runs, ours, lambda r: r.ttft_p90)
    best_tput = _best_other(runs, ours, lambda r: -r.completed_per_s)
    if best_p90 is not None and best_tput is not None:
        out.append(
            f"{label}: TTFT p90 {fmt(ours.ttft_p90)} s, best other {best_p90.router} "
            f"{fmt(best_p90.ttft_p90)} s -> "
            f"{_met(ours.ttft_p90 <= best_p90.ttft_p90)}; completed {fmt(ours.completed_per_s)}"
            f"/s, best other {best_tput.router} {fmt(best_tput.completed_per_s)}/s -> "
            f"{_met(ours.completed_per_s >= best_tput.completed_per_s)}"
        )
    oracle = runs.get("oracle")
    if oracle is not None:
        gap = -relative_gap(ours.hit_rate, oracle.hit_rate)
        out.append(
            f"{label}: hit rate {fmt(ours.hit_rate * 100, 1)} % vs oracle "
            f"{fmt(oracle.hit_rate * 100, 1)} % ({fmt(gap * 100, 1)} % below; target within "
            f"5 %) -> {_met(gap <= 0.05)}"
        )
    return out


def _peer_gap_verdict(label: str, runs: dict[str, RunSummary]) -> list[str]:
    peers = [r for name, r in runs.items() if _is_peer(name) and not math.isnan(r.ttft_p90)]
    if not peers:
        return []
    best = min(peers, key=lambda r: r.ttft_p90)
    out = []
    for name, ours in sorted(runs.items()):
        if name.startswith("llmlbd"):
            gap = relative_gap(ours.ttft_p90, best.ttft_p90)
            out.append(
                f"{label}: {name} TTFT p90 {fmt(ours.ttft_p90)} s vs best peer {best.router} "
                f"{fmt(best.ttft_p90)} s ({fmt(gap * 100, 0, ' %')} worse; target at most "
                f"5 %) -> {_met(gap <= 0.05)}"
            )
    return out


def _tiers_verdict(label: str, runs: dict[str, RunSummary]) -> list[str]:
    ours = runs.get("llmlbd least_busy")
    if ours is None:
        return []
    out = [
        f"{label}: llmlbd least_busy shed {ours.shed} requests, {ours.critical_shed} of them "
        f"critical -> {_met(ours.critical_shed == 0)}"
    ]
    best = _best_other(runs, ours, lambda r: r.critical_ttft_p90)
    if best is not None:
        out.append(
            f"{label}: critical TTFT p90 {fmt(ours.critical_ttft_p90)} s, best other "
            f"{best.router} {fmt(best.critical_ttft_p90)} s -> "
            f"{_met(ours.critical_ttft_p90 <= best.critical_ttft_p90)}"
        )
    return out


def _nan_last(value: float) -> float:
    return math.inf if math.isnan(value) else value


def plot_scenario(title: str, rows: list[RunSummary], path: Path, kv_bound: bool) -> None:
    """TTFT p90, output tokens/s and hit rate (or router CPU) against the open-loop rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("TTFT p90 (s, log scale)", lambda r: r.ttft_p90),
        ("output tokens/s", lambda r: r.output_tok_s),
        ("prefix-cache hit rate (%)", lambda r: r.hit_rate * 100)
        if kv_bound
        else ("router CPU s per 1k requests", lambda r: r.cpu_s_per_1000),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    routers = list(dict.fromkeys(r.router for r in rows))
    colors = plt.get_cmap("tab20").colors  # eleven routers: the default cycle has ten
    for axis, (name, value) in zip(axes, panels):
        for index, router in enumerate(routers):
            points = sorted((r.rate, value(r)) for r in rows if r.router == router and r.rate > 0)
            if points:
                style = (
                    "--" if router == "oracle" else ("-" if router.startswith("llmlbd") else ":")
                )
                color = colors[(index * 2 + index * 2 // len(colors)) % len(colors)]
                axis.plot(*zip(*points), style, marker="o", label=router, color=color)
        axis.set_xlabel("offered rate (req/s, simulated)")
        axis.set_title(name)
        axis.grid(alpha=0.3)
    axes[0].set_yscale("log")  # one saturated router would flatten every other line
    axes[0].legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
