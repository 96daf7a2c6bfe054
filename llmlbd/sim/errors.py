"""vLLM's error body: ``{"error": {"message", "type", "param", "code"}}``, status = code.

That is the shape since vLLM 0.10.1; the ``type`` names follow vLLM's
exception classes for each status.
"""

from __future__ import annotations

import json

__all__ = ["ERROR_TYPES", "error_body", "SimHTTPError"]

ERROR_TYPES = {
    400: "BadRequestError",
    401: "Unauthorized",
    404: "NotFoundError",
    408: "TimeoutError",
    422: "UnprocessableEntityError",
    429: "TooManyRequestsError",
    500: "InternalServerError",
    501: "NotImplementedError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


def error_body(
    status: int, message: str, param: str | None = None, error_type: str | None = None
) -> bytes:
    return json.dumps(
        {
            "error": {
                "message": message,
                "type": error_type or ERROR_TYPES.get(status, "InternalServerError"),
                "param": param,
                "code": status,
            }
        }
    ).encode()


class SimHTTPError(Exception):
    """An error the app turns into vLLM's error body."""

    def __init__(
        self, status: int, message: str, param: str | None = None, error_type: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.error_type = error_type

    def body(self) -> bytes:
        return error_body(self.status, self.message, self.param, self.error_type)
