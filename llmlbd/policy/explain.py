"""Explain a routing decision without making it: `llmlbctl explain`.

A policy may define ``explain(request) -> dict``: where *request* would go
now and why, computed from the shared state without reserving anything.
When it has none, `generic_explain` answers from a pool snapshot with the
filters every acquire script applies (drained, down, ejected, model not served, at
the cap) and then, per policy: least in-flight per unit of weight
(global_least_request, exact: the same rule as acquire_least_request.lua),
the next backend in the shared rotation (round_robin) or any eligible
backend (random). For other policies the generic answer is labelled an
approximation.

The dict (JSON-ready; a policy's own explain should fill what applies):

    policy        canonical policy name
    explained_by  "policy" (the policy's own explain) or "generic"
    exact         True when this is the rule the policy really applies
    note          one sentence on how to read it
    request       {"path", "model", "stream", "criticality", "prompt_chars"}
    candidates    [{"name", "url", "weight", "inflight", "drained", "health", "models",
                    "metrics_age_ms", "stale", "removed_by" (None when kept), "score"}]
    filters       [{"name", "removed": [names]}] in the order they ran
    score_meaning what "score" means and which end wins
    choice        the backend name, or None
    ties          every backend as good as the choice (one is picked at random)
    reason        the decision's reason (as in the access log), e.g. "least_inflight"
    prefix_match  matched prefix length (blocks or characters, see its unit) or None
    outcome       {"status": 200} or {"status", "code", "message"} of the error a client gets

Stale metrics are reported, not filtered: the acquire scripts trust the last
health and model list they have (settings: collector.stale_after_ms).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmlbd.config.loader import Backend
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.eligibility import REASONS, ineligible
from llmlbd.policy.outcomes import combined_reason, no_route_outcome
from llmlbd.request import RoutingRequest
from llmlbd.state import backend_fields as F
from llmlbd.state.types import BackendState

__all__ = ["explain", "generic_explain", "index_answer", "FILTERS", "EXACT_POLICIES"]

# The filters of every acquire script, in the order the script applies them.
FILTERS = REASONS
# Policies whose decision generic_explain reproduces exactly (ties aside).
EXACT_POLICIES = ("global_least_request", "round_robin", "random")


def _request_summary(request: RoutingRequest) -> dict[str, Any]:
    body = request.body or {}
    prompt_chars = 0
    if isinstance(body.get("messages"), list):
        for message in body["messages"]:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                prompt_chars += len(content)
            elif isinstance(content, list):
                prompt_chars += sum(
                    len(part.get("text", ""))
                    for part in content
                    if isinstance(part, dict) and isinstance(part.get("text"), str)
                )
    for key in ("prompt", "input"):
        if isinstance(body.get(key), str):
            prompt_chars += len(body[key])
    return {
        "path": request.path,
        "model": request.model,
        "stream": request.stream,
        "criticality": request.criticality or None,
        "prompt_chars": prompt_chars,
    }


def index_answer(
    result: dict[str, Any],
    answer: dict[str, Any],
    request: RoutingRequest,
    backends: Sequence[Backend],
    last_field: str,
) -> dict[str, Any]:
    """Fill *result* from a prefix index's dry run *answer* (state's explain_reply).

    No choice: the client's error as "outcome". Else one candidate per backend
    (score: matched blocks; *last_field*: the index's own column) and the
    choice's "prefix_match". Returns *result*.
    """
    if answer["choice"] is None:
        result["outcome"] = no_route_outcome(answer["reason"], request)
        return result
    rows = {row["name"]: row for row in answer["candidates"]}
    result["candidates"] = [
        {
            "name": b.name,
            "url": b.url,
            "weight": b.weight,
            "removed_by": None if rows[b.name]["status"] == "ok" else rows[b.name]["status"],
            "score": rows[b.name]["matched_blocks"],
            "load": rows[b.name]["load"],
            "kv_usage": rows[b.name]["kv_usage"],
            last_field: rows[b.name][last_field],
        }
        for b in backends
    ]
    result["prefix_match"] = rows[answer["choice"]]["matched_blocks"]
    return result


def generic_explain(
    policy: str,
    request: RoutingRequest,
    states: Sequence[BackendState],
    cap: int = 0,
    stale_after_ms: int = 2000,
    rr_counter: int | None = None,
) -> dict[str, Any]:
    """Explain *policy*'s choice for *request* on the snapshot *states* (see the module doc)."""
    removed: dict[str, str] = {}
    candidates: list[dict[str, Any]] = []
    for state in states:
        why = ineligible(state, request.model, cap)
        if why:
            removed[state.name] = why
        age = state.metrics_age_ms
        candidates.append(
            {
                "name": state.name,
                "url": state.backend.url,
                "weight": state.backend.weight,
                "inflight": state.inflight,
                "drained": state.drained,
                "health": state.metrics.get(F.HEALTH) or F.HEALTH_UNKNOWN,
                "models": state.names(F.MODELS),
                "metrics_age_ms": age,
                "stale": age is None or age > stale_after_ms,
                "removed_by": why,
                "score": None,
            }
        )
    filters = [
        {"name": name, "removed": [n for n, why in removed.items() if why == name]}
        for name in FILTERS
    ]
    kept = [state for state in states if state.name not in removed]
    result: dict[str, Any] = {
        "policy": policy,
        "explained_by": "generic",
        "exact": policy in EXACT_POLICIES,
        "note": "",
        "request": _request_summary(request),
        "candidates": candidates,
        "filters": filters,
        "score_meaning": None,
        "choice": None,
        "ties": [],
        "reason": None,
        "prefix_match": None,
        "outcome": {"status": 200},
    }
    if not states:
        result["outcome"] = no_route_outcome("empty", request)
        result["note"] = "the pool has no backend"
        return result
    if not kept:
        result["outcome"] = no_route_outcome(combined_reason(removed.values()), request)
        result["note"] = "every backend was filtered out"
        return result

    if policy == "round_robin":
        order = list(states)
        turn = (rr_counter or 0) + 1  # the next INCR of the shared counter
        start = turn % len(order)
        for state in order[start:] + order[:start]:
            if state.name not in removed:
                result["choice"] = state.name
                break
        result["reason"] = "round_robin"
        result["note"] = (
            f"the shared rotation counter is at {rr_counter or 0}: the next request "
            "starts at backend index "
            f"{start} and takes the first eligible one (another request may "
            "take this turn first)"
        )
        return result
    if policy == "random":
        result["ties"] = [state.name for state in kept]
        result["choice"] = kept[0].name
        result["reason"] = "random"
        result["note"] = "random picks uniformly among the eligible backends (ties)"
        return result

    scores = {state.name: state.inflight / state.backend.weight for state in kept}
    for candidate in candidates:
        candidate["score"] = scores.get(candidate["name"])
    best = min(scores.values())
    ties = [name for name, score in scores.items() if score == best]
    result.update(
        score_meaning="requests in flight per unit of weight; the lowest wins",
        choice=ties[0],
        ties=ties,
        reason="least_inflight",
    )
    if policy == "global_least_request":
        result["note"] = (
            "exact: acquire_least_request.lua applies these filters and this "
            "score atomically with the reservation; ties are broken at random"
        )
    else:
        result["note"] = (
            f"approximation: {policy} has no explain method, so this shows the "
            "filters every policy applies and a least-in-flight choice; "
            f"{policy} may score differently"
        )
    return result


def explain(policy_name: str, ctx: PolicyContext, request: RoutingRequest) -> dict[str, Any]:
    """Ask the policy to explain itself when it can, else explain generically. Reserves nothing."""
    from llmlbd.policy.registry import canonical_policy_name, load_policy_class
    from llmlbd.state.rotation import current_turn
    from llmlbd.state.snapshot import read_pool

    name = canonical_policy_name(policy_name)
    note = ""
    try:
        policy = load_policy_class(name)(ctx)
    except (ImportError, AttributeError) as exc:
        policy, note = None, f"the policy could not be loaded here ({exc}); "
    method = getattr(policy, "explain", None)
    if callable(method):
        result = dict(method(request))
        result.setdefault("policy", name)
        result["explained_by"] = "policy"
        result.setdefault("request", _request_summary(request))
        return result
    states = read_pool(ctx.client, ctx.keys, ctx.backends)
    rr = current_turn(ctx.client, ctx.keys) if name == "round_robin" else None
    result = generic_explain(
        name,
        request,
        states,
        cap=ctx.lb_config.maxRequestCount,
        stale_after_ms=ctx.stale_after_ms,
        rr_counter=rr,
    )
    result["note"] = note + result["note"]
    return result
