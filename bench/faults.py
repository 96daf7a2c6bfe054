"""Every fault of the fault suite, with a longer load, tabulated into docs/reliability.md.

    python bench/faults.py                       # all faults, 12 clients, 10 s each (~4 min)
    python bench/faults.py --clients 6 --seconds 5 --print-only
    python bench/faults.py --only backend_failing   # re-run some rows, keep the others
    python bench/faults.py --failover            # Redis failovers, 3 llmlbd replicas (~2 min)

Runs the scenarios of tests/faults/scenarios.py (the same world, load
driver and checks as the pytest suite) and rewrites the table between the
``faults-table`` markers of docs/reliability.md, with the date, the load
average and the command. With ``--only``, only the named scenarios run: their
rows replace (or join) the table's and a line under it names their command,
date and load; the other rows stay. With ``--failover`` it runs
tests/faults/failover.py instead (a Redis Cluster master kill and a Sentinel
master kill and pause, each under three llmlbd replicas) into the
``failover-table`` markers. Exits 1 when any scenario broke a promise (the
problems are printed and listed under the table).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.faults import failover, scenarios  # noqa: E402
from tests.faults.world import World  # noqa: E402
from tests.topologies import ClusterDeployment, SentinelGroup  # noqa: E402

DOC = ROOT / "docs" / "reliability.md"
MARKERS = {
    "faults": ("<!-- faults-table:begin -->", "<!-- faults-table:end -->"),
    "failover": ("<!-- failover-table:begin -->", "<!-- failover-table:end -->"),
}
FAILOVERS = {
    "cluster_kill": lambda: ClusterDeployment(masters=3, replicas=1),
    "sentinel_kill": lambda: SentinelGroup(replicas=2, sentinels=3),
    "sentinel_pause": lambda: SentinelGroup(replicas=2, sentinels=3),
}


def table(rows: list[dict[str, object]]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write(text: str, which: str) -> None:
    begin, finish = MARKERS[which]
    page = DOC.read_text()
    start, end = page.index(begin) + len(begin), page.index(finish)
    DOC.write_text(page[:start] + "\n" + text + "\n" + page[end:])


def merge(rows: list[dict[str, object]], note: str) -> str:
    """The doc's faults table with *rows* put in (same fault: replaced, else added), and
    *note* (their provenance) after any earlier such notes."""
    begin, finish = MARKERS["faults"]
    page = DOC.read_text()
    old = page[page.index(begin) + len(begin) : page.index(finish)].strip("\n")
    lines = old.splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("| ")][1:]  # not the header
    new = table(rows).splitlines()[2:]
    for row, line in zip(rows, new):
        same = [i for i in at if lines[i].split(" | ")[0] == f"| {row['fault']}"]
        if same:
            lines[same[0]] = line
        else:
            lines.insert(at[-1] + 1, line)
            at.append(at[-1] + 1)
    after = next(i for i, line in enumerate(lines) if line.startswith("Problems"))
    lines[after:after] = [note, ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--print-only", action="store_true", help="do not touch the doc")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SCENARIO",
        help="run only this scenario (a function name of tests/faults/scenarios.py); repeatable",
    )
    parser.add_argument(
        "--failover", action="store_true", help="Redis failovers under 3 replicas instead"
    )
    args = parser.parse_args()
    if args.failover and args.only:
        parser.error("--only picks rows of the faults table, not of --failover")
    chosen = [s for s in scenarios.SHARED_WORLD if not args.only or s.__name__ in args.only]
    unknown = set(args.only) - {s.__name__ for s in scenarios.SHARED_WORLD}
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")

    reports: list[scenarios.Report] = []
    rows: list[dict[str, object]] = []
    if args.failover:
        for fault, topology in FAILOVERS.items():
            started = time.monotonic()
            with topology() as deployment, failover.Replicas(deployment) as replicas:
                report, timeline = failover.failover_under_load(
                    replicas, fault, clients=args.clients, seconds=args.seconds
                )
            reports.append(report)
            rows.append({**report.row(), **timeline.row()})
            print(f"{time.monotonic() - started:5.1f} s  {rows[-1]}", flush=True)
            print(f"        {timeline.summary()}", flush=True)
    else:
        with World() as world:
            for scenario in chosen:
                started = time.monotonic()
                report = scenario(world, clients=args.clients, seconds=args.seconds)
                reports.append(report)
                rows.append(report.row())
                print(f"{time.monotonic() - started:5.1f} s  {report.row()}", flush=True)
    load = os.getloadavg()
    problems = [f"{r.fault}: {p}" for r in reports for p in r.problems()]
    for problem in problems:
        print("PROBLEM", problem)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python bench/faults.py" + (" --failover" if args.failover else "") + (
        "" if (args.clients, args.seconds) == (12, 10.0) else
        f" --clients {args.clients} --seconds {args.seconds:g}"
    ) + "".join(f" --only {name}" for name in args.only)  # fmt: skip
    if args.only:
        note = (
            f"Row(s) {', '.join(r.fault for r in reports)}: produced alone by `{command}` on "
            f"{when}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}."
            + ("" if not problems else " Problems: " + "; ".join(problems[:10]))
        )
        text = merge(rows, note)
    else:
        text = (
            f"Produced by `{command}` on {when}; load average of the machine "
            f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min, 2 cores, shared).\n\n"
            + table(rows)
            + "\n\n"
            + (
                "Problems: none."
                if not problems
                else "Problems:\n\n" + "\n".join(f"- {p}" for p in problems[:40])
            )
        )
    if args.print_only:
        print(text)
    else:
        write(text, "failover" if args.failover else "faults")
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
