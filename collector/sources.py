"""Where each field of a backend's hash comes from, and how series combine.

A *source* is written like a PromQL selector, optionally followed by
``@label`` to read a label's value instead of the sample's value::

    vllm:num_requests_waiting
    nv_trt_llm_request_metrics{request_type="waiting"}
    vllm:cache_config_info@block_size

Each field has a list of sources tried in order; the first one present on
the page wins (operator mappings from ``collector.metric_map`` first, then
vLLM V1, then vLLM's pre-0.12 names, then SGLang and the others). All the
series a source matches are combined by the field's rule (`AGGREGATION`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from collector.exposition import parse_labels
from llmlbd.state import backend_fields as F

__all__ = [
    "Source",
    "Plan",
    "parse_source",
    "build_plan",
    "AGGREGATION",
    "BUILTIN",
    "METRIC_FIELDS",
    "RAW_FIELDS",
    "INFERENCE_SUM",
    "INFERENCE_COUNT",
    "PREFILL_SUM",
    "PREFILL_COUNT",
    "WAITING_CAPACITY",
]

# Read from the page but not stored as they are: collector/speed.py turns them, over
# successive scrapes, into the hash's speed and capacity fields (service_s, prefill_s,
# slots). Histograms are cumulative, so one page alone says nothing about recent speed.
INFERENCE_SUM = "inference_sum"  # seconds requests spent running, all finished so far
INFERENCE_COUNT = "inference_count"
PREFILL_SUM = "prefill_sum"  # seconds from start to first token, all so far
PREFILL_COUNT = "prefill_count"
WAITING_CAPACITY = "waiting_capacity"  # waiting for a slot or KV room (not for a LoRA slot)
RAW_FIELDS = frozenset(
    {INFERENCE_SUM, INFERENCE_COUNT, PREFILL_SUM, PREFILL_COUNT, WAITING_CAPACITY}
)

# How the series a source matches become one value:
#   sum   - one series per engine / data-parallel rank: the backend's total
#   mean  - KV use: engines are the same size, so the mean is the fraction of
#           the backend's whole cache in use (vLLM's internal DP balancer sends
#           new work to the emptiest engine, so "max" would call a backend
#           full while it still has room)
#   max   - per-engine copies of one value (vLLM's front end writes the same
#           summed num_gpu_blocks into each engine's cache_config_info)
#   lora  - vllm:lora_requests_info: the value is a timestamp; the newest
#           series whose adapter labels are not both empty is current
AGGREGATION: dict[str, str] = {
    F.WAITING: "sum",
    F.RUNNING: "sum",
    F.KV_USAGE: "mean",
    F.PREFIX_QUERIES: "sum",
    F.PREFIX_HITS: "sum",
    F.BLOCK_SIZE: "max",
    F.NUM_GPU_BLOCKS: "max",
    F.MAX_LORA: "lora",
    F.LORA_RUNNING: "lora",
    F.LORA_WAITING: "lora",
    INFERENCE_SUM: "sum",
    INFERENCE_COUNT: "sum",
    PREFILL_SUM: "sum",
    PREFILL_COUNT: "sum",
    WAITING_CAPACITY: "sum",
}
METRIC_FIELDS = tuple(AGGREGATION)
LIST_FIELDS = frozenset({F.LORA_RUNNING, F.LORA_WAITING})

BUILTIN: dict[str, tuple[str, ...]] = {
    F.WAITING: (
        "vllm:num_requests_waiting",
        "sglang:num_queue_reqs",
        "tgi_queue_size",
        "trtllm_num_requests_waiting",
        'nv_trt_llm_request_metrics{request_type="waiting"}',
    ),
    F.RUNNING: (
        "vllm:num_requests_running",
        "sglang:num_running_reqs",
        "tgi_batch_current_size",
        "trtllm_num_requests_running",
        'nv_trt_llm_request_metrics{request_type="scheduled"}',
    ),
    F.KV_USAGE: (
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",  # before vLLM 0.12
        "sglang:token_usage",
        "trtllm_kv_cache_utilization",
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}',
    ),
    F.PREFIX_QUERIES: (
        "vllm:prefix_cache_queries_total",
        "vllm:gpu_prefix_cache_queries_total",  # before vLLM 0.12
        "sglang:prompt_tokens_total",  # SGLang: hit ratio = cached / prompt tokens
    ),
    F.PREFIX_HITS: (
        "vllm:prefix_cache_hits_total",
        "vllm:gpu_prefix_cache_hits_total",
        "sglang:cached_tokens_total",
    ),
    F.BLOCK_SIZE: (
        "vllm:cache_config_info@block_size",
        "sglang:page_size",
        "sglang:cache_config_info@page_size",
        "trtllm_kv_cache_tokens_per_block",
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="tokens_per"}',
    ),
    F.NUM_GPU_BLOCKS: (
        "vllm:cache_config_info@num_gpu_blocks",
        "sglang:num_pages",
        "sglang:cache_config_info@num_pages",
        "trtllm_kv_cache_max_blocks",
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max"}',
    ),
    F.MAX_LORA: (
        "vllm:lora_requests_info@max_lora",
        "sglang:lora_pool_slots_total",
    ),
    F.LORA_RUNNING: ("vllm:lora_requests_info@running_lora_adapters",),
    F.LORA_WAITING: ("vllm:lora_requests_info@waiting_lora_adapters",),
    # vLLM V1 histograms (vLLM 0.10+): scheduled -> finished, and scheduled -> first token.
    INFERENCE_SUM: ("vllm:request_inference_time_seconds_sum",),
    INFERENCE_COUNT: ("vllm:request_inference_time_seconds_count",),
    PREFILL_SUM: ("vllm:request_prefill_time_seconds_sum",),
    PREFILL_COUNT: ("vllm:request_prefill_time_seconds_count",),
    # vLLM 0.20+; without it collector/speed.py falls back to the whole waiting queue.
    WAITING_CAPACITY: ('vllm:num_requests_waiting_by_reason{reason="capacity"}',),
}


@dataclass(frozen=True)
class Source:
    name: str  # sample name, exactly as on the page
    selector: tuple[tuple[str, str], ...]  # label pairs a series must carry
    label: str | None  # read this label instead of the value
    text: str  # as written, for logs and docs
    # Operator mappings may name a counter's family ("foo") for its sample
    # ("foo_total") or the reverse; built-in names are exact.
    loose_total: bool = False

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.selector)


def parse_source(text: str, loose_total: bool = False) -> Source:
    """Parse ``name{l="v",...}@label`` (selector and ``@label`` optional); ValueError if bad."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            f"expected a metric name such as 'queue_len{{engine=\"0\"}}', got {text!r}"
        )
    spec = text.strip()
    label: str | None = None
    selector: dict[str, str] = {}
    brace = spec.find("{")
    if brace != -1:
        name = spec[:brace]
        try:
            selector, after = parse_labels(spec, brace + 1)
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
        rest = spec[after:].strip()
    else:
        name, _, rest = spec.partition("@")
        rest = "@" + rest if _ else ""
    if rest:
        if not rest.startswith("@") or not rest[1:].strip():
            raise ValueError(f"{text!r}: expected '@label' after the selector, got {rest!r}")
        label = rest[1:].strip()
    name = name.strip()
    if not name or any(c in name for c in ' \t"=,}'):
        raise ValueError(f"{text!r}: bad metric name {name!r}")
    return Source(name, tuple(sorted(selector.items())), label, text, loose_total)


@dataclass(frozen=True)
class Plan:
    """For each metric field, its sources in order of precedence."""

    sources: dict[str, tuple[Source, ...]]

    def names(self) -> set[str]:
        return {s.name for sources in self.sources.values() for s in sources}


def build_plan(metric_map: Mapping[str, Any] | None = None) -> Plan:
    """Built-in sources, with ``collector.metric_map`` entries tried first.

    *metric_map* maps a field name to one source or a list of them. Raises
    ValueError naming the field when an entry is unknown or malformed.
    """
    sources = {field: [parse_source(s) for s in specs] for field, specs in BUILTIN.items()}
    for field, value in (metric_map or {}).items():
        if field not in AGGREGATION:
            raise ValueError(
                f"metric_map.{field}: not a metric field "
                f"(expected one of {', '.join(METRIC_FIELDS)})"
            )
        specs = value if isinstance(value, (list, tuple)) else [value]
        try:
            mapped = [parse_source(s, loose_total=True) for s in specs]
        except ValueError as exc:
            raise ValueError(f"metric_map.{field}: {exc}") from None
        sources[field] = mapped + sources[field]
    return Plan({field: tuple(srcs) for field, srcs in sources.items()})
