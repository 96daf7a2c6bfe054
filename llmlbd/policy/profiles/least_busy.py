"""least_busy (aliases endpoint_metrics, metrics_based): the inference-extension v0.3 tree.

One request, in order:

1. Snapshot the pool in one round trip (in-flight counts, drained set, every
   backend's metrics hash and its age on the Redis clock). The metrics come
   from this worker's copy (state.snapshot.PoolSnapshot), re-read at most
   every ``stale_after_ms / 4`` and only when the collector published since,
   so a decision does not read 2,048 hashes; in-flight counts and drains are
   exact on every call.
2. Pre-filters: ``healthy`` (not down, not drained), ``serves_model``,
   ``below_cap`` (lb_config.maxRequestCount), ``fresh_metrics`` (stale or
   silent backends are dropped only when fresher ones exist).
3. Resolve the criticality (``llmlbd.policy.criticality``) and run the tree::

     critical_request
     ├ success → low_queue (queue < queueingThresholdLoRA)
     │           ├ success → least_wait ─→ lora_affinity ─(either)→ least_kv
     │           └ failure → least_wait ─→ lora_affinity ─(either)→ least_kv
     └ failure → sheddable_capacity (queue <= queueThresholdCritical, kv <= kvCacheThreshold)
                 ├ success → least_wait ─→ lora_affinity ─(either)→ least_kv
                 └ failure → shed: 429 with Retry-After, unless an eligible backend
                             was never scraped: the tree runs again on those alone

   where ``queue`` is the scraped queue moved by the requests llmlbd sent and
   saw finish since the scrape, and ``least_wait`` keeps the backends where the
   first token is expected soonest, from each engine's learned speed and running
   slots (``filters/_load.py``, ``filters/least_wait.py``; ``least_queue`` when no
   speed is known). GIE ran ``lora_affinity`` before the queue step on the
   low-latency branch; here the adapter's cost is part of the expected wait.
4. Pick uniformly at random among the survivors and reserve the pick with
   the lease script, which re-checks drained/down/model/cap atomically with
   the in-flight increment. A refused pick is dropped and another survivor
   tried; when no survivor is left the tree runs again without the refused
   backends (at most one attempt per backend).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from typing import Any

import structlog

from llmlbd.errors import LLMLBError, Shed
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.criticality import Criticality, resolve_criticality
from llmlbd.policy.decision_tree import Node, TreeRequest, run_tree
from llmlbd.policy.filters._load import adapters, kv, queue
from llmlbd.policy.filters.below_cap import BelowCap
from llmlbd.policy.filters.critical_request import CriticalRequest
from llmlbd.policy.filters.fresh_metrics import FreshMetrics
from llmlbd.policy.filters.healthy import Healthy
from llmlbd.policy.filters.least_kv import LeastKV
from llmlbd.policy.filters.least_wait import LeastWait, expected_waits, waits_of
from llmlbd.policy.filters.lora_affinity import LoraAffinity
from llmlbd.policy.filters.low_queue import LowQueue
from llmlbd.policy.filters.serves_model import ServesModel
from llmlbd.policy.filters.sheddable_capacity import SheddableCapacity
from llmlbd.policy.framework import BackendState, Decision, Filter, FilterResult
from llmlbd.policy.outcomes import combined_reason, error_outcome, no_route, no_route_outcome
from llmlbd.request import RoutingRequest
from llmlbd.state import backend_fields as F
from llmlbd.state.snapshot import PoolSnapshot, read_pool
from llmlbd.state.types import Backend

__all__ = ["LeastBusy", "build_tree", "SHORTLIST"]

# How many backends a decision looks at in a pool larger than this: enough that the
# tree's buckets and LoRA affinity have choices, few enough that a decision costs the
# same at 2,048 backends as at 16 (docs/policies/least_busy.md, "Large pools").
SHORTLIST = 16
# Metrics hashes per round trip of a background re-read: the worker's other greenlets
# run between two (each reply's parsing holds the worker's loop).
RERANK_CHUNK = 256

log = structlog.get_logger("llmlbd.policy.least_busy")


def build_tree(lb_config: Any, rng: Any = None) -> Node:
    """The v0.3 decision tree with the thresholds of *lb_config*."""
    lora = LoraAffinity(lb_config.loraAffinityThreshold, rng)

    def wait_lora_kv() -> Node:
        # least_wait never fails on a non-empty input; lora may fail (passes its input on).
        return Node(LeastWait(), on_either=Node(lora, on_either=Node(LeastKV())))

    low_latency = Node(
        LowQueue(lb_config.queueingThresholdLoRA),
        on_success=wait_lora_kv(),
        on_failure=wait_lora_kv(),
    )
    sheddable = Node(
        SheddableCapacity(lb_config.queueThresholdCritical, lb_config.kvCacheThreshold),
        on_success=wait_lora_kv(),
        shed_on_failure=True,
    )
    return Node(CriticalRequest(), on_success=low_latency, on_failure=sheddable)


class LeastBusy:
    name = "least_busy"

    def __init__(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        cfg = ctx.lb_config
        self.cap = cfg.maxRequestCount
        self.critical_models = frozenset(cfg.criticalModels)
        self.default_criticality = cfg.defaultCriticality
        self.fresh = FreshMetrics(ctx.stale_after_ms)
        self.prefilters: list[Filter] = [Healthy(), ServesModel(), BelowCap(self.cap), self.fresh]
        self.tree = build_tree(cfg, ctx.rng)
        # Per model: the SHORTLIST backends least loaded at the last metrics re-read (plus,
        # for an adapter, those holding it), so a decision in a large pool reads and ranks
        # only those, with their exact in-flight counts (see _shortlist).
        self._lists: dict[str, list[Backend]] = {}
        self._ranked: list[BackendState] = []
        self._members: list[Backend] | None = None
        self._pool_adapters: frozenset[str] = frozenset()
        self._reranking: threading.Thread | None = None
        self._rerank_lock = threading.Lock()
        # The metrics are scrape-old anyway: a copy a quarter of the staleness bound old at
        # most keeps the fresh_metrics rule meaningful and costs Redis little per decision.
        self.snapshot = PoolSnapshot(
            ctx.client,
            ctx.keys,
            refresh_ms=ctx.stale_after_ms // 4,
            stale_after_ms=ctx.stale_after_ms,
        )
        _warn_ignored(cfg)

    def pick(self, request: RoutingRequest, exclude: frozenset[str]) -> Decision:
        ctx = self.ctx
        assert ctx.leases is not None and ctx.client is not None
        routed, criticality = self.routed(request)
        if len(ctx.backends) > SHORTLIST:
            states = self._shortlist(routed, exclude)
            if states:
                try:
                    return self._decide(request, routed, criticality, states)
                except LLMLBError:
                    pass  # a shed or no route is decided on the whole pool, below
        backends = ctx.candidates(exclude)
        if not backends:
            raise no_route("none" if exclude else "empty", request)
        states = self.snapshot.read(backends)
        if len(ctx.backends) > SHORTLIST and not exclude:
            self._rank(states)
        routed.pool_adapters = None
        return self._decide(request, routed, criticality, states)

    def _shortlist(self, routed: TreeRequest, exclude: frozenset[str]) -> list[BackendState]:
        """The few backends a decision in a large pool looks at, with exact live counts.

        Refreshed with the metrics copy (at most every ``stale_after_ms / 4``, and
        only after a collector publish), in the background (``_rerank_in_background``):
        the backends that passed ``healthy`` and ``serves_model`` then, ranked by
        (stale metrics, expected wait, kv, in flight; see ``_rank``), the first
        SHORTLIST of them, plus for an adapter the first SHORTLIST of those holding
        it. Their in-flight counts and drains are read exactly on each call
        (O(SHORTLIST), whatever the pool size), so the tree's queue and in-flight
        rules see every request sent since the refresh.
        """
        ctx = self.ctx
        if self._members is not ctx.backends:
            self._rank(self.snapshot.read(ctx.backends))
        model = routed.model or ""
        listed = self._lists.get(model)
        if listed is None:
            listed = self._lists[model] = self._list_for(routed)
        states, due = self.snapshot.read_some([b for b in listed if b.name not in exclude])
        if due:
            self._rerank_in_background()
        routed.pool_adapters = self._pool_adapters
        return states

    def _rerank_in_background(self) -> None:
        """Re-read the whole pool's metrics and re-rank it off the request path (one at a
        time per worker: a thread, i.e. a greenlet in a gevent worker); the decisions in
        the meantime use the previous shortlists."""
        with self._rerank_lock:
            if self._reranking is not None:
                return
            # Looked up at call time: in a gevent worker this is the patched Thread.
            rerank = threading.Thread(target=self._rerank, name="least_busy-rank", daemon=True)
            self._reranking = rerank
        rerank.start()

    def _rerank(self) -> None:
        try:
            backends = self.ctx.backends
            self._rank(self.snapshot.read(backends, chunk=RERANK_CHUNK), backends)
        except Exception as exc:  # no caller to raise to: the next decision due retries
            log.warning("least_busy_rank_failed", error=repr(exc))
        finally:
            self._reranking = None

    def _rank(self, states: list[BackendState], backends: list[Backend] | None = None) -> None:
        """Rank a whole-pool snapshot for the shortlists (which are rebuilt on demand).

        The order is least_wait's: backends with fresh metrics first, by expected wait
        for a base-model request (``expected_waits``, the figures the tree's wait step
        uses; by queue when no speed is known), then KV use, then in flight per weight;
        stale or unscraped backends last, by queue."""
        fresh = {s.name for s in states if self.fresh.why_stale(s) is None}
        waits = expected_waits([s for s in states if s.name in fresh]) or {}

        def key(s: BackendState) -> tuple[bool, float, float, float]:
            load = waits[s.name] if s.name in waits else float(queue(s))
            return (s.name not in fresh, load, kv(s) or 0.0, s.inflight / (s.backend.weight or 1))

        ranked = sorted(states, key=key)
        pool_adapters = frozenset().union(*(adapters(s) for s in states))
        # Swapped whole: a decision running beside a background re-rank sees one ranking.
        self._ranked, self._pool_adapters, self._lists = ranked, pool_adapters, {}
        self._members = self.ctx.backends if backends is None else backends

    def _list_for(self, routed: TreeRequest) -> list[Backend]:
        """The shortlist of *routed*'s model from the last ranking."""
        usable = self._ranked
        for prefilter in self.prefilters[:2]:  # healthy, serves_model: fixed between refreshes
            usable = prefilter.filter(routed, usable).kept
        chosen = usable[:SHORTLIST]
        if routed.model in self._pool_adapters:
            holders = [s for s in usable[SHORTLIST:] if routed.model in adapters(s)]
            chosen = chosen + holders[:SHORTLIST]
        return [s.backend for s in chosen]

    def _decide(
        self,
        request: RoutingRequest,
        routed: TreeRequest,
        criticality: Criticality,
        states: list[BackendState],
    ) -> Decision:
        """Run the tree on *states* and reserve a survivor (see the module docstring, 3-4)."""
        ctx = self.ctx
        assert ctx.leases is not None
        details: dict[str, Any] = {
            "criticality": criticality.level,
            "criticality_source": criticality.source,
            "rounds": [],
        }
        refused: dict[str, str] = {}
        # Each round either reserves, raises, or refuses at least one more backend.
        for _ in range(len(states)):
            remaining = [s for s in states if s.name not in refused]
            evaluation = self.evaluate(routed, remaining)
            details["rounds"].append(evaluation.trace)
            if evaluation.error is not None:
                raise evaluation.error
            survivors = evaluation.survivors
            while survivors:
                choice = ctx.rng.choice(survivors)
                reservation = ctx.leases.acquire(
                    request.request_id, choice.name, model=request.model, cap=self.cap
                )
                if reservation.backend is not None:
                    details["refused"] = refused
                    details["survivors"] = [s.name for s in evaluation.survivors]
                    return Decision(
                        # The lease this request id already held, if it held one.
                        ctx.by_name.get(reservation.backend, choice.backend),
                        request.request_id,
                        self.name,
                        reason=_reason(criticality, evaluation.trace),
                        inflight=reservation.inflight,
                        details=details,
                    )
                refused[choice.name] = reservation.reason
                survivors = [s for s in survivors if s.name != choice.name]
            if not [s for s in states if s.name not in refused]:
                break
        raise _refused_error(refused, request)

    def routed(self, request: RoutingRequest) -> tuple[TreeRequest, Criticality]:
        """The request as the tree sees it, with its criticality resolved."""
        criticality = resolve_criticality(request, self.critical_models, self.default_criticality)
        routed = TreeRequest(**{f.name: getattr(request, f.name) for f in fields(RoutingRequest)})
        routed.criticality = criticality.level
        return routed, criticality

    def evaluate(self, request: TreeRequest, states: list[BackendState]) -> Evaluation:
        """Pre-filters then the tree, on a snapshot; reserves nothing."""
        trace: list[dict[str, Any]] = []
        current = states
        eligible = states  # what fresh_metrics received: healthy, serving, below the cap
        for prefilter in self.prefilters:
            if prefilter is self.fresh:
                eligible = current
            result: FilterResult = prefilter.filter(request, current)
            trace.append(
                {
                    "filter": prefilter.name,
                    "in": [s.name for s in current],
                    "kept": [s.name for s in result.kept],
                    "removed": result.removed,
                    "outcome": "success" if result.kept else "failure",
                }
            )
            if not result.kept:
                return Evaluation([], trace, _prefilter_error(prefilter.name, request))
            current = result.kept
        # Every adapter the snapshot knows of, even on backends filtered out: it tells
        # whether the request's model is an adapter at all.
        if request.pool_adapters is None:  # a shortlist brings the pool-wide set along
            request.pool_adapters = frozenset().union(*(adapters(s) for s in states))
        outcome = run_tree(self.tree, request, current)
        trace.extend(outcome.trace)
        unscraped = self.fresh.unscraped(eligible) if outcome.shed else []
        if unscraped and len(unscraped) < len(eligible):
            # Shed only when every eligible backend is known to be busy: one never scraped
            # yet (a fleet starting, a worker's copy read before its first scrape) is not,
            # and takes the request on its in-flight count (as when no metrics are fresh).
            current = unscraped
            outcome = run_tree(self.tree, request, current)
            trace.append(
                {
                    "filter": "unscraped",
                    "in": [s.name for s in eligible],
                    "kept": [s.name for s in current],
                    "removed": {},
                    "outcome": "success",
                }
            )
            trace.extend(outcome.trace)
        if outcome.shed:
            return Evaluation(
                [],
                trace,
                Shed(
                    f"llmlbd shed this {request.criticality} request: every backend is queuing or "
                    "short of KV cache (lb_config.queueThresholdCritical, kvCacheThreshold); retry "
                    "later, or mark it critical"
                ),
            )
        if not outcome.survivors:
            return Evaluation([], trace, no_route("none", request))
        return Evaluation(outcome.survivors, trace, None, current)

    def explain(self, request: RoutingRequest) -> dict[str, Any]:
        """Where *request* would go now and why (llmlbd.policy.explain's format); reserves nothing."""
        ctx = self.ctx
        states = read_pool(ctx.client, ctx.keys, ctx.backends)
        routed, criticality = self.routed(request)
        result: dict[str, Any] = {
            "policy": self.name,
            "exact": True,
            "choice": None,
            "ties": [],
            "reason": None,
            "prefix_match": None,
            "outcome": {"status": 200},
            "criticality": f"{criticality.level} (from {criticality.source})",
            "score_meaning": None,
            "note": (
                "the decision tree on this snapshot; the proxy picks one of the ties at "
                "random (and LoRA affinity is itself a weighted coin)"
            ),
        }
        if not states:
            result["outcome"] = no_route_outcome("empty", request)
            return result
        evaluation = self.evaluate(routed, states)
        survivors = {s.name for s in evaluation.survivors}
        removed_by: dict[str, str] = {}
        for step in evaluation.trace:
            for name, why in step["removed"].items():
                if name not in survivors:
                    removed_by.setdefault(name, f"{step['filter']}: {why}")
        seen = {s.name: s for s in evaluation.seen}
        # least_wait's own figures for the backends the tree ran on (None: speed unknown).
        waits = waits_of(routed, evaluation.seen) or {}
        if waits:
            result["score_meaning"] = (
                "expected seconds to the first token (least_wait: queue over free slots x "
                "service_s / slots + prefill_s); lower wins, within the fastest prefill_s of the "
                "least is a tie"
            )
        result["candidates"] = [
            {
                "name": s.name,
                "url": s.backend.url,
                "weight": s.backend.weight,
                "inflight": s.inflight,
                "drained": s.drained,
                "health": s.metrics.get(F.HEALTH) or F.HEALTH_UNKNOWN,
                "models": s.names(F.MODELS),
                "metrics_age_ms": s.metrics_age_ms,
                "stale": s.metrics_age_ms is None or s.metrics_age_ms > ctx.stale_after_ms,
                "waiting": s.metrics.get(F.WAITING),
                "running": s.metrics.get(F.RUNNING),
                "kv_usage": s.metrics.get(F.KV_USAGE),
                "queue": queue(seen.get(s.name, s)),
                "adapters": ",".join(sorted(adapters(s))),
                "service_s": s.metrics.get(F.SERVICE_S),
                "prefill_s": s.metrics.get(F.PREFILL_S),
                "slots": s.metrics.get(F.SLOTS),
                "removed_by": removed_by.get(s.name),
                "score": None if s.name not in waits else round(waits[s.name], 4),
            }
            for s in states
        ]
        result["filters"] = [
            {"name": step["filter"], "removed": list(step["removed"])} for step in evaluation.trace
        ]
        if evaluation.error is not None:
            result["outcome"] = error_outcome(evaluation.error)
            return result
        ties = [s.name for s in evaluation.survivors]
        result.update(choice=ties[0], ties=ties, reason=_reason(criticality, evaluation.trace))
        return result


@dataclass
class Evaluation:
    """What the pre-filters and the tree made of one snapshot."""

    survivors: list[BackendState]
    trace: list[dict[str, Any]]
    # The error the client gets when nothing survived.
    error: LLMLBError | None
    # The states the tree ran on (after the pre-filters; metrics blinded if all were stale).
    seen: list[BackendState] = field(default_factory=list)


def _reason(criticality: Criticality, trace: list[dict[str, Any]]) -> str:
    # Which branch decided: low_latency, queued (every backend over queueingThresholdLoRA),
    # or capacity (a non-critical request with room).
    branch = "capacity"
    for step in trace:
        if step["filter"] == "low_queue":
            branch = "low_latency" if step["outcome"] == "success" else "queued"
    return f"{criticality.level}_{branch}"


def _prefilter_error(name: str, request: RoutingRequest) -> LLMLBError:
    reason = {"serves_model": "model", "below_cap": "cap"}.get(name, "none")
    return no_route(reason, request)


def _refused_error(refused: dict[str, str], request: RoutingRequest) -> LLMLBError:
    return no_route(combined_reason(refused.values()), request)


def _warn_ignored(cfg: Any) -> None:
    if cfg.metric_policy != "default" or cfg.target_metric:
        log.warning(
            "lb_config_ignored",
            keys="metric_policy, target_metric",
            detail="least_busy always runs the decision tree on waiting and kv_usage",
        )
    if cfg.rate_limit < 1.0:
        log.warning(
            "lb_config_ignored",
            keys="rate_limit",
            detail="the in-flight correction of the queue replaces Higress's rate_limit",
        )
