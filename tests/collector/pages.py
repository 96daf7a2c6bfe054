"""Metrics pages of real model servers, for the collector tests (served by
tests.fakeserver.PageServer)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parent / "data"
TEXT_004 = "text/plain; version=0.0.4; charset=utf-8"
TEXT_100 = "text/plain; version=1.0.0; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def page(name: str) -> bytes:
    return (DATA / name).read_bytes()
