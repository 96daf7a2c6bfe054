"""`llmlbctl watch`: refreshes status; Ctrl-C exits 0."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from llmlbd import exits
from tests.harness import ROOT, wait_until


def test_json_lines_per_refresh(ctl, redis_client, keys):
    """--json --count N prints N compact status documents, one per line."""
    redis_client.hset(keys.inflight, "a", 1)
    result = ctl("watch", "--json", "--count", "3", "--interval", "0.1")
    assert result.exit_code == exits.OK, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    assert all(json.loads(line)["backends"][0]["inflight"] == 1 for line in lines)


def test_text_frames(ctl):
    result = ctl("watch", "--count", "2", "--interval", "0.1")
    assert result.exit_code == exits.OK
    assert result.stdout.count("every 0.1s  (Ctrl-C to quit)") == 2
    assert result.stdout.count("BACKEND") == 2


def test_ctrl_c_exits_0(config_path):
    """SIGINT (Ctrl-C) ends the watch with exit status 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmlbd.ctl", "--config", config_path, "watch", "--interval", "0.1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        assert "Ctrl-C to quit" in first
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: proc.poll() is not None, timeout=10, message="watch exited")
        assert proc.returncode == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
