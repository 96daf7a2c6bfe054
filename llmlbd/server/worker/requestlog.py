"""The request log (`request_done`, one JSON line per request), written off the hot path.

The line is byte for byte what structlog's JSON renderer wrote (same keys, same
order, same `", "` and `": "` separators), so greps and parsers keep working.

Through structlog and the logging module a line cost about 200 µs of worker
CPU (processors, a LogRecord, the formatter, `json.dumps`, one `write` per
line): a sixth of a proxied request. `JsonRequestLog` renders the same
fields itself (strings escaped by the json module's C encoder, the
timestamp's date and time part cached per second) into a buffer, and writes
the buffer:

- at once when the worker has no other request in progress, so a quiet
  proxy logs every line immediately (and tests and `tail -f` see it);
- otherwise after at most `FLUSH_S` or when `FLUSH_BYTES` are waiting;
- on a clean stop (`close()`, from the worker's exit hook).

Each `write` holds whole lines and at most PIPE_BUF bytes, so lines from
several workers sharing one pipe (systemd's journal, a terminal) never
interleave mid-line. A worker killed with SIGKILL loses at most `FLUSH_S`
of lines. On a terminal, or with `logging.format: console`, the line goes
through structlog as before (`StructlogRequestLog`): people reading it
prefer its renderer to speed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

import gevent
import structlog

from llmlbd.policy.framework import Decision
from llmlbd.request import RoutingRequest

__all__ = ["Finished", "RequestLog", "JsonRequestLog", "StructlogRequestLog", "for_config"]

LOGGER_NAME = "llmlbd.proxy"
FLUSH_S = 0.1
FLUSH_BYTES = 64 * 1024
WRITE_MAX = 4096  # PIPE_BUF on Linux: a write this size to a pipe is atomic

_escape: Any = json.encoder.encode_basestring_ascii


@dataclass(slots=True)  # not frozen: a frozen __init__ sets each field through object.__setattr__
class Finished:
    """One finished request, as its log line reports it."""

    request: RoutingRequest
    decision: Decision | None
    status: int
    size: int
    ttfb_s: float | None
    duration_s: float
    outcome: str

    def fields(self) -> dict[str, Any]:
        """The line's fields, in their order; both writers log exactly these."""
        request, decision, ttfb_s = self.request, self.decision, self.ttfb_s
        return {
            "request_id": request.request_id,
            "client_request_id": request.headers.get("x-request-id"),
            "method": request.method,
            "path": request.path,
            "model": request.model,
            "stream": request.stream,
            "pool": request.pool,
            "backend": decision.backend.name if decision else "",
            "policy": decision.policy if decision else "",
            "reason": decision.reason if decision else "",
            "status": self.status,
            "bytes": self.size,
            "ttfb_ms": round(ttfb_s * 1000, 2) if ttfb_s is not None else None,
            "duration_ms": round(self.duration_s * 1000, 2),
            "outcome": self.outcome,
            "decision": decision.details if decision and decision.details else None,
        }


class RequestLog(Protocol):
    def request_done(self, finished: Finished, busy: bool) -> None:
        """One finished request; *busy* says whether the worker still serves others."""

    def close(self) -> None:
        """Write whatever is buffered (a clean stop)."""


class StructlogRequestLog:
    """The line through structlog: for terminals and the console format."""

    def __init__(self) -> None:
        self.log = structlog.get_logger(LOGGER_NAME)

    def request_done(self, finished: Finished, busy: bool) -> None:
        self.log.info("request_done", **finished.fields())

    def close(self) -> None:
        pass


class _Clock:
    """ISO-8601 UTC timestamps as structlog writes them, the date part cached per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            stamp = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
            self._prefix = f'"{stamp}.'
        return f'{self._prefix}{int((now - second) * 1e6):06d}Z"'


def _ms(seconds: float) -> str:
    """`repr(round(seconds * 1000, 2))`, as structlog writes it, at half the cost: both
    round the same float to two decimals, and the shortest repr of that is those
    digits without trailing zeros."""
    text = f"{seconds * 1000:.2f}".rstrip("0")
    return text + "0" if text[-1] == "." else text


def _json_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return _escape(value)  # type: ignore[no-any-return]
    return json.dumps(value)


class JsonRequestLog:
    """The line rendered as JSON here and written in batches to a file descriptor."""

    def __init__(self, fd: int, pid: int | None = None) -> None:
        self.fd = fd
        self.clock = _Clock()
        self.tail = f', "event": "request_done", "level": "info", "logger": "{LOGGER_NAME}"'
        self.pid = pid if pid is not None else os.getpid()
        self.lines: list[bytes] = []
        self.pending = 0
        self._flusher: gevent.Greenlet[[], None] | None = None
        self._names: dict[str, str] = {}  # backend, policy and reason strings, escaped once
        # (backend, policy, reason) -> their three fields, rendered once.
        self._routes: dict[tuple[str, str, str], str] = {}

    def _name(self, text: str) -> str:
        escaped = self._names.get(text)
        if escaped is None:
            escaped = _escape(text)
            if len(self._names) < 4096:
                self._names[text] = escaped
        return escaped

    def render(self, finished: Finished) -> bytes:
        request, decision, ttfb_s = finished.request, finished.decision, finished.ttfb_s
        client_id = request.headers.get("x-request-id")
        if decision is not None:
            route = (decision.backend.name, decision.policy, decision.reason)
            routed = self._routes.get(route)
            if routed is None:
                name = self._name
                routed = (
                    f'"backend": {name(route[0])}, "policy": {name(route[1])}, '
                    f'"reason": {name(route[2])}, '
                )
                if len(self._routes) < 4096:
                    self._routes[route] = routed
            details = json.dumps(decision.details) if decision.details else "null"
        else:
            routed, details = '"backend": "", "policy": "", "reason": "", ', "null"
        return (
            f'{{"request_id": {_escape(request.request_id)}, '
            f'"client_request_id": {_json_value(client_id)}, '
            f'"method": {_escape(request.method)}, "path": {_escape(request.path)}, '
            f'"model": {_escape(request.model)}, '
            f'"stream": {"true" if request.stream else "false"}, '
            f'"pool": {self._name(request.pool)}, '
            f'{routed}"status": {int(finished.status)}, "bytes": {int(finished.size)}, '
            f'"ttfb_ms": {"null" if ttfb_s is None else _ms(ttfb_s)}, '
            f'"duration_ms": {_ms(finished.duration_s)}, '
            f'"outcome": {self._name(finished.outcome)}, '
            f'"decision": {details}{self.tail}, "timestamp": {self.clock.now()}, '
            f'"pid": {self.pid}}}\n'
        ).encode()

    def request_done(self, finished: Finished, busy: bool) -> None:
        line = self.render(finished)
        self.lines.append(line)
        self.pending += len(line)
        if not busy or self.pending >= FLUSH_BYTES:
            self.flush()
        elif self._flusher is None:
            self._flusher = gevent.spawn_later(FLUSH_S, self._timed_flush)

    def _timed_flush(self) -> None:
        self._flusher = None
        self.flush()

    def flush(self) -> None:
        lines, self.lines, self.pending = self.lines, [], 0
        batch: list[bytes] = []
        size = 0
        for line in lines:
            if batch and size + len(line) > WRITE_MAX:
                self._write(b"".join(batch))
                batch, size = [], 0
            batch.append(line)
            size += len(line)
        if batch:
            self._write(b"".join(batch))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            pass  # stderr closed or full disk: the proxy keeps serving, as logging would

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.kill(block=False)
            self._flusher = None
        self.flush()


def for_config(log_format: str, stream: Any = None) -> RequestLog:
    """The fast JSON writer for JSON logs to a pipe or file; structlog for people."""
    stream = stream if stream is not None else sys.stderr
    if not logging.getLogger(LOGGER_NAME).isEnabledFor(logging.INFO):
        return StructlogRequestLog()  # structlog drops the line by level, as before
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return StructlogRequestLog()
    if log_format != "json" or os.isatty(fd):
        return StructlogRequestLog()
    return JsonRequestLog(fd)
