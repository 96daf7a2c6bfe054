"""structlog set up once per process: JSON lines or console, prompts never logged.

Format "auto" (the default) picks console for a person at a terminal and JSON
for machines: under systemd (JOURNAL_STREAM / INVOCATION_ID) or when stderr
is piped or redirected.

gunicorn's own log lines go through the same formatter (GunicornLogger), so
an operator reads one format from the master, the workers and the collector.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Literal, TextIO

import structlog
from gunicorn import glogging

__all__ = ["configure", "resolve_format", "GunicornLogger", "drop_prompt_fields"]

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


LogFormat = Literal["json", "console"]


def resolve_format(fmt: str, stream: TextIO | None = None) -> LogFormat:
    """ "json" or "console": *fmt* itself unless it is "auto" (see the module docstring)."""
    if fmt == "json":
        return "json"
    if fmt == "console":
        return "console"
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        return "json"  # systemd: the journal wants one parseable line per event
    return "console" if _is_terminal(stream or sys.stderr) else "json"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or exotic stream is no terminal
        return False


def _colors_supported(stream: TextIO) -> bool:
    """Colours only on a real terminal that can show them (https://no-color.org)."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM", "dumb") == "dumb":
        return False
    return _is_terminal(stream)


def configure(level: str = "info", fmt: str = "auto") -> LogFormat:
    """Set up logging for this process; returns the format in use ("json" or "console")."""
    fmt = resolve_format(fmt)
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
        else structlog.dev.ConsoleRenderer(colors=_colors_supported(sys.stderr))
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
    return fmt


class GunicornLogger(glogging.Logger):
    """gunicorn's logs, through llmlbd's formatter; gunicorn's access log is off."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            logger.handlers = []
            logger.propagate = True
        self.access_log.disabled = True
