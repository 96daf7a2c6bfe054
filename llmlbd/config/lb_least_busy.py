"""lb_config keys read by the least_busy policy (declared here, listed in settings.SETTINGS).

The four thresholds keep the inference-extension v0.3 defaults. Its
environment-variable names are accepted as *key aliases* inside lb_config
(so a value copied from an endpoint-picker Deployment can be pasted in), but
real environment variables are not read: the config file stays the one
source of truth, which `llmlbd config show` prints and every worker and
replica shares. See docs/policies/least_busy.md.
"""

from __future__ import annotations

from typing import Any

from llmlbd.config import validators as v
from llmlbd.config.setting import BUSY, Setting

__all__ = ["SETTINGS", "CRITICALITY_DEFAULTS"]

CRITICALITY_DEFAULTS = ("auto", "critical", "standard", "sheddable")


def _string_or_none(value: Any) -> str:
    return "" if value is None else v.string(value)


SETTINGS: list[Setting] = [
    Setting(
        "lb_config.criticalModels",
        [],
        v.string_list,
        "Models (base or adapter names) whose requests are critical: never shed, and routed "
        "by the low-latency branch.",
        policies=(BUSY,),
    ),
    Setting(
        "lb_config.defaultCriticality",
        "auto",
        v.one_of(*CRITICALITY_DEFAULTS),
        "Criticality of a request that no header, `priority` or criticalModels entry marks. "
        "auto: critical while criticalModels is empty (nothing is shed, as Higress "
        "endpoint_metrics), standard once it lists models (unlisted models may be shed, as "
        "Higress least_busy).",
        policies=(BUSY,),
    ),
    Setting(
        "lb_config.queueingThresholdLoRA",
        128,
        v.non_negative_int,
        "Critical requests prefer backends with fewer waiting requests than this "
        "(low-queue filter, strict <).",
        "requests",
        policies=(BUSY,),
        aliases=("QUEUING_THRESHOLD_LORA",),
    ),
    Setting(
        "lb_config.queueThresholdCritical",
        5,
        v.non_negative_int,
        "A backend has room for a non-critical request while its waiting queue is at most "
        "this (inclusive).",
        "requests",
        policies=(BUSY,),
        aliases=("QUEUE_THRESHOLD_CRITICAL",),
    ),
    Setting(
        "lb_config.kvCacheThreshold",
        0.8,
        v.fraction,
        "A backend has room for a non-critical request while its KV-cache use is at most "
        "this fraction (inclusive).",
        policies=(BUSY,),
        aliases=("KV_CACHE_THRESHOLD",),
    ),
    Setting(
        "lb_config.loraAffinityThreshold",
        0.999,
        v.fraction,
        "Probability that a LoRA request goes to backends that already hold its adapter "
        "rather than to backends with a free adapter slot.",
        policies=(BUSY,),
        aliases=("LORA_AFFINITY_THRESHOLD",),
    ),
    # Higress endpoint_metrics keys, accepted so its configs load unchanged.
    Setting(
        "lb_config.metric_policy",
        "default",
        v.one_of("default", "least", "most"),
        "Higress: accepted for compatibility; llmlbd always runs the decision tree "
        "(least/most log a warning at start).",
        policies=(BUSY,),
    ),
    Setting(
        "lb_config.target_metric",
        "",
        _string_or_none,
        "Higress: accepted for compatibility and ignored (a warning is logged when set).",
        policies=(BUSY,),
    ),
    Setting(
        "lb_config.rate_limit",
        1.0,
        v.fraction,
        "Higress: per-host share of recent picks. Accepted and ignored: the in-flight "
        "correction of the queue estimate replaces it (a warning is logged below 1).",
        policies=(BUSY,),
    ),
]
