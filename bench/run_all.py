"""Run every llmlbd benchmark, one after the other, and print their figures.

Each benchmark is a script of its own in this folder (run it alone with
--help to see its knobs); this runner only sequences them with their default
settings so that nothing else competes for the 2 cores while one measures.
docs/benchmarks.md records the figures and the command behind each section.

Run: .venv/bin/python bench/run_all.py [--only proxy,collector,...] [--peers]

--peers adds the side-by-side run against other routers (bench/peers.py, about
25 minutes; its own docs section), which is not in the default set.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHMARKS = {
    "proxy": ["proxy_bench.py", "--write-docs"],
    "collector": ["collector_bench.py"],
    "prefix_cache": ["prefix_bench.py"],
    "least_busy": ["least_busy_bench.py"],
    "sim": ["sim_capacity.py"],
}
OPTIONAL = {"peers": ["peers.py"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated subset of: {', '.join({**BENCHMARKS, **OPTIONAL})}",
    )
    parser.add_argument(
        "--peers", action="store_true", help="also run bench/peers.py (llmlbd vs other routers)"
    )
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    if args.peers and "peers" not in chosen:
        chosen.append("peers")
    known = {**BENCHMARKS, **OPTIONAL}
    unknown = [name for name in chosen if name not in known]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    failed = []
    for index, name in enumerate(chosen, 1):
        script, *extra = known[name]
        command = [sys.executable, str(HERE / script), *extra]
        print(f"\n=== [{index}/{len(chosen)}] {name}: {' '.join(command[1:])}", flush=True)
        started = time.monotonic()
        result = subprocess.run(command, cwd=HERE.parent)
        print(
            f"=== {name} finished in {time.monotonic() - started:.0f} s (exit {result.returncode})",
            flush=True,
        )
        if result.returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
