"""Fixtures for llmlbctl tests: a pool config on the session's real Redis, a CLI runner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from llmlbd.state.keys import PoolKeys

POOL = "ctltest"
BACKENDS = [
    {"name": "a", "url": "http://127.0.0.1:9001"},
    {"name": "b", "url": "http://127.0.0.1:9002"},
    {"name": "c", "url": "http://127.0.0.1:9003", "weight": 2},
]


def write_config(path: Path, redis_url: str, **extra: Any) -> str:
    data: dict[str, Any] = {
        "server": {"pool": POOL},
        "redis": {"url": redis_url},
        "backends": BACKENDS,
    }
    data.update(extra)
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture
def keys() -> PoolKeys:
    return PoolKeys(POOL)


@pytest.fixture
def config_path(tmp_path, redis_url) -> str:
    return write_config(tmp_path / "llmlbd.yaml", redis_url)


@pytest.fixture
def ctl(config_path, monkeypatch) -> Callable[..., Result]:
    """Run `llmlbctl --config <pool config> ARGS...` in-process; returns click's Result."""
    from llmlbd.ctl import main

    monkeypatch.delenv("LLMLBD_CONFIG", raising=False)
    monkeypatch.delenv("LLMLBD_REDIS_URL", raising=False)

    def run(*args: str, input: str | bytes | None = None, config: str | None = None) -> Result:
        return CliRunner().invoke(
            main, ["--config", config or config_path, *args], input=input, catch_exceptions=False
        )

    return run


def seed_metrics(
    client, keys: PoolKeys, name: str, now_ms: int | None = None, **fields: Any
) -> None:
    """Write a backend's metrics hash as the collector would (scraped now by default)."""
    if now_ms is None:
        seconds, micros = client.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
    mapping = {"health": "up", "scraped_at": now_ms, **fields}
    client.hset(keys.backend(name), mapping={k: str(v) for k, v in mapping.items()})


def redis_now_ms(client) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000
