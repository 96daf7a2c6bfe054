"""A port already in use: one clear line and exit code 5, not a traceback or a restart loop."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from llmlbd.exits import ADDRESS_IN_USE
from llmlbd.server.master.children import MAX_BACKOFF_S, CommandChild

pytestmark = pytest.mark.e2e


@pytest.fixture
def taken_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def write_config(redis_url: str) -> str:
    handle, path = tempfile.mkstemp(suffix=".yaml")
    with open(handle, "w") as out:
        yaml.safe_dump(
            {
                "redis": {"url": redis_url},
                "backends": [{"name": "b0", "url": "http://127.0.0.1:9"}],
                "collector": {"enabled": False},
                "logging": {"format": "json"},
            },
            out,
        )
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=60)


def assert_one_clear_line(result: subprocess.CompletedProcess[str], address: str) -> None:
    assert result.returncode == ADDRESS_IN_USE, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "already in use" in line]
    assert len(errors) == 1 and address in errors[0], result.stderr


def test_llmlbd_start_on_a_taken_port(redis_url, taken_port):
    config = write_config(redis_url)
    began = time.monotonic()
    result = run("llmlbd", "start", "-c", config, "--bind", f"127.0.0.1:{taken_port}")
    assert_one_clear_line(result, f"127.0.0.1:{taken_port}")
    assert time.monotonic() - began < 30  # no retry loop


def test_a_child_that_finds_its_address_taken_is_not_restarted_in_a_tight_loop(caplog):
    child = CommandChild("collector", [sys.executable, "-c", f"raise SystemExit({ADDRESS_IN_USE})"])
    child.start()
    assert child.process is not None
    child.process.wait(30)
    child.supervise()  # restarts once, then waits the longest back-off
    assert child._next_start - time.monotonic() > MAX_BACKOFF_S - 5
    assert child.process is not None
    child.process.wait(30)
    child.supervise()  # too early: nothing happens
    assert child.exit_status() == ADDRESS_IN_USE
    child.stop()
