"""structlog set up once per process: JSON lines (or console), prompts never logged.

gunicorn's own log lines go through the same formatter (GunicornLogger), so
an operator reads one format from the master, the workers and the collector.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog
from gunicorn import glogging

__all__ = ["configure", "GunicornLogger", "drop_prompt_fields"]

# Keys that may carry user content; a log call that passes one is a bug, and
# the value is replaced rather than written.
PROMPT_FIELDS = frozenset({"messages", "prompt", "input", "body", "content"})


def add_pid(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    event_dict.setdefault("pid", os.getpid())
    return event_dict


def drop_prompt_fields(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key in PROMPT_FIELDS.intersection(event_dict):
        event_dict[key] = "[not logged]"
    return event_dict


def configure(level: str = "info", fmt: str = "json") -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_pid,
        drop_prompt_fields,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    # Chatty libraries stay quiet unless something is wrong.
    for name in ("urllib3", "urllib3.connectionpool"):
        logging.getLogger(name).setLevel(logging.WARNING)


class GunicornLogger(glogging.Logger):
    """gunicorn's logs, through llmlbd's formatter; gunicorn's access log is off."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            logger.handlers = []
            logger.propagate = True
        self.access_log.disabled = True
