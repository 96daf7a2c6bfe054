"""prefix_cache with ``lb_config.index: precise``: route on the blocks each backend really holds.

The backends' own KV events (collected into Redis by collector/kv_events.py) say
which vLLM blocks each one holds. For a request, Python computes the prompt's
block hashes exactly as vLLM does (llmlbd.kvblocks: the model's tokenizer and chat
template from ``lb_config.tokenizer``, else a backend's /tokenize; vLLM's hash chain
with the LoRA name and cache_salt), and one Lua script (state/lua/acquire_precise.lua)
finds the holders of the prompt's leading blocks and each one's longest run of them,
applies the same load bound as the approximate index (from the ordered index), picks
and reserves, in one round trip, without walking the pool.

It falls back to the approximate index (the `PrefixCache` it belongs to) when no
usable backend has a live KV-event stream or the prompt cannot be tokenized, so a
fleet whose collector or publishers are down still routes by prefix.
See docs/policies/prefix_cache.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmlbd.kvblocks.prompt_blocks import BlockHashes, PromptBlocks, TokenizeError
from llmlbd.policy.context import PolicyContext
from llmlbd.policy.explain import index_answer
from llmlbd.policy.framework import Decision
from llmlbd.policy.outcomes import no_route, refuse_empty_pool
from llmlbd.request import RoutingRequest
from llmlbd.state.precise import PreciseIndex, PreciseParams

if TYPE_CHECKING:
    from llmlbd.policy.profiles.prefix_cache import PrefixCache

__all__ = ["PrecisePrefix", "prompt_blocks_from_config"]


def prompt_blocks_from_config(lb: Any) -> PromptBlocks:
    """The request -> block hashes pipeline the lb_config asks for."""
    from llmlbd.kvblocks.local import LocalTokenizer
    from llmlbd.kvblocks.remote import RemoteTokenizer

    local = LocalTokenizer(lb.tokenizer) if lb.tokenizer else None
    remote = None if local else RemoteTokenizer(lb.tokenizeTimeout / 1000.0)
    return PromptBlocks(lb.kvBlockSize, seed=lb.hashSeed, local=local, remote=remote)


class PrecisePrefix:
    name = "prefix_cache"

    def __init__(self, ctx: PolicyContext, approximate: PrefixCache) -> None:
        self.ctx = ctx
        self.approximate = approximate
        lb = ctx.lb_config
        self.cap = lb.maxRequestCount
        self.lora_adapters = frozenset(lb.loraAdapters or ())
        self.blocks = prompt_blocks_from_config(lb)
        self.params = PreciseParams(
            stale_after_ms=ctx.stale_after_ms,
            min_match_blocks=lb.minMatchBlocks,
            max_load_gap=lb.maxLoadGap,
            max_load_ratio=lb.maxLoadRatio,
            max_kv_usage=lb.maxKvUsage,
            count_offloaded=lb.countOffloaded,
        )
        self.index = PreciseIndex(ctx.leases, self.params) if ctx.leases is not None else None

    def block_hashes(self, request: RoutingRequest, exclude: frozenset[str]) -> BlockHashes:
        """The prompt's vLLM block hashes; TokenizeError when they cannot be known."""
        if not isinstance(request.body, dict):
            raise TokenizeError("no JSON body")
        url = self._tokenize_url(exclude)
        lora = request.model if request.model in self.lora_adapters else None
        return self.blocks.hashes(
            request.body, request.model, lora, request.cache_salt or None, url
        )

    def _tokenize_url(self, exclude: frozenset[str]) -> str | None:
        """A uniformly random backend not in *exclude* (any when all are) to ask for
        /tokenize, drawn without reading the whole pool in the usual case."""
        backends, rng = self.ctx.backends, self.ctx.rng
        if not backends:
            return None
        for _ in range(4):
            backend = rng.choice(backends)
            if backend.name not in exclude:
                return backend.url
        return rng.choice([b for b in backends if b.name not in exclude] or backends).url

    def pick(self, request: RoutingRequest, exclude: frozenset[str]) -> Decision:
        ctx = self.ctx
        assert self.index is not None
        refuse_empty_pool(ctx.membership.names, exclude, request)
        try:
            blocks = self.block_hashes(request, exclude)
        except TokenizeError as exc:
            return self._fallback(request, exclude, "tokenize_failed", str(exc))
        # The members as of now: the Redis call below yields, and the membership may change
        # meanwhile (set_backends); the reply names a member of this view.
        membership, by_name = ctx.membership, ctx.by_name
        reservation = self.index.acquire(
            request.request_id,
            membership,
            ctx.rng.getrandbits(31),
            sorted(exclude),
            blocks.hashes,
            model=request.model,
            cap=self.cap,
        )
        if reservation.backend is None:
            if reservation.reason == "no_index":
                return self._fallback(request, exclude, "no_index", "")
            raise no_route(reservation.reason, request)
        return Decision(
            by_name[reservation.backend],
            request.request_id,
            self.name,
            reason=reservation.reason,
            inflight=reservation.inflight,
            details={
                "index": "precise",
                "matched_blocks": reservation.matched_blocks,
                "prompt_blocks": len(blocks.hashes),
                "prompt_tokens": blocks.tokens,
                "best_blocks": reservation.best_blocks,
                "best_backend": reservation.best_backend,
                "live_backends": reservation.live_backends,
                "tokenizer": blocks.source,
                "tokenize_us": round(blocks.seconds * 1e6),
            },
        )

    def _fallback(
        self, request: RoutingRequest, exclude: frozenset[str], why: str, error: str
    ) -> Decision:
        decision = self.approximate.pick_approximate(request, exclude)
        decision.details["index"] = "approximate"
        decision.details["precise_fallback"] = why
        if error:
            decision.details["precise_error"] = error
        return decision

    def explain(self, request: RoutingRequest) -> dict[str, Any]:
        """Where *request* would go now by the precise index, read-only (the approximate
        index's shape, so llmlbctl explain renders both)."""
        assert self.index is not None
        try:
            blocks = self.block_hashes(request, frozenset())
        except TokenizeError as exc:
            fallback = self.approximate.explain_approximate(request)
            fallback["note"] = f"precise index unusable ({exc}): the approximate index decides"
            return fallback
        backends = self.ctx.backends
        answer = self.index.explain(
            self.ctx.membership, blocks.hashes, model=request.model, cap=self.cap
        )
        result: dict[str, Any] = {
            "policy": self.name,
            "index": "precise",
            "exact": True,
            "choice": answer["choice"],
            "ties": [],
            "reason": answer["reason"],
            "prefix_match": None,
            "prefix_match_unit": f"vLLM blocks of {self.blocks.block_size} tokens",
            "prompt_blocks": len(blocks.hashes),
            "tokenizer": blocks.source,
            "score_meaning": "blocks held, from the first, by backends with a live KV-event "
            "stream; longest within the load bound wins",
            "outcome": {"status": 200},
            "note": "dry run of acquire_precise.lua; ties go to the first candidate here but "
            "to a random one in the proxy",
        }
        index_answer(result, answer, request, backends, "index_live")
        if answer["choice"] is None:
            return result
        if not any(row["index_live"] for row in answer["candidates"]):
            result["note"] = (
                "no backend has a live KV-event stream: the proxy would use the approximate index"
            )
        return result
