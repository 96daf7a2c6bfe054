"""Every fault of the fault suite, with a longer load, tabulated into docs/reliability.md.

    python bench/faults.py                       # all faults, 12 clients, 10 s each (~4 min)
    python bench/faults.py --clients 6 --seconds 5 --print-only
    python bench/faults.py --only backend_failing   # re-run some rows, keep the others

Runs the scenarios of tests/faults/scenarios.py (the same world, load
driver and checks as the pytest suite) and rewrites the table between the
``faults-table`` markers of docs/reliability.md, with the date, the load
average and the command. Exits 1 when any scenario broke a promise (the
problems are printed and listed under the table). With ``--only``, only the
named scenarios run: their rows replace (or join) the table's and a line
under it names their command, date and load; the other rows stay.
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

from tests.faults import scenarios  # noqa: E402
from tests.faults.world import World  # noqa: E402

DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- faults-table:begin -->", "<!-- faults-table:end -->"


def table(reports: list[scenarios.Report]) -> str:
    rows = [report.row() for report in reports]
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write(text: str) -> None:
    page = DOC.read_text()
    start, end = page.index(BEGIN) + len(BEGIN), page.index(END)
    DOC.write_text(page[:start] + "\n" + text + "\n" + page[end:])


def merge(reports: list[scenarios.Report], note: str) -> str:
    """The doc's table with *reports*' rows put in (same fault: replaced, else added), and
    *note* (their provenance) after any earlier such notes."""
    page = DOC.read_text()
    old = page[page.index(BEGIN) + len(BEGIN) : page.index(END)].strip("\n")
    lines = old.splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("| ")][1:]  # not the header
    new = table(reports).splitlines()[2:]
    for report, row in zip(reports, new):
        same = [i for i in rows if lines[i].split(" | ")[0] == f"| {report.fault}"]
        if same:
            lines[same[0]] = row
        else:
            lines.insert(rows[-1] + 1, row)
            rows.append(rows[-1] + 1)
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
    args = parser.parse_args()
    chosen = [s for s in scenarios.SHARED_WORLD if not args.only or s.__name__ in args.only]
    unknown = set(args.only) - {s.__name__ for s in scenarios.SHARED_WORLD}
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")

    reports: list[scenarios.Report] = []
    with World() as world:
        for scenario in chosen:
            started = time.monotonic()
            report = scenario(world, clients=args.clients, seconds=args.seconds)
            reports.append(report)
            print(f"{time.monotonic() - started:5.1f} s  {report.row()}", flush=True)
    load = os.getloadavg()
    problems = [f"{r.fault}: {p}" for r in reports for p in r.problems()]
    for problem in problems:
        print("PROBLEM", problem)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python bench/faults.py" + (
        "" if (args.clients, args.seconds) == (12, 10.0) else
        f" --clients {args.clients} --seconds {args.seconds:g}"
    ) + "".join(f" --only {name}" for name in args.only)  # fmt: skip
    if args.only:
        note = (
            f"Row(s) {', '.join(r.fault for r in reports)}: produced alone by `{command}` on "
            f"{when}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}."
            + ("" if not problems else " Problems: " + "; ".join(problems[:10]))
        )
        text = merge(reports, note)
    else:
        text = (
            f"Produced by `{command}` on {when}; load average of the machine "
            f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min, 2 cores, shared).\n\n"
            + table(reports)
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
        write(text)
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
