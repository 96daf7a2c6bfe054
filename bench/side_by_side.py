"""wrk side by side: direct vs nginx vs vllm-router vs llmlbd, two zero-delay backends, one run.

`bench/proxy_bench.py --side-by-side` runs this. Each round measures every
target once (plain, then streaming) before the next round starts, so slow
drifts of a shared machine hit every target alike; the table holds the
median of the rounds and each target's ratio to vllm-router in the same run.
"direct" is one wrk per backend at the same time (each -c32), summed: what
the backends serve with nothing in between.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack

import wrkbench as wb

MODES = (("plain", False), ("stream", True))


def _direct(ports: list[int], seconds: float, stream: bool) -> wb.WrkResult:
    results: list[wb.WrkResult] = []
    threads = [
        threading.Thread(
            target=lambda p=port: results.append(wb.run_wrk(p, seconds, stream=stream))
        )
        for port in ports
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return wb.WrkResult(
        sum(r.rps for r in results),
        max(r.p50_ms for r in results),
        max(r.p99_ms for r in results),
        sum(r.requests for r in results),
        sum(r.errors for r in results),
    )


def run_side_by_side(
    seconds: float,
    rounds: int,
    workers: int,
    vllm_router_binary: str | None,
    also_tree: str | None = None,
) -> str:
    runs: dict[tuple[str, str], list[wb.WrkResult]] = {}
    with ExitStack() as stack:
        ports = stack.enter_context(wb.zero_backends(2))
        targets: dict[str, int | None] = {
            "nginx least_conn": stack.enter_context(wb.nginx(ports)),
            "vllm-router power_of_two": stack.enter_context(
                wb.vllm_router(ports, vllm_router_binary)
            ),
            f"llmlbd global_least_request, {workers} workers": stack.enter_context(
                wb.llmlbd(ports, workers)
            ).port,
        }
        if also_tree:  # another checkout's llmlbd (e.g. main) in the same run
            env = {"PYTHONPATH": also_tree, "PYTHONSAFEPATH": "1"}  # no cwd on sys.path
            targets[f"llmlbd from {also_tree}"] = stack.enter_context(
                wb.llmlbd(ports, workers, env=env)
            ).port
        missing = [name for name, port in targets.items() if port is None]
        for name in missing:
            print(f"{name}: not installed, left out (see bench/wrkbench.py)", flush=True)
            del targets[name]
        for port in targets.values():
            wb.run_wrk(port, 2)  # warm-up: pools, scripts, JIT-free but cache-warm
        for round_no in range(rounds):
            for mode, stream in MODES:
                runs.setdefault(("direct (2 backends, summed)", mode), []).append(
                    _direct(ports, seconds, stream)
                )
                wb.settle()
                for name, port in targets.items():
                    assert port is not None
                    runs.setdefault((name, mode), []).append(
                        wb.run_wrk(port, seconds, stream=stream)
                    )
                    wb.settle()
            print(
                f"round {round_no + 1}/{rounds} done, load average {wb.load_average()}", flush=True
            )
    table = render(runs, seconds, rounds)
    print(table)
    return table


def render(runs: dict[tuple[str, str], list[wb.WrkResult]], seconds: float, rounds: int) -> str:
    def med(name: str, mode: str, field: str) -> float:
        return wb.median([getattr(r, field) for r in runs[(name, mode)]])

    names = list(dict.fromkeys(name for name, _ in runs))
    peer = next((n for n in names if n.startswith("vllm-router")), None)
    lines = [
        f"wrk -t1 -c32 -d{seconds:g}s, {rounds} interleaved rounds (median), "
        f"load average at the end {wb.load_average()}",
        "",
        "| target | plain req/s | p50 / p99 ms | vs vllm-router | stream req/s (16 chunks) "
        "| p50 / p99 ms | vs vllm-router | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        cells = [name]
        for mode, _ in MODES:
            rps = med(name, mode, "rps")
            ratio = f"{rps / med(peer, mode, 'rps'):.2f}x" if peer else "-"
            cells += [
                f"{rps:.0f}",
                f"{med(name, mode, 'p50_ms'):.1f} / {med(name, mode, 'p99_ms'):.1f}",
                ratio,
            ]
        errors = sum(r.errors for mode, _ in MODES for r in runs[(name, mode)])
        lines.append("| " + " | ".join(cells) + f" | {errors} |")
    return "\n".join(lines)
