"""API keys end to end: a real llmlbd with server.api_keys_file and a per-backend outgoing key
from the environment; the keys reach no log line."""

from __future__ import annotations

import signal

import pytest
import requests

from tests.fakeserver import ScriptedServer
from tests.harness import LLMLBD, wait_until
from tests.server.inproc import OK

pytestmark = pytest.mark.e2e

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_client_keys_and_backend_key(redis_server, tmp_path):
    keys = tmp_path / "api-keys"
    keys.write_text("sk-client-one\nsk-client-two\n")
    backend = ScriptedServer(then=OK)
    try:
        config = {
            "redis": {"url": redis_server.url},
            "backends": [{"name": "b0", "url": backend.url, "api_key_env": "LLMLBD_TEST_B0_KEY"}],
            "collector": {"enabled": False},
            "server": {"api_keys_file": str(keys)},
        }
        env = {"LLMLBD_TEST_B0_KEY": "sk-backend-secret"}
        with LLMLBD(config, workers=1, env=env) as proxy:
            url = f"{proxy.url}/v1/chat/completions"
            refused = requests.post(url, json=CHAT, timeout=10)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_api_key"
            wrong = requests.post(url, json=CHAT, headers={"Authorization": "Bearer x"}, timeout=10)
            assert wrong.status_code == 401
            assert requests.get(f"{proxy.url}/readyz", timeout=10).status_code in (200, 503)
            good = requests.post(
                url, json=CHAT, headers={"Authorization": "Bearer sk-client-two"}, timeout=10
            )
            assert good.status_code == 200, good.text
            sent = backend.requests[-1]
            assert b"Bearer sk-backend-secret" in sent and b"sk-client-two" not in sent
            # SIGHUP re-reads the file: new workers take the new key, the old one is refused.
            keys.write_text("sk-client-three\n")
            proxy.proc.signal(signal.SIGHUP)
            three = {"Authorization": "Bearer sk-client-three"}
            wait_until(
                lambda: requests.post(url, json=CHAT, headers=three, timeout=10).status_code == 200,
                timeout=30,
                message="the new key accepted after SIGHUP",
            )
            two = {"Authorization": "Bearer sk-client-two"}
            wait_until(  # once the old worker stopped accepting
                lambda: requests.post(url, json=CHAT, headers=two, timeout=10).status_code == 401,
                timeout=30,
                message="the removed key refused after SIGHUP",
            )
            log = proxy.log()
        for secret in ("sk-backend-secret", "sk-client-one", "sk-client-two", "sk-client-three"):
            assert secret not in log
    finally:
        backend.close()
