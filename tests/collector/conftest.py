"""Fixtures for the collector tests: page servers and in-process collectors.

Both are real: HTTP servers on free ports, the `Collector` with its worker
threads talking to the session's real Redis. Everything started here is
stopped when the test ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis

from collector.daemon import Collector
from collector.metrics import CollectorMetrics
from llmlbd.config import config_from_dict
from tests.fakeserver import PageServer

FAST = {
    "interval_ms": 50,
    "timeout_ms": 500,
    "health_interval_ms": 50,
    "models_refresh_s": 0.2,
    "metrics_port": 0,
}


@pytest.fixture
def page_server() -> Callable[..., PageServer]:
    servers: list[PageServer] = []

    def make(*args: Any, **kwargs: Any) -> PageServer:
        server = PageServer(*args, **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def make_config(redis_url: str, backends: list[tuple[str, str]], **collector: Any) -> Any:
    return config_from_dict(
        {
            "redis": {"url": redis_url},
            "collector": {**FAST, **collector},
            "backends": [{"name": name, "url": url} for name, url in backends],
        }
    )


class Running:
    """A collector running in a thread of the test process."""

    def __init__(self, collector: Collector, thread: threading.Thread, client: Any) -> None:
        self.collector = collector
        self.thread = thread
        self.client = client

    def stop(self) -> None:
        if self.thread.is_alive():
            self.collector.request_stop()
            self.thread.join(10)
        self.client.close()


@pytest.fixture
def run_collector(redis_url) -> Callable[..., Running]:
    running: list[Running] = []

    def start(
        backends: list[tuple[str, str]], collector_id: str | None = None, **settings: Any
    ) -> Running:
        config = make_config(redis_url, backends, **settings)
        client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=2)
        collector = Collector(config, client, collector_id, CollectorMetrics())
        thread = threading.Thread(target=collector.run, daemon=True)
        thread.start()
        item = Running(collector, thread, client)
        running.append(item)
        return item

    yield start
    for item in running:
        item.stop()
