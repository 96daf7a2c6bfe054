"""The least_busy units alone: filter tables, the filter contract, the combinator, criticality."""

from __future__ import annotations

import inspect
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from llmlbd.config.loader import Backend, ConfigError, config_from_dict
from llmlbd.policy import filters as filters_pkg
from llmlbd.policy.criticality import resolve_criticality
from llmlbd.policy.decision_tree import Node, TreeRequest, run_tree
from llmlbd.policy.filters import FILTERS
from llmlbd.policy.filters._load import queue
from llmlbd.policy.filters.fresh_metrics import LOAD_FIELDS
from llmlbd.policy.framework import BackendState, Filter, FilterResult
from llmlbd.policy.profiles.least_busy import build_tree
from llmlbd.request import RoutingRequest

DATA = Path(__file__).parent / "data" / "least_busy_filters.yaml"
TABLES = yaml.safe_load(DATA.read_text())
FILTER_CASES = [
    pytest.param(
        table["filter"], table.get("params") or {}, case, id=f"{table['filter']}-{case['id']}"
    )
    for table in TABLES
    for case in table["cases"]
]


def make_states(spec: dict[str, dict]) -> list[BackendState]:
    states = []
    for index, (name, fields) in enumerate(spec.items()):
        fields = dict(fields or {})
        inflight = int(fields.pop("inflight", 0))
        drained = bool(fields.pop("drained", False))
        age = fields.pop("age_ms", None)
        states.append(
            BackendState(
                Backend(name, f"http://127.0.0.1:{9000 + index}"),
                inflight=inflight,
                drained=drained,
                metrics={k: str(v) for k, v in fields.items()},
                metrics_age_ms=age,
            )
        )
    return states


def make_request(
    spec: dict[str, Any] | None, pool_adapters: list[str] | None = None
) -> RoutingRequest:
    fields = dict(spec or {})
    if pool_adapters is None:
        return RoutingRequest("r1", "POST", "/v1/chat/completions", **fields)
    return TreeRequest(
        "r1", "POST", "/v1/chat/completions", **fields, pool_adapters=frozenset(pool_adapters)
    )


@pytest.mark.parametrize("kind, params, case", FILTER_CASES)
def test_filter_table(kind: str, params: dict, case: dict) -> None:
    """Each filter keeps exactly the table's backends and gives a reason for every other."""
    unit = FILTERS[kind].from_params({**params, **case.get("params", {})}, rng=random.Random(1))
    states = make_states(case["candidates"])
    result = unit.filter(make_request(case.get("request"), case.get("pool_adapters")), states)
    kept = [state.name for state in result.kept]
    assert kept == case["keep"], result.removed
    if case.get("blind"):
        assert all(not LOAD_FIELDS & set(state.metrics) for state in result.kept)
    elif kind != "fresh_metrics":
        assert all(a is b for a, b in zip(result.kept, [s for s in states if s.name in kept]))
    if kind != "critical_request":
        dropped = {state.name for state in states} - set(kept)
        assert set(result.removed) == dropped


@pytest.mark.parametrize("kind", sorted(FILTERS))
def test_filter_contract(kind: str) -> None:
    """Every filter satisfies the Filter protocol, has a formula docstring and never grows."""
    cls = FILTERS[kind]
    module = inspect.getmodule(cls)
    assert module is not None and kind == module.TYPE
    assert module.__doc__ and len(module.__doc__.strip().splitlines()) >= 3
    assert module.__name__ == f"{filters_pkg.__name__}.{kind}"
    unit = cls.from_params({}, rng=random.Random(0))
    assert isinstance(unit, Filter)
    assert unit.name == kind
    assert cls.from_params({"name": "custom"}).name == "custom"
    states = make_states(
        {
            "a": {"waiting": 1, "kv_usage": 0.2, "age_ms": 0, "max_lora": 1},
            "b": {"waiting": 3, "kv_usage": 0.4, "age_ms": 0},
        }
    )
    result = unit.filter(make_request({"model": "m", "criticality": "critical"}), states)
    assert isinstance(result, FilterResult)
    assert {s.name for s in result.kept} <= {"a", "b"}
    assert unit.filter(make_request({}), []).kept == []


def test_lora_soft_affinity_probability() -> None:
    """With both groups present, the affinity group is chosen with probability `threshold`."""
    unit = FILTERS["lora_affinity"](threshold=0.75, rng=random.Random(5))
    states = make_states({"a": {"lora_running": "x", "max_lora": 2}, "b": {"max_lora": 2}})
    request = make_request({"model": "x"})
    picks = [unit.filter(request, states).kept[0].name for _ in range(4000)]
    assert 0.72 <= picks.count("a") / 4000 <= 0.78


class Keep:
    """A toy filter that keeps the named backends."""

    def __init__(self, name: str, keep: set[str]) -> None:
        self.name, self.keep = name, keep

    def filter(self, request, candidates):
        return FilterResult(
            [s for s in candidates if s.name in self.keep],
            {s.name: "toy" for s in candidates if s.name not in self.keep},
        )


class TestCombinator:
    states = make_states({"a": {}, "b": {}, "c": {}})
    request = make_request({})

    def names(self, outcome) -> list[str]:
        return [s.name for s in outcome.survivors]

    def test_success_passes_the_kept_set(self) -> None:
        """On success the next node gets the filtered set."""
        tree = Node(Keep("f1", {"a", "b"}), on_success=Node(Keep("f2", {"b", "c"})))
        assert self.names(run_tree(tree, self.request, self.states)) == ["b"]

    def test_failure_passes_the_original_input(self) -> None:
        """On failure the next node gets the failed node's input, not the empty result."""
        tree = Node(
            Keep("f1", {"a"}),
            on_success=Node(Keep("f2", set()), on_failure=Node(Keep("f3", {"a", "b"}))),
        )
        outcome = run_tree(tree, self.request, self.states)
        assert self.names(outcome) == ["a"]
        assert [step["outcome"] for step in outcome.trace] == ["success", "failure", "success"]
        assert outcome.trace[2]["in"] == ["a"]

    def test_on_either_after_failure(self) -> None:
        """on_either is followed after a failure too, with the original input."""
        tree = Node(Keep("f1", set()), on_either=Node(Keep("f2", {"c"})))
        assert self.names(run_tree(tree, self.request, self.states)) == ["c"]

    def test_on_success_beats_on_either(self) -> None:
        """A node with both on_success and on_either follows on_success when it succeeds."""
        tree = Node(
            Keep("f1", {"a"}), on_success=Node(Keep("s", {"a"})), on_either=Node(Keep("e", set()))
        )
        assert self.names(run_tree(tree, self.request, self.states)) == ["a"]

    def test_leaf_failure_is_empty_and_may_shed(self) -> None:
        """A failing leaf returns nothing; it sheds only when the node says so."""
        plain = run_tree(Node(Keep("f1", set())), self.request, self.states)
        assert plain.survivors == [] and not plain.shed
        shed = run_tree(Node(Keep("f1", set()), shed_on_failure=True), self.request, self.states)
        assert shed.survivors == [] and shed.shed and shed.last == "f1"


CRITICALITY_TABLE = [
    # header, priority, model, criticalModels, default -> level, source
    ("critical", None, "m", [], "sheddable", "critical", "header"),
    ("sheddable", -3, "m", ["m"], "critical", "sheddable", "header"),
    ("standard", None, "m", ["m"], "auto", "standard", "header"),
    ("", -1, "m", [], "sheddable", "critical", "priority"),
    ("", 2, "m", ["m"], "critical", "sheddable", "priority"),
    ("", 0, "m", ["m"], "sheddable", "critical", "criticalModels"),
    ("", None, "m", ["m"], "sheddable", "critical", "criticalModels"),
    ("", None, "n", ["m"], "auto", "standard", "default"),
    ("", None, "n", [], "auto", "critical", "default"),
    ("", None, "", [], "standard", "standard", "default"),
    ("", None, "n", ["m"], "sheddable", "sheddable", "default"),
]


@pytest.mark.parametrize(
    "header, priority, model, critical, default, level, source", CRITICALITY_TABLE
)
def test_criticality_precedence(header, priority, model, critical, default, level, source) -> None:
    """Header, then priority (vLLM: lower is sooner), then criticalModels, then the default."""
    request = RoutingRequest(
        "r", "POST", "/v1/completions", model=model, criticality=header, priority=priority
    )
    resolved = resolve_criticality(request, frozenset(critical), default)
    assert (resolved.level, resolved.source) == (level, source)


class TestConfig:
    def test_defaults_are_the_inference_extension_v03_ones(self) -> None:
        """Defaults: 128, 5, 0.8, 0.999; auto criticality; Higress keys inert."""
        lb = config_from_dict({"lb_policy": "least_busy"}).lb_config
        assert (
            lb.queueingThresholdLoRA,
            lb.queueThresholdCritical,
            lb.kvCacheThreshold,
            lb.loraAffinityThreshold,
        ) == (128, 5, 0.8, 0.999)
        assert (lb.criticalModels, lb.defaultCriticality) == ([], "auto")
        assert (lb.metric_policy, lb.target_metric, lb.rate_limit) == ("default", "", 1.0)

    @pytest.mark.parametrize(
        "alias, key, value",
        [
            ("KV_CACHE_THRESHOLD", "kvCacheThreshold", 0.5),
            ("QUEUE_THRESHOLD_CRITICAL", "queueThresholdCritical", 9),
            ("QUEUING_THRESHOLD_LORA", "queueingThresholdLoRA", 64),
            ("LORA_AFFINITY_THRESHOLD", "loraAffinityThreshold", 0.9),
        ],
    )
    def test_inference_extension_names_are_aliases(self, alias, key, value) -> None:
        """The endpoint picker's environment-variable names work as lb_config keys."""
        lb = config_from_dict({"lb_policy": "metrics_based", "lb_config": {alias: value}}).lb_config
        assert getattr(lb, key) == value

    def test_environment_variables_are_not_read(self, monkeypatch) -> None:
        """Real environment variables do not change the config (the file is the one source)."""
        monkeypatch.setenv("KV_CACHE_THRESHOLD", "0.1")
        assert config_from_dict({"lb_policy": "least_busy"}).lb_config.kvCacheThreshold == 0.8

    @pytest.mark.parametrize(
        "lb_config, message",
        [
            ({"kvCacheThreshold": 1.5}, "from 0 to 1"),
            ({"queueThresholdCritical": -1}, ">= 0"),
            ({"defaultCriticality": "urgent"}, "expected one of"),
            ({"metric_policy": "avg"}, "expected one of"),
            ({"kvCacheThreshold": 0.5, "KV_CACHE_THRESHOLD": 0.6}, "set twice"),
        ],
    )
    def test_bad_values_name_the_key(self, lb_config, message) -> None:
        """Invalid values and duplicate spellings are config errors naming the key."""
        with pytest.raises(ConfigError, match=message):
            config_from_dict({"lb_policy": "least_busy", "lb_config": lb_config})

    def test_keys_belong_to_least_busy(self) -> None:
        """Setting a least_busy key under another policy is an error."""
        with pytest.raises(ConfigError, match="applies to lb_policy least_busy"):
            config_from_dict(
                {"lb_policy": "global_least_request", "lb_config": {"criticalModels": ["m"]}}
            )

    def test_higress_endpoint_metrics_config_loads(self) -> None:
        """A Higress endpoint_metrics plugin config loads unchanged."""
        config = config_from_dict(
            {
                "lb_policy": "endpoint_metrics",
                "lb_config": {
                    "metric_policy": "least",
                    "target_metric": "vllm:num_requests_waiting",
                    "rate_limit": 0.6,
                },
            }
        )
        assert config.lb_policy == "least_busy"
        assert config.lb_config.rate_limit == 0.6


# --- properties of the whole tree, on random pools -----------------------------------------

_backend = st.fixed_dictionaries(
    {
        "waiting": st.integers(0, 300),
        "running": st.integers(0, 300),
        "kv_usage": st.sampled_from([0.0, 0.1, 0.5, 0.79, 0.8, 0.81, 1.0]),
        "inflight": st.integers(0, 400),
        "lora_running": st.sampled_from(["", "x", "y", "x,y"]),
        "max_lora": st.integers(0, 2),
    }
)


@settings(max_examples=300, deadline=None)
@given(
    pool=st.lists(_backend, min_size=1, max_size=6),
    level=st.sampled_from(["critical", "standard", "sheddable"]),
    model=st.sampled_from(["x", "base"]),
)
def test_tree_properties(pool, level, model) -> None:
    """Survivors come from the input; critical is never shed; a shed means no capacity."""
    lb = config_from_dict({"lb_policy": "least_busy"}).lb_config
    tree = build_tree(lb, random.Random(3))
    states = make_states({f"b{i}": spec for i, spec in enumerate(pool)})
    request = TreeRequest(
        "r",
        "POST",
        "/v1/completions",
        model=model,
        criticality=level,
        pool_adapters=frozenset().union(*(set(s.names("lora_running")) for s in states)),
    )
    outcome = run_tree(tree, request, states)
    names = {s.name for s in states}
    assert {s.name for s in outcome.survivors} <= names
    assert bool(outcome.survivors) != outcome.shed
    if level == "critical":
        assert outcome.survivors and not outcome.shed
    if outcome.shed:
        assert all(
            queue(s) > lb.queueThresholdCritical or float(s.metrics["kv_usage"]) > 0.8
            for s in states
        )
