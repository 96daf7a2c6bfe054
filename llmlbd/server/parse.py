"""Read and check a request body, and extract only what routing needs."""

from __future__ import annotations

import json
from typing import Any

from llmlbd.errors import BadRequest
from llmlbd.request import RoutingRequest
from llmlbd.server.jsonlimits import load_json

__all__ = ["parse_request", "CRITICALITY_HEADER"]

CRITICALITY_HEADER = "x-llmlbd-criticality"
CRITICALITIES = ("critical", "standard", "sheddable")
# Endpoints whose body must name a model.
MODEL_REQUIRED = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
# Endpoints whose body is JSON whatever the Content-Type header says.
JSON_ENDPOINTS = frozenset(
    {
        *MODEL_REQUIRED,
        "/v1/responses",
        "/tokenize",
        "/detokenize",
        "/v1/score",
        "/v1/rerank",
        "/rerank",
        "/pooling",
    }
)


def parse_request(
    request_id: str, method: str, path: str, headers: dict[str, str], body: bytes
) -> RoutingRequest:
    """Build the RoutingRequest; raise BadRequest naming what is wrong."""
    request = RoutingRequest(request_id=request_id, method=method, path=path, headers=headers)
    criticality = headers.get(CRITICALITY_HEADER, "").strip().lower()
    if criticality:
        if criticality not in CRITICALITIES:
            raise BadRequest(
                f"header {CRITICALITY_HEADER} must be one of "
                f"{', '.join(CRITICALITIES)}, got {criticality!r}"
            )
        request.criticality = criticality
    if method != "POST" or not body:
        if method == "POST" and path in MODEL_REQUIRED:
            raise BadRequest("the request body is empty; expected a JSON object")
        return request
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type.startswith("multipart/") or content_type == "application/octet-stream":
        return request  # e.g. audio uploads: forwarded untouched, routed by load only
    # Like vLLM, read JSON whatever the content type says (curl -d sends a form type).
    try:
        data: Any = load_json(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        declared_json = content_type == "application/json" or content_type.endswith("+json")
        if not declared_json and path not in JSON_ENDPOINTS:
            return request
        if isinstance(exc, UnicodeDecodeError):
            raise BadRequest("the request body is not valid UTF-8 JSON") from None
        raise BadRequest(
            f"the request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(data, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(data).__name__}")
    request.body = data
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string")
    if model and not _encodable(model):
        raise BadRequest("'model' holds an unpaired surrogate (\\ud800-\\udfff)")
    if not model and path in MODEL_REQUIRED:
        raise BadRequest("the request body has no 'model'")
    request.model = model or ""
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false")
    request.stream = stream
    priority = data.get("priority")
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise BadRequest("'priority' must be an integer")
        request.priority = priority
    salt = data.get("cache_salt")
    if isinstance(salt, str) and _encodable(salt):
        request.cache_salt = salt
    return request


def _encodable(text: str) -> bool:
    """JSON may escape lone surrogates (\\ud800) that no UTF-8 key, log or header can hold."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
