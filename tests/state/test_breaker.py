"""The circuit breaker, in process: closed -> open after N failures -> half-open probe -> closed or open."""

from __future__ import annotations

import threading
import time

from llmlbd.state.breaker import Breaker

LONG_S = 60.0  # a reset period no test waits out: "still open" checks cannot race the clock
SHORT_S = 0.05


def opened(breaker: Breaker) -> Breaker:
    for _ in range(breaker.max_failures):
        breaker.failure()
    return breaker


def test_closed_lets_every_call_through_and_counts_only_consecutive_failures() -> None:
    breaker = Breaker(failures=3, reset_s=LONG_S)
    assert breaker.state == "closed" and breaker.allow()
    assert breaker.failure() is False
    assert breaker.failure() is False
    breaker.success()  # a success in between: the count starts again
    assert breaker.failure() is False
    assert breaker.failure() is False
    assert breaker.state == "closed" and breaker.allow()


def test_opens_on_the_nth_consecutive_failure_and_refuses_calls() -> None:
    breaker = Breaker(failures=3, reset_s=LONG_S)
    assert [breaker.failure() for _ in range(3)] == [False, False, True]
    assert breaker.state == "open"
    assert not breaker.allow()
    # More failures while open (calls already in flight) do not re-open it.
    assert breaker.failure() is False
    assert breaker.state == "open"


def test_after_reset_exactly_one_caller_probes() -> None:
    breaker = opened(Breaker(failures=2, reset_s=SHORT_S))
    time.sleep(SHORT_S * 2)
    allowed = []
    threads = [threading.Thread(target=lambda: allowed.append(breaker.allow())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(allowed) == [False] * 7 + [True]
    assert breaker.state == "half-open"


def test_a_successful_probe_closes() -> None:
    breaker = opened(Breaker(failures=2, reset_s=SHORT_S))
    time.sleep(SHORT_S * 2)
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed"
    assert breaker.allow() and breaker.allow()
    assert breaker.failure() is False  # the count restarted from zero


def test_a_failed_probe_reopens_for_a_whole_period() -> None:
    breaker = opened(Breaker(failures=5, reset_s=SHORT_S))
    time.sleep(SHORT_S * 2)
    assert breaker.allow()
    assert breaker.failure() is True  # one failure is enough while probing
    assert breaker.state == "open"
    assert not breaker.allow()
    breaker.reset_s = LONG_S  # the new period counts from the failed probe
    assert not breaker.allow()
