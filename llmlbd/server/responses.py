"""Small JSON responses: errors in OpenAI's shape, health and readiness."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from llmlbd.errors import LLMLBError

StartResponse = Callable[..., Any]


def json_response(
    start_response: StartResponse,
    status: int,
    payload: Any,
    extra_headers: Iterable[tuple[str, str]] = (),
    exc_info: Any = None,
) -> list[bytes]:
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        *extra_headers,
    ]
    if exc_info is None:
        start_response(_status_line(status), headers)
    else:
        # WSGI: replaces a status and headers that were set but not yet sent.
        start_response(_status_line(status), headers, exc_info)
    return [body]


def error_response(
    start_response: StartResponse,
    error: LLMLBError,
    extra_headers: Iterable[tuple[str, str]] = (),
    exc_info: Any = None,
) -> list[bytes]:
    headers = [*extra_headers, *error.headers()]
    return json_response(start_response, error.status, error.body(), headers, exc_info)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    401: "Unauthorized",
    403: "Forbidden",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _status_line(status: int) -> str:
    return f"{status} {_REASONS.get(status, 'Unknown')}"


def sse_error_event(message: str, code: str = "upstream_error") -> bytes:
    """The last event of a stream that broke after its first byte (no retry is possible then)."""
    payload = {"error": {"message": message, "type": "upstream_error", "code": code}}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"
