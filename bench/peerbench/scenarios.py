"""The named scenarios of the peer benchmark: fleet, population, rates (pure data).

Each is one of the issue's five workloads (plus workload 1's closed-loop
variant) and runs alone with ``bench/peers.py --scenarios NAME``. Their rates
and durations are those of the recorded run in docs/benchmarks.md, chosen so
that the whole run fits about 25 minutes on the 2-core development VM;
``--rates`` and ``--duration`` run others.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from bench.peerbench.workloads import ChatPopulation, Population, SingleShotPopulation, text

__all__ = ["SCENARIOS", "Scenario"]


@dataclass(frozen=True)
class Scenario:
    """A named workload: its fleet, its population and the rates it runs at."""

    name: str
    title: str
    about: str
    servers: tuple[dict, ...]  # per-server `llmlbd sim` options
    rates: tuple[float, ...]  # requests per simulated second; 0 = closed loop
    duration_s: float  # simulated seconds of arrivals
    time_scale: float
    sim_options: tuple[tuple[str, object], ...] = ()
    kv_bound: bool = False  # the hit rate and the oracle matter here
    warm_up: bool = False  # send each user's first turn before measuring
    routers: tuple[str, ...] = ()  # the default set for this scenario (all when empty)
    workload: str = ""  # the population's name when it differs from the scenario's

    def population(self, seed: int) -> Population:
        return _POPULATIONS[self.workload or self.name](seed)


def _kv_pressure(seed: int) -> Population:
    return ChatPopulation(
        seed, users=24, user_words=(40, 100), max_tokens=48, own_context_words=2000
    )


def _shared_system(seed: int) -> Population:
    systems = [text(random.Random(seed * 31 + i), 1500) for i in range(3)]
    return ChatPopulation(
        seed, users=160, user_words=(20, 60), max_tokens=48, shared_systems=systems, turns=(1, 3)
    )


_POPULATIONS = {
    "kv-pressure": _kv_pressure,
    "shared-system": _shared_system,
    "single-shot": lambda seed: SingleShotPopulation(seed, "chat"),
    "tiers": lambda seed: SingleShotPopulation(seed, "tiers"),
    "embeddings": lambda seed: SingleShotPopulation(seed, "embed"),
}

_L4 = {"profile": "l4-llama3-8b"}
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "kv-pressure",
            "1. Long multi-turn chats under KV pressure",
            "24 users, each with its own ~3,000-token document as the system message, "
            "chatting on (user turns of 40-100 words, 48-token answers), so every context "
            "keeps growing. 4 L4-profile servers with 2,200 KV blocks of 16 tokens (35k "
            "tokens) each: the 24 contexts (~85k tokens) fit the fleet's 141k only if "
            "each user stays on one server. Each user's first turn is sent before measuring.",
            (_L4,) * 4,
            rates=(2.0, 5.0),
            duration_s=14.0,
            time_scale=0.5,
            kv_bound=True,
            warm_up=True,
        ),
        Scenario(
            "kv-pressure-closed",
            "1b. Workload 1, closed loop",
            "Workload 1 with every user sending its next turn as soon as its answer is in "
            "(24 clients, no think time): the fleet runs as fast as the routing lets it.",
            (_L4,) * 4,
            rates=(0.0,),
            duration_s=16.0,
            time_scale=0.5,
            kv_bound=True,
            warm_up=True,
            workload="kv-pressure",
            routers=(
                "llmlbd prefix_cache",
                "vllm-router consistent_hash",
                "sglang-router cache_aware",
                "oracle",
            ),
        ),
        Scenario(
            "shared-system",
            "2. Shared system prompts",
            "160 users in short conversations (1-3 turns, 20-60-word user turns, 48-token "
            "answers), each conversation opening with one of 3 shared system prompts of "
            "~2,250 tokens. 4 L4-profile servers.",
            (_L4,) * 4,
            rates=(10.0,),
            duration_s=16.0,
            time_scale=0.5,
            kv_bound=True,
            routers=(
                "llmlbd prefix_cache",
                "vllm-router cache_aware",
                "vllm-router power_of_two",
                "sglang-router cache_aware",
            ),
        ),
        Scenario(
            "single-shot",
            "3. Independent single-shot prompts",
            "One-turn prompts with log-normal lengths (median 300 words, ~450 tokens, "
            "sigma 0.9, 10-3,000 words) and answers (median 64 tokens, sigma 0.7, 8-256), "
            "each opening with a unique request id so nothing is reused. 4 L4-profile "
            "servers.",
            (_L4,) * 4,
            rates=(8.0,),
            duration_s=16.0,
            time_scale=0.5,
            routers=(
                "llmlbd global_least_request",
                "vllm-router power_of_two",
                "litellm least-busy",
                "nginx least_conn",
            ),
        ),
        Scenario(
            "tiers",
            "4. Critical and sheddable traffic, two LoRA adapters, two slow servers",
            "Short prompts (40-200 words, 32-token answers): half for the base model, a "
            "quarter each for adapters lora-a and lora-b (one adapter slot per server); 30 % "
            "critical, the rest sheddable (header x-llmlbd-criticality, which only llmlbd "
            "reads). 2 A100-profile and 2 L4-profile servers, 4 running slots each.",
            (
                {"profile": "a100-llama3-8b"},
                {"profile": "a100-llama3-8b"},
                _L4,
                _L4,
            ),
            rates=(16.0,),
            duration_s=20.0,
            time_scale=0.5,
            sim_options=(("max_num_seqs", 4), ("lora", "lora-a,lora-b"), ("max_loras", 1)),
            routers=(
                "llmlbd least_busy",
                "vllm-router power_of_two",
                "litellm least-busy",
                "nginx least_conn",
            ),
        ),
        Scenario(
            "embeddings",
            "5. Embeddings at a high rate",
            "POST /v1/embeddings with 5-30-word inputs: the servers answer at once, so "
            "the router's own cost decides. 4 servers.",
            ({},) * 4,
            rates=(100.0,),
            duration_s=10.0,
            time_scale=1.0,
            routers=(
                "llmlbd global_least_request",
                "vllm-router round_robin",
                "litellm least-busy",
                "nginx least_conn",
            ),
        ),
    )
}
