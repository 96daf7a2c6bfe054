"""The three reads the collector makes of a backend: /metrics, the health path, /v1/models.

Each returns data or raises `FetchError` whose ``kind`` (timeout, refused,
http_503, too_large, truncated, not_metrics, ...) feeds the collector's
own metrics and the hash's ``last_error``.
"""

from __future__ import annotations

import json
import os

from collector.http11 import FetchError, HTTPConnection

__all__ = ["ACCEPT", "get_metrics_text", "check_health", "get_models", "API_KEY_ENV", "FetchError"]

# Plain text first (smaller, no _created lines in multiprocess servers);
# OpenMetrics is understood too, as is whatever a server sends for */*.
ACCEPT = (
    "text/plain;version=0.0.4;q=0.6,text/plain;version=1.0.0;q=0.5,"
    "application/openmetrics-text;version=1.0.0;q=0.4,*/*;q=0.1"
)
_METRICS_HEADERS = {"Accept": ACCEPT}

# vLLM puts /v1/* (so /v1/models) behind --api-key, but not /metrics or /health.
API_KEY_ENV = "LLMLBD_BACKEND_API_KEY"

# Bodies that are certainly not an exposition (an HTML error page, JSON).
_NOT_METRICS = ("text/html", "application/json")


def get_metrics_text(
    conn: HTTPConnection, timeout: float, max_bytes: int, path: str = "/metrics"
) -> str:
    """The /metrics page as text; FetchError if it is not a 200 metrics page."""
    response = conn.get(path, timeout, max_bytes, _METRICS_HEADERS)
    if response.status != 200:
        raise FetchError(f"http_{response.status}", f"/metrics answered {response.status}")
    ctype = response.headers.get("content-type", "").lower()
    if ctype.startswith(_NOT_METRICS):
        raise FetchError("not_metrics", f"/metrics answered {ctype}")
    return response.body.decode("utf-8", "replace")


def check_health(conn: HTTPConnection, path: str, timeout: float) -> None:
    """Return if *path* answers 2xx; raise FetchError otherwise."""
    response = conn.get(path, timeout, 64 * 1024)
    if not 200 <= response.status < 300:
        raise FetchError(f"http_{response.status}", f"{path} answered {response.status}")


def get_models(
    conn: HTTPConnection, timeout: float, max_bytes: int = 1024 * 1024
) -> list[str] | None:
    """Ids of /v1/models (base models and LoRA adapters); None if the server has no such endpoint."""
    headers = {"Accept": "application/json"}
    key = os.environ.get(API_KEY_ENV)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    response = conn.get("/v1/models", timeout, max_bytes, headers)
    if response.status in (404, 405):
        return None
    if response.status != 200:
        raise FetchError(f"http_{response.status}", f"/v1/models answered {response.status}")
    try:
        data = json.loads(response.body)
        ids = [str(card["id"]) for card in data["data"]]
    except (ValueError, KeyError, TypeError):
        raise FetchError("bad_response", "/v1/models is not an OpenAI model list") from None
    # The hash stores a comma-separated list: a comma in an id cannot be kept.
    return [i.replace(",", "") for i in ids if i]
