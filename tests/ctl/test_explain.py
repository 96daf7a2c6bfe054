"""`llmlbctl explain` and llmlbd.policy.explain: where a request would go, reserving nothing."""

from __future__ import annotations

import json

import pytest

from llmlbd import exits
from llmlbd.config.loader import Backend
from llmlbd.policy.explain import generic_explain
from llmlbd.policy.framework import BackendState
from llmlbd.request import RoutingRequest
from tests.ctl.conftest import seed_metrics, write_config

BODY = json.dumps({"model": "m1", "messages": [{"role": "user", "content": "hello there"}]})


def state(name, inflight=0, weight=1.0, drained=False, health=None, models=None, age=100):
    metrics = {}
    if health:
        metrics["health"] = health
    if models:
        metrics["models"] = models
    return BackendState(
        Backend(name, f"http://{name}:8000", weight),
        inflight=inflight,
        drained=drained,
        metrics=metrics,
        metrics_age_ms=age,
    )


class TestGenericExplain:
    def request(self, model="m"):
        return RoutingRequest(
            "r", "POST", "/v1/chat/completions", body={"prompt": "abc"}, model=model
        )

    def test_least_inflight_per_weight_with_ties(self):
        """Load is in-flight / weight; every backend at the minimum is listed as a tie."""
        result = generic_explain(
            "global_least_request",
            self.request(),
            [state("a", 2), state("b", 4, weight=2.0), state("c", 3)],
        )
        assert result["ties"] == ["a", "b"] and result["choice"] == "a"
        assert result["exact"] and result["reason"] == "least_inflight"
        assert [c["score"] for c in result["candidates"]] == [2.0, 2.0, 3.0]
        assert result["request"]["prompt_chars"] == 3

    @pytest.mark.parametrize(
        "states, status, code",
        [
            ([], 503, "no_backend"),
            ([state("a", drained=True), state("b", health="down")], 503, "no_backend"),
            ([state("a", models="x"), state("b", drained=True)], 404, "model_not_found"),
            ([state("a", inflight=1), state("b", models="x")], 429, "max_request_count"),
        ],
    )
    def test_no_backend_gives_the_clients_error(self, states, status, code):
        """When every backend is filtered out, the outcome is the error a client would get."""
        result = generic_explain("global_least_request", self.request(), states, cap=1)
        assert result["choice"] is None
        assert (result["outcome"]["status"], result["outcome"]["code"]) == (status, code)

    def test_round_robin_follows_the_shared_counter(self):
        """round_robin: the next turn of the shared counter, skipping ineligible backends."""
        backends = [state("a"), state("b", drained=True), state("c")]
        result = generic_explain("round_robin", self.request(), backends, rr_counter=0)
        assert result["choice"] == "c"  # turn 1 -> b, drained -> c
        assert (
            generic_explain("round_robin", self.request(), backends, rr_counter=2)["choice"] == "a"
        )

    def test_other_policies_are_labelled_approximate(self):
        result = generic_explain("least_busy", self.request(), [state("a")])
        assert not result["exact"] and "approximation" in result["note"]


class TestExplainCommand:
    def test_chooses_and_explains_filters(self, ctl, redis_client, keys, tmp_path):
        """A drained, a down and a wrong-model backend are removed by their filters; the
        least-loaded remaining one is chosen; nothing is reserved."""
        redis_client.sadd(keys.drained, "a")
        seed_metrics(redis_client, keys, "b", health="down")
        seed_metrics(redis_client, keys, "c", models="m1")
        body = tmp_path / "body.json"
        body.write_text(BODY)
        result = ctl("explain", "--body", str(body), "--json")
        assert result.exit_code == exits.OK, result.output
        data = json.loads(result.stdout)
        assert data["choice"] == "c" and data["explained_by"] == "generic" and data["exact"]
        removed = {f["name"]: f["removed"] for f in data["filters"]}
        assert removed == {"drained": ["a"], "down": ["b"], "ejected": [], "model": [], "cap": []}
        assert data["request"]["model"] == "m1"
        assert data["outcome"] == {"status": 200}
        # Explain reserves nothing.
        assert redis_client.hlen(keys.leases) == 0
        assert redis_client.hgetall(keys.inflight) == {}

        text = ctl("explain", "--body", "-", input=BODY)
        assert text.exit_code == exits.OK
        assert "-> c" in text.stdout
        assert "drained: a" in text.stdout and "down: b" in text.stdout

    def test_model_nobody_serves_exits_3(self, ctl, redis_client, keys):
        for name in ("a", "b", "c"):
            seed_metrics(redis_client, keys, name, models="other")
        result = ctl("explain", "--body", "-", input=BODY)
        assert result.exit_code == exits.NOT_FOUND
        assert "404" in result.stdout

    def test_every_backend_drained_exits_4(self, ctl, redis_client, keys):
        redis_client.sadd(keys.drained, "a", "b", "c")
        result = ctl("explain", "--body", "-", "--json", input=BODY)
        assert result.exit_code == exits.UNHEALTHY
        assert json.loads(result.stdout)["outcome"]["status"] == 503

    def test_invalid_body_exits_2(self, ctl):
        result = ctl("explain", "--body", "-", input='{"model": ')
        assert result.exit_code == exits.BAD_CONFIG
        assert "400" in result.stderr and "not valid JSON" in result.stderr
        bad_header = ctl("explain", "--body", "-", "-H", "nocolon", input=BODY)
        assert bad_header.exit_code == exits.BAD_CONFIG

    def test_round_robin_policy(self, tmp_path, ctl, redis_url, redis_client, keys):
        """The configured policy is the one explained (here round_robin)."""
        path = write_config(tmp_path / "rr.yaml", redis_url, lb_policy="round_robin")
        redis_client.set(keys.rr_counter, 4)
        data = json.loads(ctl("explain", "--body", "-", "--json", input=BODY, config=path).stdout)
        assert data["policy"] == "round_robin" and data["choice"] == "c"  # turn 5 % 3 = 2

    def test_uses_the_policys_own_explain(self, ctl, monkeypatch):
        """A policy with an explain method explains itself, and the output says so."""
        monkeypatch.setitem(
            __import__("llmlbd.policy.registry").policy.registry.POLICIES,
            "global_least_request",
            f"{__name__}:ExplainingPolicy",
        )
        result = ctl("explain", "--body", "-", "--json", input=BODY)
        assert result.exit_code == exits.OK, result.output
        data = json.loads(result.stdout)
        assert data["explained_by"] == "policy" and data["choice"] == "b"
        assert data["prefix_match"] == 7 and data["backends_seen"] == 3
        text = ctl("explain", "--body", "-", input=BODY)
        assert "explained by the policy itself" in text.stdout
        assert "prefix match: 7 blocks" in text.stdout
        assert "backends_seen: 3" in text.stdout


@pytest.mark.parametrize("policy", ["prefix_cache", "least_busy"])
def test_real_policies_explain_through_the_cli(policy, tmp_path, ctl, redis_url):
    """The in-tree policies work with `explain` (their own method, or the generic one)."""
    path = write_config(tmp_path / f"{policy}.yaml", redis_url, lb_policy=policy)
    result = ctl("explain", "--body", "-", "--json", input=BODY, config=path)
    assert result.exit_code == exits.OK, result.output
    data = json.loads(result.stdout)
    assert data["policy"] == policy and data["choice"] in {"a", "b", "c"}
    text = ctl("explain", "--body", "-", input=BODY, config=path)
    assert text.exit_code == exits.OK and "-> " in text.stdout


class ExplainingPolicy:
    """A stand-in policy that explains itself (as prefix_cache or least_busy may)."""

    name = "global_least_request"

    def __init__(self, ctx):
        self.ctx = ctx

    def pick(self, request, exclude):  # pragma: no cover - never called by explain
        raise AssertionError("explain must not pick")

    def explain(self, request):
        return {
            "choice": "b",
            "reason": "prefix_hit",
            "prefix_match": 7,
            "prefix_match_unit": "blocks",
            "backends_seen": len(self.ctx.backends),
            "outcome": {"status": 200},
        }
