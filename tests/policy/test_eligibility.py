"""One eligibility rule: the Python filters define it, every acquire script must agree.

Each case is one backend's shared state and one request. It runs through
llmlbd.policy.eligibility (built from the healthy, serves_model and
below_cap filters), through those filters as a pipeline, and through every
Lua script that applies ``ineligible()`` and the cap (acquire_backend,
acquire_least_request, acquire_prefix in both modes) against a real Redis;
the ordered index those scripts keep (placement by ``ineligible()`` with no
model) must hold the backend exactly when it is neither drained nor down.
The answers must be identical. Scripts that choose among candidates report
only the pool's combined reason (llmlbd.policy.outcomes.combined_reason),
so for them "drained" and "down" both read "none".
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest

from llmlbd.config.loader import Backend
from llmlbd.policy.eligibility import REASONS, ineligible
from llmlbd.policy.filters.below_cap import BelowCap
from llmlbd.policy.filters.healthy import Healthy
from llmlbd.policy.filters.serves_model import ServesModel
from llmlbd.policy.outcomes import combined_reason
from llmlbd.request import RoutingRequest
from llmlbd.state import backend_fields as F
from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases
from llmlbd.state.ordered_index import Membership, read_index
from llmlbd.state.prefix import PrefixIndex, PrefixParams
from llmlbd.state.snapshot import read_pool
from tests.state.least_request import acquire_least

NAME = "b1"


@dataclass(frozen=True)
class Case:
    id: str
    expected: str | None  # the reason, or None when eligible
    drained: bool = False
    health: str | None = None  # None: never checked
    models: str | None = None  # None: list unknown
    model: str = ""
    inflight: int = 0
    cap: int = 0
    stale: bool = False  # metrics scraped long ago
    ejected_for_ms: int | None = None  # an outlier ejection ending this far from now


CASES = [
    Case("up", None, health="up"),
    Case("never_checked", None),
    Case("unknown_health", None, health=F.HEALTH_UNKNOWN),
    Case("down", "down", health=F.HEALTH_DOWN),
    Case("drained", "drained", drained=True, health="up"),
    Case("drained_and_down", "drained", drained=True, health=F.HEALTH_DOWN),
    Case("down_wrong_model", "down", health=F.HEALTH_DOWN, models="x", model="m"),
    Case("serves_model", None, health="up", models="x,m", model="m"),
    Case("model_not_served", "model", health="up", models="x,y", model="m"),
    Case("model_prefix_is_not_a_match", "model", health="up", models="mm,m2", model="m"),
    Case("model_list_unknown", None, health="up", model="m"),
    Case("no_model_asked", None, health="up", models="x"),
    Case("at_cap", "cap", health="up", inflight=3, cap=3),
    Case("over_cap", "cap", health="up", inflight=5, cap=3),
    Case("below_cap", None, health="up", inflight=2, cap=3),
    Case("no_cap", None, health="up", inflight=50, cap=0),
    Case("wrong_model_at_cap", "model", health="up", models="x", model="m", inflight=3, cap=3),
    Case("down_at_cap", "down", health=F.HEALTH_DOWN, inflight=3, cap=3),
    Case("stale_metrics", None, health="up", models="m", model="m", stale=True),
    Case("stale_down", "down", health=F.HEALTH_DOWN, stale=True),
    Case("ejected", "ejected", health="up", ejected_for_ms=60_000),
    Case("ejected_health_unknown", "ejected", ejected_for_ms=60_000),
    Case("drained_and_ejected", "drained", drained=True, ejected_for_ms=60_000),
    Case("down_and_ejected", "down", health=F.HEALTH_DOWN, ejected_for_ms=60_000),
    Case("ejected_wrong_model", "ejected", models="x", model="m", ejected_for_ms=60_000),
    Case("ejected_at_cap", "ejected", inflight=3, cap=3, ejected_for_ms=60_000),
]


def seed(client, keys: PoolKeys, case: Case) -> None:
    if case.drained:
        client.sadd(keys.drained, NAME)
    if case.inflight:
        client.hset(keys.inflight, NAME, case.inflight)
    fields = {F.URL: "http://b1"}
    if case.health is not None:
        fields[F.HEALTH] = case.health
    if case.models is not None:
        fields[F.MODELS] = case.models
    now_s, micros = client.time()
    now_ms = int(now_s) * 1000 + int(micros) // 1000
    fields[F.SCRAPED_AT] = str(now_ms - (600_000 if case.stale else 10))
    client.hset(keys.backend(NAME), mapping=fields)
    if case.ejected_for_ms is not None:
        client.zadd(keys.ejected, {NAME: now_ms + case.ejected_for_ms})


def python_filters(state, case: Case) -> str | None:
    """The filters as a pipeline, mapped to the short reasons."""
    request = RoutingRequest("r", "POST", "/v1/completions", body={}, model=case.model)
    candidates = [state]
    for reason, unit in (
        ("healthy", Healthy()),
        ("model", ServesModel()),
        ("cap", BelowCap(cap=case.cap)),
    ):
        result = unit.filter(request, candidates)
        if not result.kept:
            removed = result.removed[NAME]
            return removed if reason == "healthy" else reason
        candidates = result.kept
    return None


def script_answers(client, keys: PoolKeys, case: Case) -> dict[str, str | None]:
    """Each acquire script's answer for the case: None (reserved) or its reason."""
    answers: dict[str, str | None] = {}
    calls = itertools.count()
    leases = Leases(client, keys, "host:1:test", ttl_ms=5000)

    def outcome(backend: str | None, reason: str) -> str | None:
        if backend is not None:
            assert backend == NAME
            leases.release(request_id)  # give it back so the next script sees the same state
            return None
        return reason

    request_id = f"r{next(calls)}"
    r = leases.acquire(request_id, NAME, model=case.model, cap=case.cap)
    answers["acquire_backend"] = outcome(r.backend, r.reason)
    request_id = f"r{next(calls)}"
    r = acquire_least(leases, request_id, [NAME], [1.0], model=case.model, cap=case.cap)
    answers["acquire_least_request"] = outcome(r.backend, r.reason)
    for mode in ("bounded", "weighted"):
        index = PrefixIndex(leases, PrefixParams(mode=mode, min_match_blocks=1))
        request_id = f"r{next(calls)}"
        p = index.acquire(
            request_id,
            Membership.of([NAME], [1.0]),
            1,
            (),
            ["h1"],
            [1],
            model=case.model,
            cap=case.cap,
        )
        answers[f"acquire_prefix_{mode}"] = outcome(p.backend, p.reason)
    return answers


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_one_rule_everywhere(case: Case, redis_client) -> None:
    keys = PoolKeys("elig")
    seed(redis_client, keys, case)
    (state,) = read_pool(redis_client, keys, [Backend(NAME, "http://b1")])

    assert ineligible(state, case.model, case.cap) == case.expected
    assert python_filters(state, case) == case.expected

    # Scripts that choose among candidates speak for the pool: drained/down -> "none".
    pooled = None if case.expected is None else combined_reason([case.expected])
    assert script_answers(redis_client, keys, case) == {
        "acquire_backend": case.expected,
        "acquire_least_request": pooled,
        "acquire_prefix_bounded": pooled,
        "acquire_prefix_weighted": pooled,
    }
    # The ordered index holds exactly the backends the rule lets serve some model: drained
    # and down ones are out; a model list or the cap only filters at pick time.
    index = read_index(redis_client, keys)
    in_model_index = NAME in index.get(keys.index_model(case.model), {}) or NAME in index.get(
        keys.index_any_model, {}
    )
    out = ("drained", "down", "ejected")
    assert (NAME in index.get(keys.index_all, {})) == (case.expected not in out)
    if case.model and case.expected not in out:
        assert in_model_index == (case.expected != "model")
    # Nothing leaked: the count is the one the case wrote.
    assert int(redis_client.hget(keys.inflight, NAME) or 0) == case.inflight


def test_the_table_covers_every_reason() -> None:
    assert {c.expected for c in CASES} == {None, *REASONS}
