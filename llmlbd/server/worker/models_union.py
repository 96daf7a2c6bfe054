"""GET /v1/models: the union of every backend's models, cached for a moment."""

from __future__ import annotations

import json
import time
from typing import Any

import gevent
import urllib3

from llmlbd.config.loader import Backend

__all__ = ["ModelsCache"]


class ModelsCache:
    def __init__(self, backends: list[Backend], ttl_s: float = 2.0, timeout_s: float = 2.0) -> None:
        self.backends = backends
        self.ttl_s = ttl_s
        self.timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        self._http: urllib3.PoolManager | None = None  # built after fork, on first use
        self._cached: dict[str, Any] | None = None
        self._fetched_at = 0.0

    def _fetch(self, backend: Backend) -> list[dict[str, Any]]:
        assert self._http is not None
        try:
            response = self._http.request(
                "GET", f"{backend.url}/v1/models", timeout=self.timeout, retries=False
            )
            if response.status != 200:
                return []
            data = json.loads(response.data).get("data", [])
            return [model for model in data if isinstance(model, dict) and "id" in model]
        except (urllib3.exceptions.HTTPError, OSError, ValueError, AttributeError):
            return []

    def get(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._cached is not None and now - self._fetched_at < self.ttl_s:
            return self._cached
        if self._http is None:
            self._http = urllib3.PoolManager(maxsize=4)
        jobs = [gevent.spawn(self._fetch, backend) for backend in self.backends]
        gevent.joinall(jobs)
        merged: dict[str, dict[str, Any]] = {}
        for job in jobs:
            for model in job.value or []:
                merged.setdefault(model["id"], model)
        self._cached = {"object": "list", "data": list(merged.values())}
        self._fetched_at = now
        return self._cached
