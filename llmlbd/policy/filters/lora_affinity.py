"""lora_affinity: soft affinity for LoRA requests (inference-extension v0.2+ rule).

The request's adapter on backend ``b`` is its ``model`` when that name is one
of ``b``'s active adapters (``lora_running`` ∪ ``lora_waiting``). A request is a
LoRA request when its model is active on some backend of the pool
(``request.pool_adapters``, set by the policy from the whole snapshot; else
on some candidate). Any other request is treated as a base-model request and
the filter keeps everyone: the reference instead sent base-model requests
only to backends with a free adapter slot. (An adapter active nowhere looks
like a base model too; the collector does not tell them apart.)

Formula, for a LoRA request:
* ``affinity  = {b : model ∈ adapters(b)}``
* ``available = {b : model ∉ adapters(b) and |adapters(b)| < max_lora(b)}``
* both non-empty: ``affinity`` with probability ``threshold`` (0.999), else
  ``available``; one non-empty: that one; both empty: none (a failure, so
  the combinator passes the input on).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from llmlbd.policy.filters._load import adapters, max_lora, request_adapter
from llmlbd.policy.framework import BackendState, FilterResult
from llmlbd.request import RoutingRequest

__all__ = ["LoraAffinity", "TYPE"]

TYPE = "lora_affinity"


class LoraAffinity:
    def __init__(
        self, threshold: float = 0.999, rng: random.Random | None = None, name: str = TYPE
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.rng = rng or random.Random()

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any] | None = None, rng: random.Random | None = None, **_: Any
    ) -> LoraAffinity:
        return cls(rng=rng, **dict(params or {}))

    def filter(self, request: RoutingRequest, candidates: Sequence[BackendState]) -> FilterResult:
        model = request_adapter(request, candidates)
        if model is None:
            return FilterResult(list(candidates))
        active = {state.name: adapters(state) for state in candidates}
        affinity = [s for s in candidates if model in active[s.name]]
        available = [
            s
            for s in candidates
            if model not in active[s.name] and len(active[s.name]) < max_lora(s)
        ]
        if affinity and available:
            chosen, label = (
                (affinity, "affinity")
                if self.rng.random() < self.threshold
                else (available, "free-slot")
            )
        elif affinity or available:
            chosen, label = (affinity, "affinity") if affinity else (available, "free-slot")
        else:
            chosen, label = [], ""
        kept = {state.name for state in chosen}
        removed = {}
        for state in candidates:
            if state.name in kept:
                continue
            if model in active[state.name]:
                removed[state.name] = f"adapter active, {label} group chosen"
            elif len(active[state.name]) < max_lora(state):
                removed[state.name] = f"free adapter slot, {label} group chosen"
            else:
                removed[state.name] = (
                    f"adapter not active and no free slot "
                    f"({len(active[state.name])}/{max_lora(state)})"
                )
        return FilterResult(list(chosen), removed)
