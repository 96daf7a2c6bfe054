"""Pool membership lives in Redis: `llmlbctl backend add/remove` reaches running workers."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests
import yaml

from tests.harness import LLMLBD, StubBackends, wait_until

pytestmark = pytest.mark.e2e

CHAT = {"model": "stub-model", "messages": [{"role": "user", "content": "hello"}]}


def llmlbctl(config_path: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llmlbd.ctl", "--config", config_path, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def served_by(url: str, n: int = 12) -> set[str]:
    names = set()
    for _ in range(n):
        response = requests.post(f"{url}/v1/chat/completions", json=CHAT)
        assert response.status_code == 200, response.text
        names.add(response.headers["x-llmlbd-backend"])
    return names


def test_added_and_removed_backends_take_effect_without_restart(redis_server, tmp_path):
    with StubBackends(2) as stubs:
        config = {
            "redis": {"url": redis_server.url},
            "server": {"pool": "members"},
            "backends": stubs.config()[:1],
            "collector": {"enabled": False},
        }
        config_path = tmp_path / "llmlbd.yaml"
        config_path.write_text(yaml.safe_dump(config))
        with LLMLBD(config, workers=2) as proxy:
            assert served_by(proxy.url) == {"stub-0"}
            added = llmlbctl(str(config_path), "backend", "add", stubs.urls[1], "--name", "stub-1")
            assert added.returncode == 0, added.stderr
            # Every worker re-reads membership within a second.
            wait_until(
                lambda: served_by(proxy.url) == {"stub-0", "stub-1"},
                timeout=5,
                message="new backend in use by every worker",
            )
            models = requests.get(f"{proxy.url}/v1/models").json()["data"]
            assert [m["id"] for m in models] == ["stub-model"]
            removed = llmlbctl(str(config_path), "backend", "remove", "stub-0")
            assert removed.returncode == 0, removed.stderr
            wait_until(
                lambda: served_by(proxy.url) == {"stub-1"},
                timeout=5,
                message="removed backend out of use",
            )
            assert '"membership_changed"' in proxy.log()
