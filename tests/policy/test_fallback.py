"""The worker-local fallback, in process: least-request over this worker's own counts."""

from __future__ import annotations

import random

import pytest

from llmlbd.config.loader import Backend, config_from_dict
from llmlbd.errors import NoBackend
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.fallback import LocalLeastRequest
from llmlbd.request import RoutingRequest
from llmlbd.state.keys import PoolKeys

BACKENDS = [
    Backend("a", "http://a", 1.0),
    Backend("b", "http://b", 1.0),
    Backend("c", "http://c", 2.0),
]


def fallback(backends=BACKENDS) -> LocalLeastRequest:
    ctx = PolicyContext(
        list(backends),
        config_from_dict({"lb_config": {"maxRequestCount": 0}}).lb_config,
        PoolKeys("fb"),
        None,
        rng=random.Random(7),
    )
    return LocalLeastRequest(ctx)


def request(i: int) -> RoutingRequest:
    return RoutingRequest(f"r{i}", "POST", "/v1/completions", body={})


def test_spreads_by_local_count_per_unit_of_weight() -> None:
    fb = fallback()
    picks = [fb.pick(request(i), frozenset()).backend.name for i in range(8)]
    # c weighs 2: it holds twice as many as a and b once the counts settle.
    assert dict(fb.inflight) == {"a": 2, "b": 2, "c": 4}
    assert sorted(set(picks)) == ["a", "b", "c"]
    decision = fb.pick(request(99), frozenset())
    assert decision.local and decision.reason == "redis_unavailable"
    assert decision.inflight == fb.inflight[decision.backend.name]


def test_release_is_exactly_once_and_never_negative() -> None:
    fb = fallback()
    decisions = [fb.pick(request(i), frozenset()) for i in range(5)]
    for decision in decisions:
        assert fb.release(decision.request_id) is True
        assert fb.release(decision.request_id) is False  # the second release is a no-op
    assert fb.release("never-picked") is False
    assert not fb.inflight and not fb.held


def test_avoids_backends_last_seen_down_or_drained() -> None:
    fb = fallback()
    fb.unavailable = {"a", "c"}
    assert {fb.pick(request(i), frozenset()).backend.name for i in range(6)} == {"b"}


def test_exclude_is_honoured_and_unavailable_is_a_last_resort() -> None:
    fb = fallback()
    fb.unavailable = {"a", "b"}
    # c excluded (a retry after it failed): a or b, stale health or not, beats no answer.
    names = {fb.pick(request(i), frozenset({"c"})).backend.name for i in range(6)}
    assert names == {"a", "b"}


def test_no_backend_left_is_a_503() -> None:
    fb = fallback()
    with pytest.raises(NoBackend) as caught:
        fb.pick(request(1), frozenset({"a", "b", "c"}))
    assert caught.value.status == 503
    assert not fb.inflight and not fb.held
