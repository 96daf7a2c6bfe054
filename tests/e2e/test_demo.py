"""The README's first command: `llmlbd start` on the embedded default, nothing configured."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest
import requests

from tests.harness import LLMLBD, free_port_run, wait_until

pytestmark = pytest.mark.e2e


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_embedded_redis_demo_backends_and_collector_then_clean_exit():
    base = free_port_run(2)
    proxy = LLMLBD({"demo": {"backends": 2, "base_port": base}}, workers=1, name="demo")
    try:
        models = requests.get(f"{proxy.url}/v1/models").json()["data"]
        assert [m["id"] for m in models] == ["sim-llama"]
        response = requests.post(
            f"{proxy.url}/v1/chat/completions",
            json={
                "model": "sim-llama",
                "max_tokens": 4,
                "messages": [{"role": "user", "content": "Hello"}],
            },
        )
        assert response.status_code == 200
        assert response.headers["x-llmlbd-backend"] in ("sim-0", "sim-1")
        assert response.json()["usage"]["completion_tokens"] == 4
        # The collector child publishes the demo backends' health into the embedded Redis.
        wait_until(
            lambda: '"embedded_redis_started"' in proxy.log(), timeout=5, message="embedded redis"
        )

        def status() -> str:
            # llmlbctl finds the embedded Redis through the runtime directory.
            result = subprocess.run(
                [sys.executable, "-m", "llmlbd.ctl", "status", "--json"],
                capture_output=True,
                text=True,
                timeout=30,
                env={"RUNTIME_DIRECTORY": proxy.runtime_dir, "PATH": "/usr/bin:/bin"},
            )
            assert result.returncode in (0, 4), result.stderr
            return result.stdout

        wait_until(
            lambda: status().count('"health": "up"') == 2,
            timeout=15,
            message="the collector marked both demo backends up",
        )
    finally:
        proxy.proc.signal(signal.SIGTERM)
        code = proxy.proc.popen.wait(20)
        proxy.stop()
    assert code == 0
    # Children went with it: the demo backends no longer listen.
    wait_until(
        lambda: not listening(base) and not listening(base + 1),
        timeout=10,
        message="demo backends stopped",
    )
