"""Client API keys, the Authorization header toward backends, /metrics for loopback only,
and the warning about a readable config file that holds a secret (in-process)."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import pytest
from structlog.testing import capture_logs

from llmlbd.config import load_config
from llmlbd.errors import InvalidApiKey
from llmlbd.server.auth import ApiKeys, read_keys
from llmlbd.server.master.cli import secrets_in, warn_if_secrets_readable
from tests.server.inproc import BODY, scripted


def call(proxy: Any, path: str, headers: dict[str, str], peer: str = "127.0.0.1") -> tuple:
    started: dict[str, Any] = {}

    def start_response(status: str, response_headers: list, exc_info: Any = None) -> None:
        started.update(status=status, headers={k.lower(): v for k, v in response_headers})

    environ = {
        "REQUEST_METHOD": "POST" if path.startswith("/v1/chat") else "GET",
        "PATH_INFO": path,
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(BODY)),
        "wsgi.input": io.BytesIO(BODY),
        "wsgi.url_scheme": "http",
        "REMOTE_ADDR": peer,
        **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()},
    }
    result = proxy.app(environ, start_response)
    body = b"".join(result)
    getattr(result, "close", lambda: None)()
    proxy.app.connection_idle(environ)
    return started["status"], started["headers"], body


@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# clients\nsk-alpha\n\n  sk-beta  \n")
    return str(path)


def test_keys_are_read_as_digests_and_compared(keys_file):
    keys = ApiKeys(keys_file)
    assert len(keys.digests) == 2 and b"sk-alpha" not in keys.digests
    keys.check("Bearer sk-alpha")
    keys.check("bearer   sk-beta")
    for bad in ("", "Bearer", "Bearer sk-gamma", "Basic sk-alpha", "sk-alpha"):
        with pytest.raises(InvalidApiKey) as caught:
            keys.check(bad)
        assert caught.value.status == 401 and caught.value.code == "invalid_api_key"


def test_an_empty_keys_file_is_refused_and_a_broken_one_fails_closed(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("# nobody\n")
    with pytest.raises(ValueError):
        read_keys(str(empty))
    keys = ApiKeys(str(tmp_path / "missing"))
    assert keys.enabled
    with pytest.raises(InvalidApiKey):
        keys.check("Bearer anything")


def test_requests_need_a_key_and_it_is_stripped_toward_backends(proxy, servers, keys_file):
    backend = scripted(servers)
    app = proxy({"b0": backend}, api_keys_file=keys_file)
    status, headers, body = call(app, "/v1/chat/completions", {})
    assert status.startswith("401")
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    assert headers["www-authenticate"] == "Bearer" and "x-llmlbd-request-id" in headers
    assert call(app, "/v1/models", {"authorization": "Bearer nope"})[0].startswith("401")
    # Probes stay open.
    assert call(app, "/healthz", {})[0].startswith("200")
    status, _, _ = call(app, "/v1/chat/completions", {"authorization": "Bearer sk-beta"})
    assert status.startswith("200")
    assert b"sk-beta" not in servers[0].requests[-1]
    assert b"authorization" not in servers[0].requests[-1].lower()


def test_forward_client_key_passes_it_on(proxy, servers, keys_file):
    app = proxy({"b0": scripted(servers)}, api_keys_file=keys_file, forward_client_key=True)
    assert call(app, "/v1/chat/completions", {"authorization": "Bearer sk-alpha"})[0][:3] == "200"
    assert b"Bearer sk-alpha" in servers[0].requests[-1]


def test_without_keys_the_client_authorization_passes_through(proxy, servers):
    app = proxy({"b0": scripted(servers)})
    assert call(app, "/v1/chat/completions", {"authorization": "Bearer vllm-key"})[0][:3] == "200"
    assert b"Bearer vllm-key" in servers[0].requests[-1]


def test_metrics_answer_loopback_peers_only_unless_public(proxy, servers):
    app = proxy({"b0": scripted(servers)})
    assert call(app, "/metrics", {})[0].startswith("200")
    assert call(app, "/metrics", {}, peer="::1")[0].startswith("200")
    status, _, body = call(app, "/metrics", {}, peer="10.1.2.3")
    assert status.startswith("403") and json.loads(body)["error"]["code"] == "forbidden"
    public = proxy({"b0": scripted(servers)}, public_metrics=True)
    assert call(public, "/metrics", {}, peer="10.1.2.3")[0].startswith("200")


def test_a_readable_config_with_a_secret_is_warned_about(tmp_path, monkeypatch):
    monkeypatch.setenv("B0_KEY", "backend-secret")
    path = tmp_path / "llmlbd.yaml"
    path.write_text(
        "redis: {url: 'redis://:pw@127.0.0.1:6379/0'}\n"
        "backends: [{url: 'http://127.0.0.1:9', name: b0, api_key_env: B0_KEY}]\n"
    )
    config = load_config(str(path))
    assert config.backends[0].api_key == "backend-secret"
    assert "backend-secret" not in repr(config.backends[0])
    assert secrets_in(config) == ["redis.url", "backends[b0].api_key"]
    os.chmod(path, 0o644)
    with capture_logs() as logs:
        warn_if_secrets_readable(config)
    assert [e["event"] for e in logs] == ["config_file_readable_by_others"]
    assert "backend-secret" not in json.dumps(logs, default=str)
    os.chmod(path, 0o600)
    with capture_logs() as logs:
        warn_if_secrets_readable(config)
    assert logs == []
