"""Every error a client can get from llmlbd, with its HTTP status, in one table.

Each class carries `status`, `type` and `code`; the proxy renders any of them
as an OpenAI-style body ``{"error": {"message", "type", "code"}}``. Nothing
else maps exceptions to statuses.
"""

from __future__ import annotations

__all__ = [
    "LLMLBError",
    "BadRequest",
    "BodyTooLarge",
    "RouteNotFound",
    "MethodNotAllowed",
    "ModelNotFound",
    "OverCapacity",
    "Shed",
    "UpstreamFailed",
    "NoBackend",
    "UpstreamTimeout",
    "RequestTimeout",
    "Overloaded",
    "InvalidApiKey",
    "Forbidden",
]


class LLMLBError(Exception):
    status = 500
    type = "internal_error"
    code = "internal_error"
    # Seconds for a Retry-After header, when retrying later can help.
    retry_after: int | None = None

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        # True once the proxy wrote this error's request-log line (with its backend).
        self.logged = False

    def headers(self) -> list[tuple[str, str]]:
        """Response headers this error adds (Retry-After when retrying later can help)."""
        if self.retry_after is None:
            return []
        return [("Retry-After", str(self.retry_after))]

    def body(self) -> dict[str, object]:
        return {
            "error": {"message": self.message, "type": self.type, "code": self.code, "param": None}
        }


class BadRequest(LLMLBError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class InvalidApiKey(LLMLBError):
    """server.api_keys_file is set and the request's bearer key is not in it."""

    status, type, code = 401, "invalid_request_error", "invalid_api_key"

    def headers(self) -> list[tuple[str, str]]:
        return [("WWW-Authenticate", "Bearer")]


class Forbidden(LLMLBError):
    """An admin surface (/metrics) asked for from a peer it does not answer."""

    status, type, code = 403, "invalid_request_error", "forbidden"


class BodyTooLarge(LLMLBError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class RouteNotFound(LLMLBError):
    status, type, code = 404, "invalid_request_error", "not_found"


class RequestTimeout(LLMLBError):
    """The client stopped sending its request body (server.client_body_timeout_s)."""

    status, type, code = 408, "invalid_request_error", "request_timeout"


class MethodNotAllowed(LLMLBError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"

    def __init__(self, message: str, allow: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> list[tuple[str, str]]:
        return [("Allow", ", ".join(self.allow))] if self.allow else []


class ModelNotFound(LLMLBError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class OverCapacity(LLMLBError):
    """Every backend is at lb_config.maxRequestCount."""

    status, type, code = 429, "rate_limit_error", "max_request_count"
    retry_after = 1


class Shed(LLMLBError):
    """A sheddable request met a saturated pool."""

    status, type, code = 429, "rate_limit_error", "shed"
    retry_after = 1


class UpstreamFailed(LLMLBError):
    status, type, code = 502, "upstream_error", "backend_failed"


class NoBackend(LLMLBError):
    status, type, code = 503, "service_unavailable", "no_backend"
    retry_after = 1


class Overloaded(LLMLBError):
    """This worker already serves server.max_concurrent_requests requests."""

    status, type, code = 503, "service_unavailable", "overloaded"
    retry_after = 1


class UpstreamTimeout(LLMLBError):
    status, type, code = 504, "timeout_error", "upstream_timeout"
