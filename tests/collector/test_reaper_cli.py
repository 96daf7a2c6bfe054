"""Lease reconciliation from the collector loop, and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases
from tests.collector.pages import page
from tests.harness import ROOT, free_port, wait_until

KEYS = PoolKeys("default")


def test_dead_workers_lease_is_reaped(redis_client, page_server, run_collector):
    """A proxy worker that stops heart-beating loses its lease, and the count drops, within seconds."""
    server = page_server(page("vllm_dp2_sim.txt"))
    live = Leases(redis_client, KEYS, "live-worker", ttl_ms=60_000)
    dead = Leases(redis_client, KEYS, "dead-worker", ttl_ms=300)
    assert live.acquire("req-live", "a").backend == "a"
    assert dead.acquire("req-dead", "a").backend == "a"
    assert redis_client.hget(KEYS.inflight, "a") == "2"
    run = run_collector([("a", server.url)])
    wait_until(
        lambda: redis_client.hget(KEYS.inflight, "a") == "1",
        timeout=5,
        message="dead worker's lease reaped",
    )
    assert set(redis_client.hkeys(KEYS.leases)) == {"req-live"}
    assert run.collector.metrics.reaped._value.get() == 1


def _config(tmp_path, backends: dict[str, str], **collector) -> str:
    path = tmp_path / "c.yaml"
    lines = "\n".join(f"  - {{name: {n}, url: '{u}'}}" for n, u in backends.items())
    path.write_text(
        textwrap.dedent(f"""\
        collector: {dict(timeout_ms=500, **collector)!r}
        backends:
        """)
        + lines
        + "\n"
    )
    return str(path)


def test_once_prints_fields_without_redis(tmp_path, page_server):
    """`llmlbd collector --once` scrapes every backend once and prints what it would store."""
    up = page_server(page("vllm_v1_0.33.txt"), models=page("vllm_models.json"))
    config = _config(tmp_path, {"a": up.url}, metric_map={"waiting": "vllm:num_requests_running"})
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from llmlbd.cli import main; main()",
            "collector",
            "--once",
            "--config",
            config,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)["a"]
    assert result["waiting"] == "24" and result["sources"]["waiting"] == "vllm:num_requests_running"
    assert result["health"] == "up" and result["missing"] == []
    assert result["models"].startswith("meta-llama/Llama-3.1-8B-Instruct,")


def test_once_exit_status_when_a_backend_is_down(tmp_path, page_server):
    """--once exits 1 when any backend fails its health check (usable in scripts)."""
    up = page_server(page("vllm_dp2_sim.txt"))
    config = _config(tmp_path, {"a": up.url, "gone": f"http://127.0.0.1:{free_port()}"})
    out = subprocess.run(
        [sys.executable, "-m", "collector", "--once", "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 1
    result = json.loads(out.stdout)
    assert result["a"]["health"] == "up" and "refused" in result["gone"]["last_error"]


def test_bad_metric_map_is_a_config_error(tmp_path):
    """A metric_map naming no field fails with a message, not a traceback."""
    config = _config(tmp_path, {}, metric_map={"queue": "x"})
    out = subprocess.run(
        [sys.executable, "-m", "collector", "--once", "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 1 and "metric_map.queue" in out.stderr
    assert "Traceback" not in out.stderr
