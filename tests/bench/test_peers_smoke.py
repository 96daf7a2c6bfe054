"""One short run of the real peer benchmark: real sims, a real llmlbd and a second router."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tests.harness import ROOT


def test_smoke_run_measures_two_routers_on_one_fleet(tmp_path):
    # nginx when the Debian package is here; else the oracle, which needs nothing installed.
    other = "nginx least_conn" if shutil.which("nginx") else "oracle"
    out = tmp_path / "run.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "peers.py"),
            "--smoke",
            "--routers",
            f"llmlbd prefix_cache,{other}",
            "--no-install",
            "--no-progress",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = json.loads(out.read_text())
    assert run["skipped"] == {}
    rows = {row["router"]: row for row in run["results"]}
    assert set(rows) == {"llmlbd prefix_cache", other}
    for row in rows.values():
        sent = row["offered"] - row["skipped"]
        assert sent > 5 and row["completed"] == sent and row["failed"] == 0
        assert 0 < row["ttft_p50"] <= row["ttft_p90"] <= row["ttft_p99"]
        assert row["output_tok_s"] > 0
        # three shared system prompts: most prompt tokens hit, whatever the router
        assert row["hit_rate"] > 0.3
        assert sum(row["spread"]) == sent  # the servers' own request counts
    ours = rows["llmlbd prefix_cache"]
    assert ours["cpu_s_per_1000"] > 0 and ours["rss_mb"] > 10
    # the report: a table row per router, printed after the run
    for router in rows:
        assert f"| 6 | {router} |" in done.stdout
