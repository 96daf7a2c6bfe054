"""GET /v1/models: the union of every backend's models, cached for a moment.

Fetched through the worker's own upstream client (worker/http1.py via Upstreams),
so a worker has one HTTP client and its keep-alive pools serve these GETs too.
"""

from __future__ import annotations

import json
import time
from typing import Any

import gevent

from llmlbd.config.loader import Backend
from llmlbd.server.worker.forward import (
    BodyError,
    ConnectFailure,
    Response,
    UpstreamReadTimeout,
    Upstreams,
)

__all__ = ["ModelsCache"]

# A model list is a few KiB; anything far larger is not one.
MAX_BODY_BYTES = 1024 * 1024


class ModelsCache:
    def __init__(self, backends: list[Backend], ttl_s: float = 2.0, timeout_s: float = 2.0) -> None:
        self.backends = backends
        self.ttl_s = ttl_s
        # The upstream read timeout suits generation (minutes); a model list gets seconds.
        self.timeout_s = timeout_s
        self._cached: dict[str, Any] | None = None
        self._fetched_at = 0.0

    def _fetch(self, upstreams: Upstreams, backend: Backend) -> list[dict[str, Any]]:
        response: Response | None = None
        try:
            with gevent.Timeout(self.timeout_s):
                response = upstreams.open(
                    backend, "GET", "/v1/models", {"accept": "application/json"}, None
                )
                if response.status != 200:
                    return []
                body = bytearray()
                for piece in response.iter_body():
                    body += piece
                    if len(body) > MAX_BODY_BYTES:
                        return []
            data = json.loads(body).get("data", [])
            return [model for model in data if isinstance(model, dict) and "id" in model]
        # AttributeError: valid JSON that is not an object. One backend's bad answer
        # leaves its models out; it never fails the whole list.
        except (
            gevent.Timeout,
            ConnectFailure,
            UpstreamReadTimeout,
            BodyError,
            ValueError,
            AttributeError,
        ):
            return []
        finally:
            if response is not None:
                response.release()  # pooled only if read whole; closed otherwise

    def get(self, upstreams: Upstreams) -> dict[str, Any]:
        now = time.monotonic()
        if self._cached is not None and now - self._fetched_at < self.ttl_s:
            return self._cached
        jobs = [gevent.spawn(self._fetch, upstreams, backend) for backend in self.backends]
        gevent.joinall(jobs)
        merged: dict[str, dict[str, Any]] = {}
        for job in jobs:
            for model in job.value or []:
                merged.setdefault(model["id"], model)
        self._cached = {"object": "list", "data": list(merged.values())}
        self._fetched_at = now
        return self._cached
