"""prefix_cache: send a prompt where its prefix is already in the KV cache, without hot spots.

Python turns the prompt into chained block hashes (llmlbd.policy.prompt);
one Lua script (state/lua/acquire_prefix.lua) then, atomically: filters the
candidates (healthy, not drained, serves the model, under the in-flight cap),
finds each backend's longest cached prefix, weighs it against load, picks,
reserves the in-flight slot and records the prompt's blocks for the chosen
backend. Entries of removed, down or drained backends are ignored and
dropped on the way. Only the backends named in the prompt's prefix keys are read
one by one: the pool's least load (the load bound) and its least loaded backend
(the fallback) come from the ordered index (llmlbd.state.ordered_index), so a
decision does not walk the pool. See docs/policies/prefix_cache.md.
"""

from __future__ import annotations

from typing import Any

from llmlbd.config.lb_prefix_cache import SCORERS, scorer_weights
from llmlbd.policy import prompt
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.framework import Decision
from llmlbd.policy.outcomes import no_route, refuse_empty_pool
from llmlbd.request import RoutingRequest
from llmlbd.state.prefix import PrefixIndex, PrefixParams

__all__ = ["PrefixCache"]


class PrefixCache:
    name = "prefix_cache"

    def __init__(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        lb = ctx.lb_config
        self.cap = lb.maxRequestCount
        self.block_chars = lb.blockChars
        self.max_levels = lb.maxBlocks
        weights = scorer_weights(lb.scorerWeights)
        prefix, queue, kv, inflight = (float(weights[name]) for name in SCORERS)
        self.params = PrefixParams(
            ttl_ms=lb.redisKeyTTL * 1000,
            stale_after_ms=ctx.stale_after_ms,
            min_match_blocks=lb.minMatchBlocks,
            max_load_gap=lb.maxLoadGap,
            max_load_ratio=lb.maxLoadRatio,
            max_kv_usage=lb.maxKvUsage,
            entries_per_backend=lb.maxEntriesPerBackend,
            tokens_per_block=lb.blockChars / lb.charsPerToken,
            mode=lb.scoring,
            shared=lb.sharedPrefix,
            weights=(prefix, queue, kv, inflight),
        )
        self.index = PrefixIndex(ctx.leases, self.params) if ctx.leases is not None else None
        self.precise = None
        if lb.index == "precise":
            from llmlbd.policy.profiles.prefix_precise import PrecisePrefix

            self.precise = PrecisePrefix(ctx, self)

    def levels(self, request: RoutingRequest) -> prompt.Levels:
        return prompt.levels(
            request.body,
            pool=self.ctx.keys.pool,
            model=request.model,
            cache_salt=request.cache_salt,
            block_chars=self.block_chars,
            max_levels=self.max_levels,
        )

    def pick(self, request: RoutingRequest, exclude: frozenset[str]) -> Decision:
        if self.precise is not None:
            return self.precise.pick(request, exclude)
        return self.pick_approximate(request, exclude)

    def pick_approximate(self, request: RoutingRequest, exclude: frozenset[str]) -> Decision:
        ctx = self.ctx
        assert self.index is not None
        refuse_empty_pool((b.name for b in ctx.backends), exclude, request)
        levels = self.levels(request)
        # The members as of now: the Redis call below yields, and the membership may change
        # meanwhile (set_backends); the reply names a member of this view.
        membership, by_name = ctx.membership, ctx.by_name
        reservation = self.index.acquire(
            request.request_id,
            membership,
            ctx.rng.getrandbits(31),
            sorted(exclude),
            levels.hashes,
            levels.blocks,
            model=request.model,
            cap=self.cap,
        )
        if reservation.backend is None:
            raise no_route(reservation.reason, request)
        return Decision(
            by_name[reservation.backend],
            request.request_id,
            self.name,
            reason=reservation.reason,
            inflight=reservation.inflight,
            details={
                "matched_blocks": reservation.matched_blocks,
                "matched_chars": reservation.matched_blocks * self.block_chars,
                "prompt_blocks": levels.total_blocks,
                "levels": len(levels),
                "best_blocks": reservation.best_blocks,
                "best_backend": reservation.best_backend,
                "healed": reservation.healed,
                "evicted": len(reservation.evicted),
            },
        )

    def explain(self, request: RoutingRequest) -> dict[str, Any]:
        if self.precise is not None:
            return self.precise.explain(request)
        return self.explain_approximate(request)

    def explain_approximate(self, request: RoutingRequest) -> dict[str, Any]:
        """Where *request* would go now and why (llmlbd.policy.explain's format), read-only.

        The same script runs in dry-run mode, so the answer is exact except for
        the random tie-break (candidates are not shuffled here).
        """
        from llmlbd.policy.explain import index_answer
        from llmlbd.policy.outcomes import no_route_outcome

        ctx = self.ctx
        assert self.index is not None
        levels = self.levels(request)
        names = [b.name for b in ctx.backends]
        result: dict[str, Any] = {
            "policy": self.name,
            "exact": True,
            "choice": None,
            "ties": [],
            "reason": None,
            "prefix_match": None,
            "prefix_match_unit": f"blocks of {self.block_chars} chars",
            "prompt_blocks": levels.total_blocks,
            "levels": len(levels),
            "outcome": {"status": 200},
            "score_meaning": (
                "bounded: longest match whose load is within max(min + "
                f"{self.params.max_load_gap:g}, min x {self.params.max_load_ratio:g})"
                if self.params.mode == "bounded"
                else f"weighted scorers {dict(zip(SCORERS, self.params.weights))}"
            ),
            "note": "dry run of acquire_prefix.lua: same filters, match and bound, every "
            "member read; ties go to a random one, not necessarily the proxy's",
        }
        if not names:
            result["outcome"] = no_route_outcome("empty", request)
            return result
        answer = self.index.explain(
            ctx.membership,
            levels.hashes,
            levels.blocks,
            model=request.model,
            cap=self.cap,
        )
        index_answer(result, answer, request, ctx.backends, "index_occupancy")
        if answer["choice"] is not None:
            result.update(choice=answer["choice"], reason=answer["reason"])
        return result
