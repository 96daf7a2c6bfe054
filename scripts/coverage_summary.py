#!/usr/bin/env python3
"""Print a coverage report of a few lines: one per package, then the least covered modules.

    python scripts/coverage_summary.py build/coverage/coverage.json [--worst N]

Reads the JSON that `coverage json` writes; the full per-line report is the HTML one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def package_of(path: str) -> str:
    """llmlbd/server/wsgi.py -> llmlbd/server; llmlbd/cli.py -> llmlbd."""
    return str(Path(path).parent)


def percent(covered: int, statements: int) -> float:
    return 100.0 * covered / statements if statements else 100.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--worst", type=int, default=8, help="least covered modules to list")
    args = parser.parse_args()
    files = json.loads(args.report.read_text(encoding="utf-8"))["files"]
    by_package: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    modules = []
    for path, data in files.items():
        summary = data["summary"]
        covered, statements = summary["covered_lines"], summary["num_statements"]
        by_package[package_of(path)][0] += covered
        by_package[package_of(path)][1] += statements
        modules.append((percent(covered, statements), statements, path))
    print(f"{'package':<26}{'statements':>11}{'missed':>8}{'cover':>8}")
    total = [0, 0]
    for package, (covered, statements) in sorted(by_package.items()):
        total[0] += covered
        total[1] += statements
        print(
            f"{package:<26}{statements:>11}{statements - covered:>8}"
            f"{percent(covered, statements):>7.1f}%"
        )
    print(f"{'TOTAL':<26}{total[1]:>11}{total[1] - total[0]:>8}{percent(*total):>7.1f}%")
    worst = sorted(m for m in modules if m[1] >= 20)[: args.worst]
    if worst:
        print("least covered modules (20+ statements):")
        for cover, statements, path in worst:
            print(f"  {path:<40}{statements:>5}{cover:>7.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
