"""In-flight counts under stress: conserved, global across replicas, and healed after crashes."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest
import redis
import requests

from tests.harness import LLMLBD, StubBackends, join_all, start_threads, wait_until

pytestmark = pytest.mark.e2e

CHAT = {"model": "stub-model", "messages": [{"role": "user", "content": "hello"}]}


def inflight(client, pool="default") -> dict[str, int]:
    return {k: int(v) for k, v in client.hgetall(f"llmlb:{{{pool}}}:inflight").items()}


def open_stream(url: str, headers: dict, results: list, index: int) -> None:
    """One streaming request, read to the end (or until the backend aborts it)."""
    try:
        with requests.post(
            f"{url}/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers=headers,
            stream=True,
            timeout=30,
        ) as response:
            for _ in response.iter_content(None):
                pass
            results[index] = response.status_code
    except requests.RequestException as exc:
        results[index] = type(exc).__name__


@pytest.fixture
def stubs():
    with StubBackends(3) as backends:
        yield backends


def test_counts_equal_real_requests_and_return_to_zero(redis_server, stubs):
    """Many concurrent requests, streaming and not, with client aborts and backend errors:
    while they run, llmlbd's counts equal what the backends really serve; afterwards zero."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    config = {
        "redis": {"url": redis_server.url},
        "backends": stubs.config(),
        "collector": {"enabled": False},
    }
    with LLMLBD(config, workers=2) as proxy:
        # Phase 1: 24 long streams held open; compare with the backends' own counts.
        threads, results = start_threads(
            24, open_stream, proxy.url, {"x-stub-chunks": "20", "x-stub-interval": "0.1"}
        )
        wait_until(
            lambda: sum(stubs.inflight().values()) == 24,
            timeout=10,
            message="24 streams open at the backends",
        )
        truth = stubs.inflight()
        assert inflight(client) == {name: n for name, n in truth.items() if n}
        assert set(truth.values()) == {8}, truth  # exact global least-request balance
        join_all(threads)
        assert results == [200] * 24

        # Phase 2: chaos: aborts mid-stream by the client, backend errors and mid-stream drops.
        rng = random.Random(7)

        def chaos(index: int) -> None:
            kind = rng.choice(["ok", "stream", "client_abort", "backend_500", "backend_abort"])
            try:
                if kind == "ok":
                    requests.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=10)
                elif kind == "backend_500":
                    requests.post(
                        f"{proxy.url}/v1/chat/completions",
                        json=CHAT,
                        timeout=10,
                        headers={"x-stub-status": "500"},
                    )
                elif kind in ("stream", "backend_abort"):
                    headers = {"x-stub-chunks": "10", "x-stub-interval": "0.02"}
                    if kind == "backend_abort":
                        headers["x-stub-abort-after"] = "3"
                    open_stream(proxy.url, headers, [None], 0)
                else:
                    with requests.post(
                        f"{proxy.url}/v1/chat/completions",
                        timeout=10,
                        json={**CHAT, "stream": True},
                        stream=True,
                        headers={"x-stub-chunks": "50", "x-stub-interval": "0.05"},
                    ) as response:
                        next(response.iter_content(16))  # read a little, then hang up
            except requests.RequestException:
                pass

        threads = [threading.Thread(target=chaos, args=(i,)) for i in range(150)]
        for thread in threads:
            thread.start()
        join_all(threads)
        wait_until(
            lambda: inflight(client) == {} and sum(stubs.inflight().values()) == 0,
            timeout=10,
            message="every count back to zero",
        )
        assert client.hlen("llmlb:{default}:leases") == 0
    client.close()


def test_two_replicas_balance_globally(redis_server, stubs):
    """Two llmlbd instances sharing one Redis: with long requests, backend counts never
    differ by more than one."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    config = {
        "redis": {"url": redis_server.url},
        "backends": stubs.config(),
        "collector": {"enabled": False},
    }
    with (
        LLMLBD(config, workers=1, name="replica-a") as a,
        LLMLBD(config, workers=1, name="replica-b") as b,
    ):
        results: list = [None] * 30
        threads = []
        spread = []
        for i in range(30):
            thread = threading.Thread(
                target=open_stream,
                args=(
                    (a if i % 2 else b).url,
                    # 5 s streams: the first is still open when the 30th opens, even on
                    # a loaded machine (at 3 s the first ones could end before).
                    {"x-stub-chunks": "50", "x-stub-interval": "0.1"},
                    results,
                    i,
                ),
            )
            thread.start()
            threads.append(thread)
            time.sleep(0.02)
            counts = inflight(client)
            values = [counts.get(name, 0) for name in stubs.names]
            spread.append(max(values) - min(values))
        wait_until(
            lambda: sum(stubs.inflight().values()) == 30, timeout=10, message="30 streams open"
        )
        assert max(spread) <= 1, spread
        assert sorted(stubs.inflight().values()) == [10, 10, 10]
        join_all(threads)
        assert results == [200] * 30
    client.close()


def test_sigkilled_worker_stops_counting(redis_server, stubs):
    """A worker killed with SIGKILL mid-request cannot release: its leases are reaped and
    the counts converge to the truth within 10 s."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    config = {
        "redis": {"url": redis_server.url},
        "backends": stubs.config(),
        "collector": {"enabled": False},
        "server": {"lease_ttl_s": 3},
    }
    with LLMLBD(config, workers=2) as proxy:
        threads, _ = start_threads(
            8, open_stream, proxy.url, {"x-stub-chunks": "100", "x-stub-interval": "0.1"}
        )
        wait_until(
            lambda: sum(inflight(client).values()) == 8, timeout=10, message="8 requests in flight"
        )
        pids = proxy.worker_pids()
        os.kill(pids[0], signal.SIGKILL)
        killed_at = time.monotonic()
        # The killed worker's clients see their streams cut; the others go on.
        wait_until(
            lambda: sum(inflight(client).values()) == sum(stubs.inflight().values()),
            timeout=10,
            message="counts equal to the backends' truth",
        )
        assert time.monotonic() - killed_at < 10
        join_all(threads)
        wait_until(lambda: inflight(client) == {}, timeout=10, message="all released")
    client.close()


def test_redis_down_requests_keep_flowing_and_state_heals(private_redis, stubs):
    """Redis dies: requests go on (worker-local least request), /readyz says why;
    Redis comes back empty: llmlbd uses it again and counts are right."""
    config = {
        "redis": {"url": private_redis.url, "socket_timeout_s": 0.2, "breaker_reset_s": 0.5},
        "backends": stubs.config(),
        "collector": {"enabled": False},
    }
    with LLMLBD(config, workers=1) as proxy:
        assert requests.post(f"{proxy.url}/v1/chat/completions", json=CHAT).status_code == 200
        private_redis.kill()
        started = time.monotonic()
        statuses = [
            requests.post(f"{proxy.url}/v1/chat/completions", json=CHAT, timeout=5).status_code
            for _ in range(20)
        ]
        assert statuses == [200] * 20
        assert time.monotonic() - started < 5  # nobody waited seconds on Redis
        ready = requests.get(f"{proxy.url}/readyz")
        assert ready.status_code == 503 and "redis unreachable" in ready.json()["problems"][0]
        private_redis.start()
        client = redis.Redis.from_url(private_redis.url, decode_responses=True)
        wait_until(
            lambda: requests.get(f"{proxy.url}/readyz").status_code == 200,
            timeout=10,
            message="ready again",
        )
        threads, _ = start_threads(
            3, open_stream, proxy.url, {"x-stub-chunks": "20", "x-stub-interval": "0.1"}
        )
        wait_until(
            lambda: sum(inflight(client).values()) == 3, timeout=10, message="Redis counting again"
        )
        join_all(threads)
        wait_until(lambda: inflight(client) == {}, timeout=5, message="released")
        metrics = requests.get(f"{proxy.url}/metrics").text
        assert "llmlbd_fallback_decisions_total" in metrics
        client.close()


def test_redis_unreachable_at_start(stubs):
    """llmlbd starts without Redis, serves on the fallback, and says so on /readyz."""
    from tests.harness import free_port

    config = {
        "redis": {
            "url": f"redis://127.0.0.1:{free_port()}/0",
            "socket_timeout_s": 0.1,
            "connect_timeout_s": 0.1,
        },
        "backends": stubs.config(),
        "collector": {"enabled": False},
    }
    with LLMLBD(config, workers=1) as proxy:
        response = requests.post(f"{proxy.url}/v1/chat/completions", json=CHAT)
        assert response.status_code == 200
        ready = requests.get(f"{proxy.url}/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "not_ready"
        assert sum(stubs.inflight().values()) == 0
