"""structlog set-up for the collector process.

Uses ``llmlbd.logs.configure`` when the tree has it (one log format for every
llmlbd process); until then a minimal equivalent: JSON lines (or console)
on stderr, ISO timestamps, level filtering.
"""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure", "get_logger"]


def configure(level: str = "info", fmt: str = "json") -> None:
    try:
        from llmlbd import logs  # type: ignore[attr-defined]

        logs.configure(level, fmt)
        return
    except (ImportError, AttributeError):
        pass
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(**bound: object) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger("collector", **bound)  # type: ignore[no-any-return]
