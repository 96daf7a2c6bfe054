"""`llmlbd start` as a newcomer sees it: console logs and a plain ready line on a
terminal; JSON lines (and no plain line) when piped."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from tests.harness import free_port, free_port_run

pytestmark = pytest.mark.e2e

READY = "llmlbd ready: send OpenAI requests to http://127.0.0.1:{port}/v1 (models: sim-llama)"


def _start(stderr: int, extra_env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = {
        "server": {"bind": f"127.0.0.1:{port}", "workers": 1},
        "demo": {"backends": 2, "base_port": free_port_run(2)},
    }
    handle, path = tempfile.mkstemp(prefix="first-run-", suffix=".yaml")
    with os.fdopen(handle, "w") as out:
        yaml.safe_dump(config, out)
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    env.pop("NO_COLOR", None)
    env.update(extra_env)
    command = [sys.executable, "-m", "llmlbd", "start", "-c", path]
    command += ["--runtime-dir", tempfile.mkdtemp(prefix="first-run-")]
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env
    )
    return proc, port


def _read_until(fd: int, needle: str, proc: subprocess.Popen, timeout: float = 40.0) -> str:
    """Everything written to *fd* until *needle* appears (or the process or the time ends)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle.encode() not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the terminal's other end closed
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    return seen.decode(errors="replace")


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def test_on_a_terminal_logs_are_for_people_and_one_line_says_where_to_send_requests():
    controller, terminal = pty.openpty()
    proc, port = _start(terminal, {"TERM": "xterm-256color"})
    os.close(terminal)
    try:
        text = _read_until(controller, "Ctrl-C stops", proc)
        assert READY.format(port=port) + "; Ctrl-C stops" in text, text[-3000:]
        assert "worker_ready" in text.split("llmlbd ready:")[0]  # said once a worker serves
        assert '"event": "worker_ready"' not in text  # console renderer, not JSON
        assert "\x1b[" in text  # a colour terminal gets colours
    finally:
        code = _stop(proc)
        _read_until(controller, "never", proc, timeout=1)
        os.close(controller)
    assert code == 0


def test_piped_stderr_gets_json_lines_and_no_plain_line():
    proc, _ = _start(subprocess.PIPE, {"TERM": "xterm-256color"})
    assert proc.stderr is not None
    try:
        fd = proc.stderr.fileno()
        text = _read_until(fd, '"worker_ready"', proc)
        # Stopped only once the collector child is up too: a child killed half-way
        # through its imports prints a traceback that is not llmlbd's doing.
        if '"collector_ready"' not in text:
            text += _read_until(fd, '"collector_ready"', proc)
    finally:
        code = _stop(proc)
        text += proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
    assert code == 0
    # The demo fleet (`llmlbd sim`, a child) lists its servers as "NAME URL" lines.
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("sim-")]
    assert any('"event": "llmlbd_ready"' in line for line in lines), text[-3000:]
    plain = [line for line in lines if not line.startswith("{")]
    assert plain == [], "\n".join(plain)
    assert "llmlbd ready:" not in text
