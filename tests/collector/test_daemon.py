"""The collector against real HTTP backends and a real Redis."""

from __future__ import annotations

import time

import requests

from llmlbd.state import backend_fields as F
from llmlbd.state.keys import PoolKeys
from tests.collector.pages import OPENMETRICS, TEXT_004, page
from tests.harness import free_port, wait_until

KEYS = PoolKeys("default")
METRIC_FIELDS = {
    F.WAITING,
    F.RUNNING,
    F.KV_USAGE,
    F.PREFIX_QUERIES,
    F.PREFIX_HITS,
    F.BLOCK_SIZE,
    F.NUM_GPU_BLOCKS,
    F.MAX_LORA,
    F.LORA_RUNNING,
    F.LORA_WAITING,
}


def redis_ms(client) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def fields(client, name):
    return client.hgetall(KEYS.backend(name))


def wait_fields(client, name, predicate, timeout=5.0, message="fields"):
    return wait_until(
        lambda: (lambda h: h if predicate(h) else None)(fields(client, name)),
        timeout=timeout,
        interval=0.01,
        message=message,
    )


class TestPublish:
    def test_real_page_fresh_in_redis(self, redis_client, page_server, run_collector):
        """The real vLLM page lands in the backend hash, with models, health and a fresh scraped_at."""
        server = page_server(page("vllm_v1_0.33.txt"), models=page("vllm_models.json"))
        run_collector([("a", server.url)])
        h = wait_fields(
            redis_client, "a", lambda h: F.SCRAPED_AT in h and F.MODELS in h and F.HEALTH in h
        )
        assert h[F.WAITING] == "3" and h[F.RUNNING] == "24" and h[F.KV_USAGE] == "0.413721"
        assert h[F.BLOCK_SIZE] == "16" and h[F.NUM_GPU_BLOCKS] == "28042"
        assert h[F.LORA_RUNNING] == "sql-lora,food-review-1" and h[F.MAX_LORA] == "2"
        assert h[F.MODELS] == "meta-llama/Llama-3.1-8B-Instruct,sql-lora,food-review-1"
        assert h[F.HEALTH] == F.HEALTH_UP and h[F.FAILS] == "0"
        assert h[F.URL] == server.url and float(h[F.SCRAPE_MS]) >= 0
        # scraped_at is on Redis's clock and keeps up with the 50 ms interval.
        time.sleep(0.3)
        age = redis_ms(redis_client) - int(fields(redis_client, "a")[F.SCRAPED_AT])
        assert 0 <= age < 500
        assert 0 <= redis_ms(redis_client) - int(h[F.MODELS_AT]) < 5000

    def test_content_types_and_chunked(self, redis_client, page_server, run_collector):
        """0.0.4 text, OpenMetrics and a chunked body are all read."""
        a = page_server(page("vllm_dp2_sim.txt"), content_type=TEXT_004)
        b = page_server(page("vllm_openmetrics.txt"), content_type=OPENMETRICS)
        c = page_server(page("sglang_0.5.txt"))
        c.chunked = True
        run_collector([("a", a.url), ("b", b.url), ("c", c.url)])
        assert wait_fields(redis_client, "a", lambda h: F.RUNNING in h)[F.KV_USAGE] == "0.6"
        assert wait_fields(redis_client, "b", lambda h: F.RUNNING in h)[F.PREFIX_HITS] == "32"
        assert wait_fields(redis_client, "c", lambda h: F.RUNNING in h)[F.WAITING] == "4"

    def test_missing_family_degrades_only_its_fields(
        self, redis_client, page_server, run_collector
    ):
        """A family that disappears is deleted from the hash (unknown), the rest stays current."""
        full = page("vllm_dp2_sim.txt")
        server = page_server(full)
        run_collector([("a", server.url)])
        wait_fields(redis_client, "a", lambda h: h.get(F.LORA_RUNNING) == "fr,de")
        without_lora = b"\n".join(line for line in full.split(b"\n") if b"lora" not in line)
        server.body = without_lora.replace(b"} 7.0", b"} 17.0")
        h = wait_fields(redis_client, "a", lambda h: h.get(F.RUNNING) == "22")
        h = wait_fields(redis_client, "a", lambda h: F.LORA_RUNNING not in h)
        assert F.MAX_LORA not in h and F.LORA_WAITING not in h
        assert h[F.KV_USAGE] == "0.6" and h[F.NUM_GPU_BLOCKS] == "20000"
        server.body = full
        wait_fields(redis_client, "a", lambda h: h.get(F.MAX_LORA) == "4")

    def test_no_models_endpoint_means_unknown(self, redis_client, page_server, run_collector):
        """A server without /v1/models has no models field (serves anything as far as we know)."""
        server = page_server(page("sglang_0.5.txt"))
        run_collector([("a", server.url)])
        wait_fields(redis_client, "a", lambda h: F.RUNNING in h)
        wait_until(lambda: "/v1/models" in server.requests)
        time.sleep(0.1)
        assert F.MODELS not in fields(redis_client, "a")


class TestBadBackends:
    def test_garbage_page_keeps_last_values_and_ages(
        self, redis_client, page_server, run_collector
    ):
        """An HTML page is a failed scrape: last values stay, scraped_at stops, last_error says why."""
        server = page_server(page("vllm_dp2_sim.txt"))
        run = run_collector([("a", server.url)])
        wait_fields(redis_client, "a", lambda h: F.RUNNING in h)
        server.body = page("garbage.html")
        h = wait_fields(redis_client, "a", lambda h: "no known metric" in h.get(F.LAST_ERROR, ""))
        before = int(h[F.SCRAPED_AT])
        time.sleep(0.3)
        h = fields(redis_client, "a")
        assert int(h[F.SCRAPED_AT]) == before and h[F.RUNNING] == "12"
        assert run.collector.metrics.scrapes.labels("a", "no_known_metrics")._value.get() > 0
        server.content_type = "text/html; charset=utf-8"
        wait_until(
            lambda: run.collector.metrics.scrapes.labels("a", "not_metrics")._value.get() > 0
        )

    def test_truncated_and_oversized_pages_fail(self, redis_client, page_server, run_collector):
        """A body cut short of its Content-Length, and one over max_page_bytes, are failed scrapes."""
        real = page("vllm_v1_0.33.txt")
        cut = page_server(real)
        cut.truncate_at = 30000
        big = page_server(real + b"# padding\n" * 20000)  # ~270 KB
        ok = page_server(real)
        run = run_collector(
            [("cut", cut.url), ("big", big.url), ("ok", ok.url)], max_page_bytes=100_000
        )
        wait_fields(redis_client, "ok", lambda h: F.RUNNING in h)
        counts = run.collector.metrics.scrapes
        wait_until(lambda: counts.labels("cut", "truncated")._value.get() >= 2, message="truncated")
        wait_until(lambda: counts.labels("big", "too_large")._value.get() >= 2, message="too_large")
        for name in ("cut", "big"):
            h = fields(redis_client, name)
            assert F.SCRAPED_AT not in h and not METRIC_FIELDS & set(h)
            assert h[F.LAST_ERROR].startswith("metrics:")

    def test_hanging_backend_does_not_delay_others(self, redis_client, page_server, run_collector):
        """A backend that never answers times out and goes down; its neighbour stays fresh."""
        slow = page_server(page("vllm_dp2_sim.txt"))
        slow.hang_s = 5.0
        fast = page_server(page("vllm_dp2_sim.txt"))
        run = run_collector(
            [("slow", slow.url), ("fast", fast.url)],
            timeout_ms=200,
            down_after=2,
            health_interval_ms=100,
        )
        h = wait_fields(
            redis_client,
            "slow",
            lambda h: h.get(F.HEALTH) == F.HEALTH_DOWN,
            timeout=6,
            message="slow down",
        )
        assert "timed out" in h[F.LAST_ERROR] and int(h[F.FAILS]) >= 2
        ages = []
        for _ in range(10):
            ages.append(redis_ms(redis_client) - int(fields(redis_client, "fast")[F.SCRAPED_AT]))
            time.sleep(0.05)
        assert max(ages) < 400, ages
        assert run.collector.metrics.scrapes.labels("slow", "timeout")._value.get() >= 1

    def test_flapping_backend_hysteresis(self, redis_client, page_server, run_collector):
        """Down only after down_after failures in a row, up only after up_after successes."""
        server = page_server(page("vllm_dp2_sim.txt"))
        run_collector([("a", server.url)], health_interval_ms=150, down_after=3, up_after=3)
        wait_fields(redis_client, "a", lambda h: h.get(F.HEALTH) == F.HEALTH_UP)
        server.health_status = 503
        h = wait_fields(redis_client, "a", lambda h: h.get(F.FAILS) in ("1", "2"))
        assert h[F.HEALTH] == F.HEALTH_UP  # one or two failures: still up
        h = wait_fields(redis_client, "a", lambda h: h.get(F.HEALTH) == F.HEALTH_DOWN)
        assert int(h[F.FAILS]) >= 3 and "503" in h[F.LAST_ERROR]
        server.health_status = 200
        h = wait_fields(redis_client, "a", lambda h: h.get(F.SUCCESSES) in ("1", "2"))
        assert h[F.HEALTH] == F.HEALTH_DOWN
        h = wait_fields(redis_client, "a", lambda h: h.get(F.HEALTH) == F.HEALTH_UP)
        assert int(h[F.SUCCESSES]) >= 3

    def test_refused_connection(self, redis_client, run_collector):
        """Nothing listening: health goes down with 'connection refused'."""
        url = f"http://127.0.0.1:{free_port()}"
        run_collector([("gone", url)], down_after=2)
        h = wait_fields(redis_client, "gone", lambda h: h.get(F.HEALTH) == F.HEALTH_DOWN)
        assert "refused" in h[F.LAST_ERROR]


class TestOwnMetrics:
    def test_metrics_endpoint_reports_scrapes_and_staleness(
        self, redis_client, page_server, run_collector
    ):
        """/metrics on metrics_port counts scrapes and flags a stale backend."""
        good = page_server(page("vllm_dp2_sim.txt"))
        bad = page_server(page("garbage.html"))
        port = free_port()
        run = run_collector(
            [("good", good.url), ("bad", bad.url)], metrics_port=port, stale_after_ms=300
        )
        wait_until(run.collector.ready.is_set)
        time.sleep(0.5)
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'llmlbd_collector_scrapes_total{backend="good",outcome="ok"}' in text
        assert 'llmlbd_collector_backend_stale{backend="bad"} 1.0' in text
        assert 'llmlbd_collector_backend_stale{backend="good"} 0.0' in text
        assert "llmlbd_collector_stale_backends 1.0" in text
        assert "llmlbd_collector_owned_backends 2.0" in text
        assert 'llmlbd_collector_backend_up{backend="good"} 1.0' in text
        assert "python_gc" not in text  # its own registry, not the global one


def test_new_owner_continues_the_previous_health_state(redis_client, page_server, run_collector):
    """After a takeover the hysteresis goes on from what the last owner wrote (a down backend stays down)."""
    server = page_server(page("vllm_dp2_sim.txt"))
    redis_client.hset(
        KEYS.backend("a"), mapping={F.HEALTH: F.HEALTH_DOWN, F.FAILS: "7", F.SUCCESSES: "0"}
    )
    run_collector([("a", server.url)], health_interval_ms=150, up_after=3)
    h = wait_fields(redis_client, "a", lambda h: h.get(F.SUCCESSES) in ("1", "2"))
    assert h[F.HEALTH] == F.HEALTH_DOWN
    wait_fields(redis_client, "a", lambda h: h.get(F.HEALTH) == F.HEALTH_UP)


def test_a_bug_costs_one_scrape_not_the_worker(
    redis_client, page_server, run_collector, monkeypatch
):
    """An unexpected exception in a read is logged and counted; the backend keeps being scraped."""
    import collector.worker as worker_module

    real = worker_module.read_metrics
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(worker_module, "read_metrics", flaky)
    server = page_server(page("vllm_dp2_sim.txt"))
    run = run_collector([("a", server.url)])
    wait_until(lambda: calls["n"] > 5)
    assert run.collector.metrics.scrapes.labels("a", "internal_error")._value.get() == 1
    before = int(fields(redis_client, "a")[F.SCRAPED_AT])
    wait_until(lambda: int(fields(redis_client, "a")[F.SCRAPED_AT]) > before)
