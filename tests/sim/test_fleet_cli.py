"""``llmlbd sim --count K``: one process per server, one line per server, all stop together."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import requests

from tests.harness import Proc, free_port_run, python_module, wait_until
from tests.simfleet import SimFleet


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start_fleet(count: int) -> tuple[Proc, int, list[str]]:
    base = free_port_run(count)
    proc = Proc(
        python_module(
            "llmlbd.sim",
            "--count",
            str(count),
            "--base-port",
            str(base),
            "--time-scale",
            "0.1",
            "--lora",
            "x",
        ),
        name="sim-fleet",
    )
    try:
        lines = wait_until(
            lambda: (lambda found: found if len(found) == count else None)(
                re.findall(r"^(sim-\d+) (http://\S+)$", proc.log(), re.M)
            ),
            timeout=20,
            message="fleet lines",
        )
    except TimeoutError:
        print(proc.log()[-5000:])  # why: a child that could not bind, or a slow start
        proc.stop()
        raise
    return proc, base, lines


def test_fleet_prints_one_line_per_server_and_stops_all_on_sigterm():
    proc, base, lines = start_fleet(3)
    try:
        assert lines == [(f"sim-{i}", f"http://127.0.0.1:{base + i}") for i in range(3)]
        for name, url in lines:
            state = requests.get(url + "/debug/state", timeout=5).json()
            assert state["name"] == name
            assert state["time_scale"] == 0.1  # options reach every child
            assert "x" in [
                m["id"] for m in requests.get(url + "/v1/models", timeout=5).json()["data"]
            ]
        proc.signal(signal.SIGTERM)
        assert proc.popen.wait(10) == 0
        for index in range(3):
            assert not listening(base + index)
    finally:
        proc.stop()


def test_children_die_with_a_killed_parent():
    proc, base, _ = start_fleet(2)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait(5)
        wait_until(
            lambda: not listening(base) and not listening(base + 1),
            timeout=10,
            message="children gone",
        )
    finally:
        proc.stop()


def test_llmlbd_cli_lazily_maps_sim():
    output = subprocess.run(
        [sys.executable, "-c", "from llmlbd.cli import main; main()", "sim", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert output.returncode == 0
    assert "--time-scale" in output.stdout and "--count" in output.stdout


def test_simfleet_helper_takes_per_server_overrides():
    with SimFleet(2, time_scale=0.1, servers=[{}, {"fault": "status=503"}]) as fleet:
        assert fleet.names == ["sim-0", "sim-1"]
        assert len(fleet.urls) == len(fleet.procs) == 2
        codes = [
            requests.post(
                url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=5
            ).status_code
            for url in fleet.urls
        ]
        assert codes == [200, 503]
    assert all(p.popen.poll() is not None for p in fleet.procs)


def test_a_sim_started_by_the_proxy_keeps_its_metrics_out_of_the_proxys_directory(tmp_path):
    base = free_port_run(1)
    proc = Proc(
        python_module(
            "llmlbd.sim", "--count", "1", "--base-port", str(base), "--time-scale", "0.1"
        ),
        name="sim-multiproc",
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
    )
    try:
        wait_until(lambda: "sim-0 http://" in proc.log(), timeout=20, message="fleet up")
        url = f"http://127.0.0.1:{base}"
        requests.post(
            url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=5
        ).raise_for_status()
        assert "vllm:generation_tokens_total" in requests.get(url + "/metrics", timeout=5).text
        assert list(tmp_path.iterdir()) == []
    finally:
        proc.stop()
