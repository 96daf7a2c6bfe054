"""lb_config keys read by the prefix_cache policy (declared here, listed in settings.SETTINGS)."""

from __future__ import annotations

from typing import Any

from llmlbd.config import validators as v
from llmlbd.config.setting import PREFIX, Setting

# Scorer weights (weighted mode): the inference-extension v1.2+ default profile is
# prefix 3, queue 2, KV 2 and no in-flight scorer.
SCORERS = ("prefix", "queue", "kvCache", "inflight")
WEIGHT_PRESETS: dict[str, dict[str, float]] = {
    "gie-v1": {"prefix": 3.0, "queue": 2.0, "kvCache": 2.0, "inflight": 0.0},
    "default": {"prefix": 3.0, "queue": 2.0, "kvCache": 2.0, "inflight": 2.0},
}


def _ranged_int(low: int, high: int) -> v.Validator:
    def validate(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {value!r}")
        return value

    return validate


def _at_least_one(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
        raise ValueError(f"expected a number >= 1, got {value!r}")
    return float(value)


def scorer_weights(value: Any) -> dict[str, float]:
    """A preset name (gie-v1, default) or a mapping of scorer -> weight >= 0."""
    if isinstance(value, str):
        if value not in WEIGHT_PRESETS:
            raise ValueError(
                f"expected a preset ({', '.join(WEIGHT_PRESETS)}) or a mapping, got {value!r}"
            )
        return dict(WEIGHT_PRESETS[value])
    if not isinstance(value, dict):
        raise ValueError(
            f"expected a preset name or a mapping of {', '.join(SCORERS)}, got {value!r}"
        )
    weights = {name: 0.0 for name in SCORERS}
    for name, weight in value.items():
        if name not in SCORERS:
            raise ValueError(f"unknown scorer {name!r} (expected {', '.join(SCORERS)})")
        weights[name] = v.non_negative_float(weight)
    if not any(weights.values()):
        raise ValueError("at least one scorer weight must be > 0")
    return weights


SETTINGS: list[Setting] = [
    Setting(
        "lb_config.redisKeyTTL",
        1800,
        v.positive_int,
        "Higress: life of a prefix entry after its last use (a use refreshes an entry "
        "once it is 1/8 of this old, so it lives 7/8 of it at least).",
        "s",
        policies=(PREFIX,),
    ),
    Setting(
        "lb_config.blockChars",
        64,
        _ranged_int(8, 65536),
        "Characters of canonical prompt per hashed block (about 16 tokens at 4 "
        "characters per token, a vLLM block).",
        "chars",
        policies=(PREFIX,),
    ),
    Setting(
        "lb_config.maxBlocks",
        256,
        _ranged_int(1, 2048),
        "Most prefix keys per request: the first quarter are consecutive blocks, then "
        "every 2nd, 4th, 8th... block, so a long conversation stays distinguishable.",
        policies=(PREFIX,),
    ),
    Setting(
        "lb_config.minMatchBlocks",
        4,
        v.positive_int,
        "A match shorter than this many blocks counts as a miss (too little cache to "
        "outweigh load).",
        "blocks",
        policies=(PREFIX,),
    ),
    Setting(
        "lb_config.maxLoadGap",
        32.0,
        v.non_negative_float,
        "Bounded mode: follow a match while the backend's load is at most this many "
        "requests above the least-loaded backend's (or within maxLoadRatio).",
        "requests",
        policies=(PREFIX,),
    ),
    Setting(
        "lb_config.maxLoadRatio",
        1.5,
        _at_least_one,
        "Bounded mode: follow a match while the backend's load is at most this multiple "
        "of the least-loaded backend's (or within maxLoadGap).",
        policies=(PREFIX,),
    ),
    Setting(
        "lb_config.sharedPrefix",
        "follow",
        v.one_of("follow", "spread"),
        "Bounded mode, a new conversation on a prefix others branched from (a shared "
        "system prompt): follow = the least loaded in-bound backend that holds it; "
        "spread = by load and index occupancy over every backend, which pays the "
        "shared prefill again on each one it reaches.",
        policies=(PREFIX,),
    ),
    Setting(
        "lb_config.maxKvUsage",
        0.95,
        v.fraction,
        "Bounded mode: never follow a match to a backend whose fresh KV-cache use is above this.",
        policies=(PREFIX,),
    ),
    Setting(
        "lb_config.maxEntriesPerBackend",
        31250,
        v.positive_int,
        "Cap of prefix entries per backend when its num_gpu_blocks x block_size is "
        "unknown; known, the cap is that many tokens' worth of blocks.",
        "entries",
        policies=(PREFIX,),
    ),
    Setting(
        "lb_config.charsPerToken",
        4.0,
        v.positive_float,
        "Characters per token assumed when sizing the per-backend cap from the KV cache.",
        policies=(PREFIX,),
    ),
    Setting(
        "lb_config.scoring",
        "bounded",
        v.one_of("bounded", "weighted"),
        "bounded: longest match within a load bound, else least load; weighted: sum of "
        "weighted prefix, queue, KV and in-flight scores.",
        policies=(PREFIX,),
    ),
    Setting(
        "lb_config.scorerWeights",
        "default",
        scorer_weights,
        "Weighted mode: a preset (gie-v1 = prefix 3, queue 2, kvCache 2; default adds "
        "inflight 2) or a mapping of prefix, queue, kvCache, inflight to weights.",
        policies=(PREFIX,),
    ),
]
