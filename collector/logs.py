"""structlog set-up for the collector process: the one log format of every llmlbd process."""

from __future__ import annotations

import structlog

from llmlbd import logs

__all__ = ["configure", "get_logger"]


def configure(level: str = "info", fmt: str = "json") -> None:
    logs.configure(level, fmt)


def get_logger(**bound: object) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger("collector", **bound)  # type: ignore[no-any-return]
