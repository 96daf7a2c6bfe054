"""llmlbd against a Redis that enforces the documented ACL user, and against a TLS-only Redis.

Both run the proxy (2 workers), its collector and `llmlbctl status` for real.

The ACL rules come from docs/redis-acl.md itself, so the page is what is
tested: the proxy, its collector and `llmlbctl status` work as that user,
`ACL LOG` records no refusal, and a command outside the set is refused.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Callable

import pytest
import redis
import yaml

from llmlbd.config.loader import config_from_dict
from llmlbd.embedded import EmbeddedRedis
from llmlbd.state.client import connect
from tests.faults.certs import make_certs
from tests.faults.load import send
from tests.faults.world import POOL
from tests.harness import LLMLBD, ROOT, free_port, wait_until
from tests.simfleet import SimFleet

pytestmark = pytest.mark.e2e

PASSWORD = "s3cret-llmlbd"


def documented_rules() -> str:
    page = (ROOT / "docs" / "redis-acl.md").read_text()
    block = re.search(r"<!-- acl-rules:begin -->\n```\n(.*?)```", page, re.S)
    assert block, "docs/redis-acl.md lost its acl-rules block"
    return " ".join(block.group(1).split())


def proxy_config(redis_section: dict, fleet: SimFleet) -> dict:
    return {
        "redis": redis_section,
        "backends": [{"name": n, "url": u} for n, u in zip(fleet.names, fleet.urls)],
        "collector": {"enabled": True, "metrics_port": free_port()},
    }


def full_cycle(proxy: LLMLBD, published: Callable[[], bool]) -> None:
    """The collector publishes, a plain and a streamed request complete, /readyz is 200."""
    wait_until(published, timeout=30, message="the collector published every backend")
    for stream in (False, True):
        outcome = send(proxy.url, stream=stream, max_tokens=8)
        assert outcome.ok, outcome.describe()
    wait_until(lambda: proxy_ready(proxy), timeout=10, message="/readyz 200")


def ctl_status(config: dict, tmp_path) -> subprocess.CompletedProcess:
    """`llmlbctl status` with *config*, in its own process; asserts it succeeded."""
    config_path = tmp_path / "ctl.yaml"
    config_path.write_text(yaml.safe_dump(config))
    status = subprocess.run(
        [sys.executable, "-m", "llmlbd.ctl", "--config", str(config_path), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(ROOT),
    )
    assert status.returncode == 0, status.stdout + status.stderr
    return status


def proxy_ready(proxy: LLMLBD) -> bool:
    import requests

    return requests.get(f"{proxy.url}/readyz", timeout=2).status_code == 200


def backends_published(client: redis.Redis, names: list[str]) -> Callable[[], bool]:
    return lambda: all(client.exists(f"llmlb:{{{POOL}}}:backend:{name}") for name in names)


def test_least_privilege_acl_user_runs_everything_and_nothing_more(tmp_path):
    with (
        EmbeddedRedis(runtime_dir=tempfile.mkdtemp(), port=free_port()) as server,
        SimFleet(2) as fleet,
    ):
        admin = redis.Redis.from_url(server.url, decode_responses=True)
        admin.execute_command("ACL", "SETUSER", "llmlbd", "reset", "on", f">{PASSWORD}",
                              *documented_rules().split())  # fmt: skip
        admin.execute_command("ACL", "LOG", "RESET")
        section = {"url": server.url, "username": "llmlbd", "password": PASSWORD}
        config = proxy_config(section, fleet)
        with LLMLBD(config, workers=2, name="acl") as proxy:
            full_cycle(proxy, backends_published(admin, fleet.names))
            status = ctl_status(config, tmp_path)
            assert "sim-0" in status.stdout and "sim-1" in status.stdout, status.stdout
        refusals = admin.execute_command("ACL", "LOG")
        assert not refusals, f"llmlbd needed a command the documented rules refuse: {refusals}"

        # The rules are really enforced: the llmlbd user cannot wipe, reconfigure or read others.
        user = redis.Redis.from_url(
            server.url, username="llmlbd", password=PASSWORD, decode_responses=True
        )
        admin.set("other:secret", "x")
        for command in (("FLUSHALL",), ("CONFIG", "GET", "*"), ("GET", "other:secret"),
                        ("KEYS", "*"), ("SCRIPT", "FLUSH")):  # fmt: skip
            with pytest.raises(redis.exceptions.NoPermissionError):
                user.execute_command(*command)
        assert user.hgetall(f"llmlb:{{{POOL}}}:inflight") == {}
        user.close()
        admin.close()


def test_tls_only_redis_with_client_certs(tmp_path):
    certs = make_certs(tmp_path)
    tls_port = free_port()
    tls_args = [
        "--tls-port", str(tls_port), "--tls-cert-file", certs.server_cert,
        "--tls-key-file", certs.server_key, "--tls-ca-cert-file", certs.ca,
        "--tls-auth-clients", "yes",
    ]  # fmt: skip
    # Port 0: no plain TCP at all (the unix socket is the test's own admin door).
    with (
        EmbeddedRedis(runtime_dir=tempfile.mkdtemp(), port=0, extra_args=tls_args) as server,
        SimFleet(2) as fleet,
    ):
        admin = redis.Redis.from_url(server.url, decode_responses=True)
        url = f"rediss://127.0.0.1:{tls_port}/0"
        section = {
            "url": url,
            "tls_ca_file": certs.ca,
            "tls_cert_file": certs.client_cert,
            "tls_key_file": certs.client_key,
        }
        config = proxy_config(section, fleet)
        with LLMLBD(config, workers=2, name="tls") as proxy:
            full_cycle(proxy, backends_published(admin, fleet.names))
            assert "sim-1" in ctl_status(config, tmp_path).stdout
        # TLS is enforced: without a client certificate, or without TLS, Redis refuses.
        no_cert = redis.Redis.from_url(url, ssl_ca_certs=certs.ca, socket_timeout=5)
        with pytest.raises(redis.exceptions.ConnectionError):
            no_cert.ping()
        plain = redis.Redis(host="127.0.0.1", port=tls_port, socket_timeout=2)
        with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            plain.ping()
        # A redis:// URL with tls_* keys speaks TLS too (the keys alone turn it on).
        plain_url_config = config_from_dict(
            {**config, "redis": {**section, "url": f"redis://127.0.0.1:{tls_port}/0"}}
        )
        assert connect(plain_url_config).ping()
        good = redis.Redis.from_url(
            url, ssl_ca_certs=certs.ca, ssl_certfile=certs.client_cert,
            ssl_keyfile=certs.client_key,
        )  # fmt: skip
        assert good.ping()
        admin.close()


def test_prefix_scripts_shared_prefix_paths_run_under_the_acl_user():
    """The prefix indexes' rarer paths (a prefix every backend holds: the precise index's
    holder search and sample, the approximate index's sampled wide level) and the KV-event
    scripts call only commands the documented rules allow."""
    import dataclasses
    import random

    from llmlbd.kvblocks import hashing
    from llmlbd.policy.context import PolicyContext
    from llmlbd.policy.profiles.prefix_cache import PrefixCache
    from llmlbd.request import RoutingRequest
    from llmlbd.state.keys import PoolKeys
    from llmlbd.state.kv_index import KVIndexWriter
    from llmlbd.state.leases import Leases
    from llmlbd.state.ordered_index import sync

    names = ["b0", "b1", "b2"]
    tokens = list(range(1000, 1000 + 16 * 6))
    with EmbeddedRedis(runtime_dir=tempfile.mkdtemp(), port=free_port()) as server:
        admin = redis.Redis.from_url(server.url, decode_responses=True)
        admin.execute_command("ACL", "SETUSER", "llmlbd", "reset", "on", f">{PASSWORD}",
                              *documented_rules().split())  # fmt: skip
        admin.execute_command("ACL", "LOG", "RESET")
        user = redis.Redis.from_url(
            server.url, username="llmlbd", password=PASSWORD, decode_responses=True
        )
        keys = PoolKeys(POOL)
        for name in names:
            user.hset(keys.backend(name), mapping={"health": "up", "models": "m"})
            writer = KVIndexWriter(user, keys, name, "acl", 1000, 60_000)
            writer.apply(["S", "gpu", 4, *hashing.block_hashes(tokens, 16)[:4]], 0, 0.0, 16)
            writer.live()
        for index in ("precise", "approximate"):
            cfg = config_from_dict(
                {
                    "lb_policy": "prefix_cache",
                    "lb_config": {"index": index},
                    "backends": [{"name": n, "url": f"http://127.0.0.1:1/{n}"} for n in names],
                }
            )
            leases = Leases(user, keys, "acl:1", 60_000)
            ctx = PolicyContext(
                cfg.backends, cfg.lb_config, keys, leases, user, rng=random.Random(1)
            )
            policy = PrefixCache(ctx)
            sync(user, keys, ctx.membership)
            assert policy.index is not None
            policy.index.params = dataclasses.replace(policy.index.params, wide_level_holders=1)
            if policy.precise is not None:
                precise = policy.precise.index
                precise.params = dataclasses.replace(precise.params, wide_holders=1)
                body: dict = {"model": "m", "prompt": tokens + [7] * 16 * 4}
            else:  # every backend holds the system prompt's levels, others branched after it
                system = {"role": "system", "content": "a system prompt the pool shares. " * 20}
                shared = RoutingRequest("s", "POST", "/v1/x", {"messages": [system]}, model="m")
                levels = policy.levels(shared).hashes
                now = int(admin.time()[0]) * 1000
                for name in names:
                    for h in levels:
                        admin.hset(keys.prefix(h), name, now)
                        admin.zadd(keys.prefix_owned_by(name), {h: now})
                admin.hset(keys.prefix(levels[-1]), "#", 3)
                ask = {"role": "user", "content": "a new question " * 20}
                body = {"model": "m", "messages": [system, ask]}
            request = RoutingRequest(f"{index}-1", "POST", "/v1/x", body, model="m")
            decision = policy.pick(request, frozenset())
            assert decision.details.get("index", "approximate") == index
            assert decision.reason in ("affinity", "shared_prefix"), decision
            policy.explain(request)
            leases.release(decision.request_id)
        refusals = admin.execute_command("ACL", "LOG")
        assert not refusals, f"llmlbd needed a command the documented rules refuse: {refusals}"
        user.close()
        admin.close()
