"""Every fault of the fault suite, with a longer load, tabulated into docs/reliability.md.

    python bench/faults.py                       # all faults, 12 clients, 10 s each (~4 min)
    python bench/faults.py --clients 6 --seconds 5 --print-only

Runs the scenarios of tests/faults/scenarios.py (the same world, load
driver and checks as the pytest suite) and rewrites the table between the
``faults-table`` markers of docs/reliability.md, with the date, the load
average and the command. Exits 1 when any scenario broke a promise (the
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--print-only", action="store_true", help="do not touch the doc")
    args = parser.parse_args()

    reports: list[scenarios.Report] = []
    with World() as world:
        for scenario in scenarios.SHARED_WORLD:
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
    )  # fmt: skip
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
