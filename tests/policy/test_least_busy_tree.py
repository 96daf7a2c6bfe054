"""least_busy decision tables, run through the real policy against a real Redis.

Each case in data/least_busy_tree.yaml writes per-backend metrics hashes and
in-flight counts, then picks (and releases) many times: the set of backends
returned must equal the case's `expect`, or every pick must raise its error.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmlbd import errors
from llmlbd.config.loader import Backend, config_from_dict
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.profiles.least_busy import SHORTLIST, LeastBusy
from llmlbd.request import RoutingRequest
from llmlbd.state.keys import PoolKeys
from llmlbd.state.leases import Leases

DATA = Path(__file__).parent / "data" / "least_busy_tree.yaml"
CASES = yaml.safe_load(DATA.read_text())
PICKS = 120
ERRORS = {
    "shed": errors.Shed,
    "no_backend": errors.NoBackend,
    "model_not_found": errors.ModelNotFound,
    "over_capacity": errors.OverCapacity,
}
SPECIAL = {"inflight", "drained", "age_ms"}


class Pool:
    """A pool whose shared state a test writes directly into Redis, as the collector would."""

    def __init__(
        self,
        client: Any,
        names: list[str],
        lb_config: dict | None = None,
        pool: str = "t",
        stale_after_ms: int = 2000,
        seed: int = 7,
    ) -> None:
        self.client = client
        self.keys = PoolKeys(pool)
        self.backends = [
            Backend(name, f"http://127.0.0.1:{9000 + i}") for i, name in enumerate(names)
        ]
        config = config_from_dict({"lb_policy": "least_busy", "lb_config": lb_config or {}})
        self.leases = Leases(client, self.keys, "test-worker", 5000)
        self.ctx = PolicyContext(
            self.backends,
            config.lb_config,
            self.keys,
            self.leases,
            client,
            stale_after_ms=stale_after_ms,
            rng=random.Random(seed),
        )
        self.policy = LeastBusy(self.ctx)
        self._n = 0

    def now_ms(self) -> int:
        seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def set_backend(self, name: str, spec: dict) -> None:
        key = self.keys.backend(name)
        self.client.delete(key)
        fields = {k: str(v) for k, v in spec.items() if k not in SPECIAL}
        if "age_ms" in spec:
            fields["scraped_at"] = str(self.now_ms() - int(spec["age_ms"]))
        if fields:
            self.client.hset(key, mapping=fields)
            self.client.incr(self.keys.metrics_version)  # as the collector's publish does
        self.client.hset(self.keys.inflight, name, int(spec.get("inflight", 0)))
        if spec.get("drained"):
            self.client.sadd(self.keys.drained, name)
        else:
            self.client.srem(self.keys.drained, name)

    def request(self, **fields: Any) -> RoutingRequest:
        self._n += 1
        return RoutingRequest(
            request_id=f"r{self._n}", method="POST", path="/v1/chat/completions", **fields
        )

    def pick_and_release(self, request_fields: dict, exclude: frozenset[str] = frozenset()):
        decision = self.policy.pick(self.request(**request_fields), exclude)
        assert self.leases.release(decision.request_id)
        return decision


def _ids(cases: list[dict]) -> list[str]:
    return [case["id"] for case in cases]


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_decision_table(case: dict, redis_client) -> None:
    """The policy returns exactly the backends the table allows, or the table's error."""
    pool = Pool(redis_client, list(case["backends"]), case.get("lb_config"))
    for name, spec in case["backends"].items():
        pool.set_backend(name, spec or {})
    request = dict(case.get("request") or {})
    if "error" in case:
        for _ in range(5):
            with pytest.raises(ERRORS[case["error"]]) as caught:
                pool.pick_and_release(request)
        assert caught.value.status in (404, 429, 503)
        # Nothing leaked: the in-flight counts are those the case wrote.
        assert {k: int(v) for k, v in redis_client.hgetall(pool.keys.inflight).items()} == {
            name: int((spec or {}).get("inflight", 0)) for name, spec in case["backends"].items()
        }
        return
    seen: Counter[str] = Counter()
    reasons = set()
    for _ in range(PICKS):
        # Metrics ages are relative to now: on a loaded machine (or under coverage) 120 picks
        # outlast the 500 ms between a case's age_ms and the staleness threshold.
        for name, spec in case["backends"].items():
            if spec and "age_ms" in spec:
                pool.set_backend(name, spec)
        decision = pool.pick_and_release(request)
        seen[decision.backend.name] += 1
        reasons.add(decision.reason)
    assert set(seen) == set(case["expect"]), (seen, decision.details)
    if "reason" in case:
        assert reasons == {case["reason"]}


def test_uniform_final_pick(redis_client) -> None:
    """Among equal survivors the pick is uniform (each of 4 gets 25% +- 8 points over 800)."""
    pool = Pool(redis_client, ["a", "b", "c", "d"], seed=11)
    for name in "abcd":
        pool.set_backend(name, {"waiting": 1, "kv_usage": 0.5, "age_ms": 0})
    seen = Counter(
        pool.pick_and_release({"criticality": "critical"}).backend.name for _ in range(800)
    )
    assert all(0.17 <= seen[name] / 800 <= 0.33 for name in "abcd"), seen


def test_exclude_is_honoured(redis_client) -> None:
    """Backends the proxy excludes (failed before the first byte) are never returned."""
    pool = Pool(redis_client, ["a", "b"])
    pool.set_backend("a", {"waiting": 0, "kv_usage": 0.0, "age_ms": 0})
    pool.set_backend("b", {"waiting": 50, "kv_usage": 0.9, "age_ms": 0})
    assert {pool.pick_and_release({}, frozenset({"a"})).backend.name for _ in range(20)} == {"b"}
    with pytest.raises(errors.NoBackend):
        pool.policy.pick(pool.request(), frozenset({"a", "b"}))


def test_burst_between_scrapes_spreads(redis_client) -> None:
    """Picks held open between two scrapes spread over equal backends instead of herding."""
    pool = Pool(redis_client, ["a", "b", "c", "d"])
    for name in "abcd":
        pool.set_backend(name, {"waiting": 0, "running": 0, "kv_usage": 0.2, "age_ms": 0})
    held = Counter(
        pool.policy.pick(pool.request(criticality="critical"), frozenset()).backend.name
        for _ in range(40)
    )
    # The metrics never change, yet each backend ends with 10 +- 1 in flight.
    assert max(held.values()) - min(held.values()) <= 2, held
    assert sum(held.values()) == 40


class RacingLeastBusy(LeastBusy):
    """Another worker drains the chosen backend between our snapshot and our reservation."""

    race: tuple[Any, str, str] | None = None

    def evaluate(self, request, states):
        result = super().evaluate(request, states)
        if self.race is not None:
            client, key, name = self.race
            client.sadd(key, name)
            self.race = None
        return result


def test_refused_reservation_picks_again(redis_client) -> None:
    """A backend refused by the reservation script is dropped and the tree runs again."""
    pool = Pool(redis_client, ["a", "b"])
    pool.set_backend("a", {"waiting": 0, "kv_usage": 0.0, "age_ms": 0})
    pool.set_backend("b", {"waiting": 60, "kv_usage": 0.5, "age_ms": 0})
    policy = RacingLeastBusy(pool.ctx)
    policy.race = (redis_client, pool.keys.drained, "a")
    decision = policy.pick(pool.request(criticality="critical"), frozenset())
    assert decision.backend.name == "b"
    assert decision.details["refused"] == {"a": "drained"}
    assert len(decision.details["rounds"]) == 2
    assert redis_client.hget(pool.keys.inflight, "b") == "1"
    assert redis_client.hget(pool.keys.inflight, "a") == "0"


def test_decision_details_trace(redis_client) -> None:
    """Decision.details names the criticality, its source and every filter that ran."""
    pool = Pool(redis_client, ["a", "b"], {"criticalModels": ["m"]})
    pool.set_backend("a", {"waiting": 0, "kv_usage": 0.0, "age_ms": 0})
    pool.set_backend("b", {"waiting": 0, "kv_usage": 0.0, "age_ms": 9000})
    decision = pool.pick_and_release({"model": "m"})
    details = decision.details
    assert (details["criticality"], details["criticality_source"]) == ("critical", "criticalModels")
    trace = details["rounds"][0]
    assert [step["filter"] for step in trace] == [
        "healthy",
        "serves_model",
        "below_cap",
        "fresh_metrics",
        "critical_request",
        "low_queue",
        "least_wait",
        "lora_affinity",
        "least_kv",
    ]
    fresh = trace[3]
    assert fresh["kept"] == ["a"] and fresh["removed"]["b"].startswith("stale metrics")


def test_shed_error_is_openai_shaped_with_retry_after(redis_client) -> None:
    """A shed request gets 429, an OpenAI-style body and a Retry-After value."""
    pool = Pool(redis_client, ["a"])
    pool.set_backend("a", {"waiting": 9, "kv_usage": 0.1, "age_ms": 0})
    with pytest.raises(errors.Shed) as caught:
        pool.pick_and_release({"criticality": "sheddable"})
    error = caught.value
    assert error.status == 429 and error.retry_after and error.retry_after >= 1
    body = error.body()["error"]
    assert body["type"] == "rate_limit_error" and body["code"] == "shed"
    assert "queueThresholdCritical" in body["message"]


def test_explain_reserves_nothing_and_names_the_filters(redis_client) -> None:
    """explain() gives the survivors, why each other backend was removed, and reserves nothing."""
    pool = Pool(redis_client, ["a", "b", "c"])
    pool.set_backend("a", {"waiting": 0, "kv_usage": 0.1, "age_ms": 0})
    pool.set_backend("b", {"waiting": 0, "kv_usage": 0.1, "age_ms": 0, "health": "down"})
    pool.set_backend("c", {"waiting": 40, "kv_usage": 0.1, "age_ms": 0})
    data = pool.policy.explain(pool.request(criticality="critical"))
    assert data["choice"] == "a" and data["ties"] == ["a"]
    assert data["reason"] == "critical_low_latency" and data["outcome"] == {"status": 200}
    removed = {c["name"]: c["removed_by"] for c in data["candidates"]}
    assert removed["a"] is None
    assert removed["b"] == "healthy: down"
    assert removed["c"].startswith("least_wait: queue 40 >")  # no speed known: by queue
    assert data["criticality"] == "critical (from header)"
    assert redis_client.hlen(pool.keys.leases) == 0
    assert redis_client.hget(pool.keys.inflight, "a") == "0"


def test_explain_scores_are_the_expected_waits_the_pick_uses(redis_client) -> None:
    """With speeds known, explain's score is least_wait's expected wait, and its choice is
    the backend the policy picks."""
    pool = Pool(redis_client, ["fast", "slow", "down"])
    speed = {"kv_usage": 0.1, "age_ms": 0, "slots": 4}
    pool.set_backend(
        "fast",
        {**speed, "waiting": 2, "running": 4, "inflight": 6, "service_s": 0.2, "prefill_s": 0.01},
    )
    pool.set_backend(
        "slow",
        {**speed, "waiting": 1, "running": 4, "inflight": 5, "service_s": 1.2, "prefill_s": 0.06},
    )
    pool.set_backend("down", {**speed, "health": "down", "service_s": 0.1, "prefill_s": 0.01})
    data = pool.policy.explain(pool.request(criticality="critical"))
    scores = {c["name"]: c["score"] for c in data["candidates"]}
    assert scores == {"fast": 0.16, "slow": 0.66, "down": None}
    assert "expected seconds to the first token" in data["score_meaning"]
    removed = {c["name"]: c["removed_by"] for c in data["candidates"]}
    assert removed["slow"].startswith("least_wait: wait_s 0.660 > 0.170")
    assert data["choice"] == "fast" and data["ties"] == ["fast"]
    picks = {pool.pick_and_release({"criticality": "critical"}).backend.name for _ in range(20)}
    assert picks == {"fast"}


def test_explain_shed(redis_client) -> None:
    """explain() reports the 429 a shed request would get."""
    pool = Pool(redis_client, ["a"], {"criticalModels": ["vip"]})
    pool.set_backend("a", {"waiting": 9, "kv_usage": 0.1, "age_ms": 0})
    data = pool.policy.explain(pool.request(model="other"))
    assert data["choice"] is None
    assert data["outcome"]["status"] == 429 and data["outcome"]["code"] == "shed"
    assert [f["name"] for f in data["filters"]][-1] == "sheddable_capacity"


def test_large_pool_decides_on_a_shortlist_with_exact_counts(redis_client) -> None:
    """Above SHORTLIST backends a decision ranks a few backends, not the pool: their
    in-flight counts and drains are exact on every call, the metrics are not re-read
    without a publish, and a shed is still decided on the whole pool."""
    names = [f"b{i}" for i in range(40)]
    pool = Pool(redis_client, names, seed=3)
    for name in names:
        pool.set_backend(name, {"waiting": 3, "kv_usage": 0.5, "age_ms": 0})
    pool.set_backend("b7", {"waiting": 0, "kv_usage": 0.5, "age_ms": 0})
    critical = {"model": "m", "criticality": "critical"}
    for _ in range(20):
        decision = pool.pick_and_release(critical)
        assert decision.backend.name == "b7"
        assert len(decision.details["rounds"][0][0]["in"]) <= SHORTLIST
    reads = pool.policy.snapshot.metrics_reads
    # Requests sent since the scrape count at once (no publish, no re-read).
    redis_client.hset(pool.keys.inflight, "b7", 10)
    assert {pool.pick_and_release(critical).backend.name for _ in range(30)} <= set(names) - {"b7"}
    redis_client.hset(pool.keys.inflight, "b7", 0)
    assert pool.pick_and_release(critical).backend.name == "b7"
    redis_client.sadd(pool.keys.drained, "b7")
    assert pool.pick_and_release(critical).backend.name != "b7"
    assert pool.policy.snapshot.metrics_reads == reads

    # Every shortlisted backend is past queueThresholdCritical, the rest are not: a
    # sheddable request is not shed, it goes to the rest of the pool.
    redis_client.srem(pool.keys.drained, "b7")
    listed = {b.name for b in pool.policy._lists["m"]}
    assert len(listed) == SHORTLIST
    for name in listed:
        redis_client.hset(pool.keys.inflight, name, 20)
    decision = pool.pick_and_release({"model": "m", "criticality": "sheddable"})
    assert decision.backend.name not in listed


def test_large_pool_shortlist_ranks_by_expected_wait(redis_client) -> None:
    """The shortlist is ranked by least_wait's expected wait, not by queue length: four
    fast servers with a request waiting for the next engine step (queue 1, free slots)
    make the shortlist ahead of 36 idle slow ones (queue 0), and the picks go to them."""
    fast = [f"f{i}" for i in range(4)]
    slow = [f"s{i}" for i in range(36)]
    pool = Pool(redis_client, slow + fast, seed=5)
    for name in fast:  # wait = prefill_s 0.015 (5 of 8 slots taken)
        pool.set_backend(
            name,
            {"waiting": 1, "running": 4, "kv_usage": 0.2, "age_ms": 0}
            | {"service_s": 0.2, "prefill_s": 0.015, "slots": 8},
        )
    for name in slow:  # wait = prefill_s 0.06 (idle)
        pool.set_backend(
            name,
            {"waiting": 0, "running": 0, "kv_usage": 0.0, "age_ms": 0}
            | {"service_s": 1.2, "prefill_s": 0.06, "slots": 4},
        )
    for criticality in ("critical", "sheddable"):
        picks = [
            pool.pick_and_release({"model": "m", "criticality": criticality}) for _ in range(30)
        ]
        assert {d.backend.name for d in picks} <= set(fast)
        assert all(len(d.details["rounds"][0][0]["in"]) <= SHORTLIST for d in picks)
    assert set(fast) <= {b.name for b in pool.policy._lists["m"]}


def test_large_pool_reranks_off_the_request_path(redis_client) -> None:
    """After a publish the whole pool is re-read and re-ranked in the background: the
    decision that finds it due uses the previous shortlist, the next ones the new one."""
    names = [f"b{i}" for i in range(40)]
    pool = Pool(redis_client, names, stale_after_ms=800, seed=9)
    for i, name in enumerate(names):
        pool.set_backend(name, {"waiting": 0 if i < 16 else 4, "kv_usage": 0.1, "age_ms": 0})
    first = {s for s in names[:16]}
    critical = {"model": "m", "criticality": "critical"}
    assert pool.pick_and_release(critical).backend.name in first
    assert {b.name for b in pool.policy._lists["m"]} == first
    for i, name in enumerate(names):  # the collector now shows the other 24 idle
        pool.set_backend(name, {"waiting": 4 if i < 16 else 0, "kv_usage": 0.1, "age_ms": 0})
    time.sleep(0.25)  # past the refresh interval (stale_after_ms / 4)
    due = pool.pick_and_release(critical)
    assert set(due.details["rounds"][0][0]["in"]) <= first  # decided on the old shortlist
    rerank = pool.policy._reranking
    if rerank is not None:
        rerank.join(5)
    after = [pool.pick_and_release(critical).backend.name for _ in range(20)]
    assert set(after) <= set(names[16:])
