"""Fixtures for in-process proxy tests (see tests/server/inproc.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakeserver import ScriptedServer
from tests.server.inproc import Proxy


@pytest.fixture
def servers() -> Iterator[list[ScriptedServer]]:
    started: list[ScriptedServer] = []
    yield started
    for server in started:
        server.close()


@pytest.fixture
def proxy(redis_url: str) -> Iterator[Any]:
    made: list[Proxy] = []

    def make(backends: dict[str, str], **server: Any) -> Proxy:
        made.append(Proxy(redis_url, backends, **server))
        return made[-1]

    yield make
    for p in made:
        p.close()
