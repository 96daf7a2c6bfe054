"""A backend's speed and slots, learned over its scrapes (collector/speed.py).

The unit tests feed `Speed.derive` the raw fields of successive pages; the last
test runs the collector on a real ``llmlbd sim`` server with two running slots
and checks what reaches the backend's hash.
"""

from __future__ import annotations

import concurrent.futures

import pytest
import requests

from collector.sources import (
    INFERENCE_COUNT,
    INFERENCE_SUM,
    PREFILL_COUNT,
    PREFILL_SUM,
    WAITING_CAPACITY,
)
from collector.speed import DECAY, Speed
from llmlbd.state import backend_fields as F
from llmlbd.state.keys import PoolKeys
from tests.harness import wait_until
from tests.simfleet import SimFleet


def page(
    inference: tuple[float, float] | None = (0.0, 0),
    prefill: tuple[float, float] | None = (0.0, 0),
    running: int | None = 0,
    waiting: int | None = 0,
    capacity: int | None = None,
) -> dict[str, str]:
    """The raw fields a scrape hands to Speed (as read_metrics stores them: text)."""
    values: dict[str, str] = {}
    if inference is not None:
        values[INFERENCE_SUM], values[INFERENCE_COUNT] = str(inference[0]), str(inference[1])
    if prefill is not None:
        values[PREFILL_SUM], values[PREFILL_COUNT] = str(prefill[0]), str(prefill[1])
    if running is not None:
        values[F.RUNNING] = str(running)
    if waiting is not None:
        values[F.WAITING] = str(waiting)
    if capacity is not None:
        values[WAITING_CAPACITY] = str(capacity)
    return values


def test_raw_fields_are_taken_out_and_means_follow_the_increments() -> None:
    """The first page gives the lifetime mean; later ones weigh new requests, older ones
    decay by DECAY per scrape; a scrape with no new request changes nothing."""
    speed = Speed()
    values = page(inference=(20.0, 10), prefill=(1.0, 10))
    out, delete = speed.derive(values)
    assert not set(values) - {F.RUNNING, F.WAITING}  # the raw fields never reach the hash
    assert (out[F.SERVICE_S], out[F.PREFILL_S]) == ("2", "0.1") and not delete
    out, _ = speed.derive(page(inference=(20.0 + 2 * 0.5, 12), prefill=(1.0 + 0.04, 12)))
    assert float(out[F.SERVICE_S]) == pytest.approx((2.0 * DECAY + 1.0) / (DECAY + 2), abs=1e-6)
    assert float(out[F.PREFILL_S]) == pytest.approx((0.1 * DECAY + 0.04) / (DECAY + 2), abs=1e-6)
    again, _ = speed.derive(page(inference=(21.0, 12), prefill=(1.04, 12)))
    assert again[F.SERVICE_S] == out[F.SERVICE_S]


def test_no_request_finished_yet_is_unknown_and_missing_histograms_delete() -> None:
    """Count 0: no mean, the field is deleted; a page without the histograms too."""
    speed = Speed()
    out, delete = speed.derive(page())
    assert F.SERVICE_S not in out and {F.SERVICE_S, F.PREFILL_S} <= set(delete)
    out, delete = speed.derive(page(inference=None, prefill=None))
    assert {F.SERVICE_S, F.PREFILL_S} <= set(delete)


def test_a_restarted_server_is_learned_again() -> None:
    """A count going backwards starts over from the new process's figures."""
    speed = Speed()
    speed.derive(page(inference=(100.0, 10), prefill=(1.0, 10), running=8, capacity=2))
    out, _ = speed.derive(page(inference=(3.0, 3), prefill=(0.3, 3), running=1, capacity=0))
    assert (out[F.SERVICE_S], out[F.PREFILL_S], out[F.SLOTS]) == ("1", "0.1", "2")


@pytest.mark.parametrize(
    "pages, slots",
    [
        # never had to queue: one more than the most seen running
        ([dict(running=0), dict(running=3), dict(running=1)], "4"),
        # requests waited for capacity: the most seen running is the capacity
        ([dict(running=3), dict(running=4, capacity=2), dict(running=1)], "4"),
        # waiting for a LoRA slot (deferred) is not a full server
        ([dict(running=2, waiting=3, capacity=0)], "3"),
        # no capacity split on the page (vLLM before 0.20): any waiting request counts
        ([dict(running=2, waiting=3)], "2"),
    ],
)
def test_slots(pages: list[dict], slots: str) -> None:
    speed = Speed()
    for fields in pages:
        out, _ = speed.derive(page(**fields))
    assert out[F.SLOTS] == slots


def test_slots_unknown_without_running() -> None:
    out, delete = Speed().derive(page(running=None))
    assert F.SLOTS not in out and F.SLOTS in delete


def test_a_real_server_reports_its_slots_and_speed(redis_client, run_collector) -> None:
    """On an `llmlbd sim` with 2 running slots, 6 requests at once make it queue: the hash
    gets slots 2, and a service time longer than the time to the first token."""
    with SimFleet(1, max_num_seqs=2, time_scale=0.2) as fleet:
        run_collector([("s", fleet.url)], interval_ms=20)
        key = PoolKeys("default").backend("s")
        body = {
            "model": "sim-llama",
            "messages": [{"role": "user", "content": "count to twenty"}],
            "max_tokens": 32,
            "ignore_eos": True,
        }

        def send(_: int) -> int:
            return requests.post(
                fleet.url + "/v1/chat/completions", json=body, timeout=30
            ).status_code

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            assert list(pool.map(send, range(6))) == [200] * 6
        wait_until(
            lambda: (
                redis_client.hget(key, F.SLOTS) == "2"
                and redis_client.hget(key, F.SERVICE_S) is not None
            ),
            timeout=10,
            message="slots and service_s published",
        )
        fields = redis_client.hgetall(key)
        assert 0 < float(fields[F.PREFILL_S]) < float(fields[F.SERVICE_S])
        assert not {INFERENCE_SUM, INFERENCE_COUNT, WAITING_CAPACITY} & set(fields)
