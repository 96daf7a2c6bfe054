"""least_busy (aliases endpoint_metrics, metrics_based): the inference-extension v0.3 tree.

One request, in order:

1. Snapshot the pool in one round trip (in-flight counts, drained set, every
   backend's metrics hash and its age on the Redis clock).
2. Pre-filters: ``healthy`` (not down, not drained), ``serves_model``,
   ``below_cap`` (lb_config.maxRequestCount), ``fresh_metrics`` (stale or
   silent backends are dropped only when fresher ones exist).
3. Resolve the criticality (``llmlbd.policy.criticality``) and run the tree::

     critical_request
     ├ success → low_queue (queue < queueingThresholdLoRA)
     │           ├ success → lora_affinity ─(either)→ least_queue ─→ least_kv
     │           └ failure → least_queue ─→ lora_affinity ─(either)→ least_kv
     └ failure → sheddable_capacity (queue <= queueThresholdCritical, kv <= kvCacheThreshold)
                 ├ success → least_queue ─→ lora_affinity ─(either)→ least_kv
                 └ failure → shed: 429 with Retry-After

   where ``queue`` counts the requests dispatched since the last scrape
   (``filters/_load.py``).
4. Pick uniformly at random among the survivors and reserve the pick with
   the lease script, which re-checks drained/down/model/cap atomically with
   the in-flight increment. A refused pick is dropped and another survivor
   tried; when no survivor is left the tree runs again without the refused
   backends (at most one attempt per backend).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import structlog

from llmlbd.errors import LLMLBError, ModelNotFound, NoBackend, OverCapacity, Shed
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.criticality import Criticality, resolve_criticality
from llmlbd.policy.decision_tree import Node, TreeOutcome, TreeRequest, run_tree
from llmlbd.policy.filters._load import adapters
from llmlbd.policy.filters.below_cap import BelowCap
from llmlbd.policy.filters.critical_request import CriticalRequest
from llmlbd.policy.filters.fresh_metrics import FreshMetrics
from llmlbd.policy.filters.healthy import Healthy
from llmlbd.policy.filters.least_kv import LeastKV
from llmlbd.policy.filters.least_queue import LeastQueue
from llmlbd.policy.filters.lora_affinity import LoraAffinity
from llmlbd.policy.filters.low_queue import LowQueue
from llmlbd.policy.filters.serves_model import ServesModel
from llmlbd.policy.filters.sheddable_capacity import SheddableCapacity
from llmlbd.policy.framework import BackendState, Decision, Filter, FilterResult
from llmlbd.policy.outcomes import no_route
from llmlbd.request import RoutingRequest
from llmlbd.state.snapshot import read_pool

__all__ = ["LeastBusy", "build_tree"]

log = structlog.get_logger("llmlbd.policy.least_busy")


def build_tree(lb_config: Any, rng: Any = None) -> Node:
    """The v0.3 decision tree with the thresholds of *lb_config*."""
    lora = LoraAffinity(lb_config.loraAffinityThreshold, rng)

    def queue_lora_kv() -> Node:
        # least_queue never fails on a non-empty input; lora may fail (passes its input on).
        return Node(LeastQueue(), on_either=Node(lora, on_either=Node(LeastKV())))

    low_latency = Node(
        LowQueue(lb_config.queueingThresholdLoRA),
        on_success=Node(lora, on_either=Node(LeastQueue(), on_either=Node(LeastKV()))),
        on_failure=queue_lora_kv())
    sheddable = Node(
        SheddableCapacity(lb_config.queueThresholdCritical, lb_config.kvCacheThreshold),
        on_success=queue_lora_kv(), shed_on_failure=True)
    return Node(CriticalRequest(), on_success=low_latency, on_failure=sheddable)


class LeastBusy:
    name = "least_busy"

    def __init__(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        cfg = ctx.lb_config
        self.cap = cfg.maxRequestCount
        self.critical_models = frozenset(cfg.criticalModels)
        self.default_criticality = cfg.defaultCriticality
        self.prefilters: list[Filter] = [Healthy(), ServesModel(), BelowCap(self.cap),
                                         FreshMetrics(ctx.stale_after_ms)]
        self.tree = build_tree(cfg, ctx.rng)
        _warn_ignored(cfg)

    def pick(self, request: RoutingRequest, exclude: frozenset[str]) -> Decision:
        ctx = self.ctx
        assert ctx.leases is not None and ctx.client is not None
        backends = ctx.candidates(exclude)
        if not backends:
            raise no_route("none" if exclude else "empty", request)
        states = read_pool(ctx.client, ctx.keys, backends)
        criticality = resolve_criticality(request, self.critical_models,
                                          self.default_criticality)
        routed = TreeRequest(**{f.name: getattr(request, f.name) for f in fields(RoutingRequest)})
        routed.criticality = criticality.level
        details: dict[str, Any] = {"criticality": criticality.level,
                                   "criticality_source": criticality.source,
                                   "rounds": []}
        refused: dict[str, str] = {}
        # Each round either reserves, raises, or refuses at least one more backend.
        for _ in range(len(states)):
            remaining = [s for s in states if s.name not in refused]
            survivors, outcome, trace = self._decide(routed, remaining)
            details["rounds"].append(trace)
            while survivors:
                choice = ctx.rng.choice(survivors)
                reservation = ctx.leases.acquire(request.request_id, choice.name,
                                                 model=request.model, cap=self.cap)
                if reservation.backend is not None:
                    details["refused"] = refused
                    details["survivors"] = [s.name for s in survivors]
                    return Decision(choice.backend, request.request_id, self.name,
                                    reason=_reason(criticality, outcome),
                                    inflight=reservation.inflight, details=details)
                if reservation.reason == "duplicate":
                    raise no_route("duplicate", request)
                refused[choice.name] = reservation.reason
                survivors = [s for s in survivors if s.name != choice.name]
            if not [s for s in states if s.name not in refused]:
                break
        raise _refused_error(refused, request)

    def _decide(self, request: TreeRequest, states: list[BackendState]
                ) -> tuple[list[BackendState], TreeOutcome, list[dict[str, Any]]]:
        """Pre-filters then the tree; raise the error the client gets when nothing fits."""
        trace: list[dict[str, Any]] = []
        current = states
        for prefilter in self.prefilters:
            result: FilterResult = prefilter.filter(request, current)
            trace.append({"filter": prefilter.name, "in": [s.name for s in current],
                          "kept": [s.name for s in result.kept], "removed": result.removed,
                          "outcome": "success" if result.kept else "failure"})
            if not result.kept:
                raise _prefilter_error(prefilter.name, result, request)
            current = result.kept
        # Every adapter the snapshot knows of, even on backends filtered out: it tells
        # whether the request's model is an adapter at all.
        request.pool_adapters = frozenset().union(*(adapters(s) for s in states))
        outcome = run_tree(self.tree, request, current)
        trace.extend(outcome.trace)
        if outcome.shed:
            raise Shed(f"llmlbd shed this {request.criticality} request: every backend is "
                       "queuing or short of KV cache (lb_config.queueThresholdCritical, "
                       "kvCacheThreshold); retry later, or mark it critical",
                       trace=trace)
        if not outcome.survivors:
            raise NoBackend("no backend is available for this request", trace=trace)
        return outcome.survivors, outcome, trace


def _reason(criticality: Criticality, outcome: TreeOutcome) -> str:
    # Which branch decided: low_latency, queued (every backend over queueingThresholdLoRA),
    # or capacity (a non-critical request with room).
    branch = "capacity"
    for step in outcome.trace:
        if step["filter"] == "low_queue":
            branch = "low_latency" if step["outcome"] == "success" else "queued"
    return f"{criticality.level}_{branch}"


def _prefilter_error(name: str, result: FilterResult, request: RoutingRequest) -> LLMLBError:
    if name == "serves_model":
        return ModelNotFound(f"the model '{request.model}' does not exist on any backend")
    if name == "below_cap":
        return no_route("cap", request)
    return no_route("none", request)


def _refused_error(refused: dict[str, str], request: RoutingRequest) -> LLMLBError:
    reasons = set(refused.values())
    if reasons == {"model"}:
        return ModelNotFound(f"the model '{request.model}' does not exist on any backend")
    if "cap" in reasons:
        return OverCapacity("every backend is at its maximum number of requests in flight "
                            "(lb_config.maxRequestCount); retry later")
    return no_route("none", request)


def _warn_ignored(cfg: Any) -> None:
    if cfg.metric_policy != "default" or cfg.target_metric:
        log.warning("lb_config_ignored", keys="metric_policy, target_metric",
                    detail="least_busy always runs the decision tree on waiting and kv_usage")
    if cfg.rate_limit < 1.0:
        log.warning("lb_config_ignored", keys="rate_limit",
                    detail="the in-flight correction of the queue replaces Higress's rate_limit")
