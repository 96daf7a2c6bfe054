"""One worker's ProxyApp in the test process, over scripted backends (tests/fakeserver.py):
a real Router on a real Redis, real sockets; no gunicorn subprocess."""

from __future__ import annotations

import io
import json
from typing import Any

from llmlbd.config import config_from_dict
from llmlbd.server.worker.runtime import WorkerRuntime
from llmlbd.server.worker.wsgi import ProxyApp
from llmlbd.state.keys import PoolKeys
from tests.fakeserver import ScriptedServer, http_response

OK = http_response(200, b'{"ok": true}', {"Content-Type": "application/json"})
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


class Proxy:
    """One worker's ProxyApp over *backends* (name -> URL), called as WSGI."""

    def __init__(self, redis_url: str, backends: dict[str, str], **server: Any) -> None:
        self._build(
            {
                "lb_policy": "round_robin",
                "redis": {"url": redis_url},
                "server": {"connect_timeout_s": 1.0, "read_timeout_s": 2.0, **server},
                "backends": [{"name": n, "url": u} for n, u in backends.items()],
            }
        )

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> Proxy:
        """A proxy over any config (e.g. several pools)."""
        proxy = cls.__new__(cls)
        proxy._build(data)
        return proxy

    def _build(self, data: dict[str, Any]) -> None:
        self.config = config_from_dict(data)
        self.app = ProxyApp(self.config)
        # What init_worker does, minus its background greenlet: this process runs no hub.
        self.app.runtime = WorkerRuntime.build(self.config, "test-worker")
        self.redis = self.app.runtime.client

    def post(self, path: str = "/v1/chat/completions") -> tuple[str, dict[str, str], bytes]:
        return self.call("POST", path, BODY)

    def get(self, path: str) -> tuple[str, dict[str, str], bytes]:
        return self.call("GET", path, b"")

    def call(self, method: str, path: str, body: bytes) -> tuple[str, dict[str, str], bytes]:
        """One request; the body is read whole and the response closed, as gunicorn does."""
        started: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
            started.update(status=status, headers={k.lower(): v for k, v in headers})

        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http",
            "REMOTE_ADDR": "127.0.0.1",
        }
        result = self.app(environ, start_response)
        try:
            answer = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
            self.app.connection_idle(environ)  # gunicorn's post_request hook
        return started["status"], started["headers"], answer

    def inflight(self) -> dict[str, int]:
        raw = self.redis.hgetall(PoolKeys(self.config.server.pool).inflight)
        return {_text(k): int(v) for k, v in raw.items() if int(v)}

    def close(self) -> None:
        self.app.shutdown_worker()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def scripted(servers: list[ScriptedServer], *replies: object, then: bytes | None = OK) -> str:
    servers.append(ScriptedServer(*replies, then=then))
    return servers[-1].url
