"""The ``/metrics`` page: vLLM V1's metric names, types and label sets.

Counters and histograms are real prometheus_client objects on a private
registry, so the exposition (``_total`` suffixes, ``_created`` families,
sorted labels, number formatting) is exactly what vLLM's prometheus_client
renders. Gauges are read from the engine when the page is scraped. Every
engine series carries ``model_name`` (the served model, never an adapter)
and ``engine="0"``.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from llmlbd.sim.config import SimConfig

__all__ = ["SimMetrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=1.0.0; charset=utf-8"

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
REQUEST_LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)
PREEMPTION_BUCKETS = (1, 2, 3, 4, 5, 10, 20)


def token_buckets(max_model_len: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to max_model_len, as vLLM builds them."""
    buckets, exponent = [], 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_model_len:
                return buckets
            buckets.append(value)
        exponent += 1


class SimMetrics:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.engine = None  # set by the app once the engine exists
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        model = config.model
        labels = ("model_name", "engine")
        bound = {"model_name": model, "engine": "0"}
        reg = self.registry

        def counter(name: str, doc: str):
            return Counter(name, doc, labels, registry=reg).labels(**bound)

        def histogram(name: str, doc: str, buckets):
            return Histogram(name, doc, labels, buckets=buckets, registry=reg).labels(**bound)

        # Declared in the order vLLM 0.33 creates them, so the page reads the same.
        for name, doc in (
            (
                "vllm:estimated_flops_per_gpu",
                "Estimated floating point operations per GPU (always 0 here).",
            ),
            ("vllm:estimated_read_bytes_per_gpu", "Estimated bytes read per GPU (always 0 here)."),
            (
                "vllm:estimated_write_bytes_per_gpu",
                "Estimated bytes written per GPU (always 0 here).",
            ),
        ):
            counter(name, doc)
        reg.register(_EngineGauges(self))
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in queried tokens."
        )
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in cached tokens.")
        counter(
            "vllm:external_prefix_cache_queries",
            "External (KV connector) prefix cache queries, in tokens.",
        )
        counter(
            "vllm:external_prefix_cache_hits",
            "External (KV connector) prefix cache hits, in tokens.",
        )
        counter("vllm:mm_cache_queries", "Multi-modal cache queries, in items.")
        counter("vllm:mm_cache_hits", "Multi-modal cache hits, in items.")
        if config.legacy_metrics:
            # Renamed in vLLM 0.9, gone in 0.12; for collectors that still read them.
            self.legacy_queries = counter(
                "vllm:gpu_prefix_cache_queries", "Legacy name of vllm:prefix_cache_queries."
            )
            self.legacy_hits = counter(
                "vllm:gpu_prefix_cache_hits", "Legacy name of vllm:prefix_cache_hits."
            )
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemptions.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prefill tokens processed.")
        by_source = Counter(
            "vllm:prompt_tokens_by_source",
            "Prompt tokens by source.",
            labels + ("source",),
            registry=reg,
        )
        self.prompt_computed = by_source.labels(source="local_compute", **bound)
        self.prompt_cache_hit = by_source.labels(source="local_cache_hit", **bound)
        by_source.labels(source="external_kv_transfer", **bound)
        self.prompt_cached = counter(
            "vllm:prompt_tokens_cached", "Cached prompt tokens (local + external)."
        )
        cached_by_source = Counter(
            "vllm:prompt_tokens_cached_by_source",
            "Prefix-cache hit tokens by the cache tier that supplied them.",
            labels + ("source",),
            registry=reg,
        )
        self.prompt_cached_device = cached_by_source.labels(source="device", **bound)
        for source in ("host", "p2p", "disk", "external_unspecified"):
            cached_by_source.labels(source=source, **bound)
        self.generation_tokens = counter("vllm:generation_tokens", "Generated tokens.")
        success = Counter(
            "vllm:request_success",
            "Finished requests by finish reason.",
            labels + ("finished_reason",),
            registry=reg,
        )
        self.success = {
            reason: success.labels(finished_reason=reason, **bound)
            for reason in ("stop", "length", "abort", "error", "repetition")
        }
        rejections = Counter(
            "vllm:admission_rejections",
            "Admission attempts rejected by a queue limit, by reason.",
            ("model_name", "reason"),
            registry=reg,
        )
        self.rejected_queue_full = rejections.labels(model_name=model, reason="max_num_queued_reqs")
        rejections.labels(model_name=model, reason="max_num_queued_tokens")

        tokens = token_buckets(config.max_model_len)
        self.h_prompt = histogram(
            "vllm:request_prompt_tokens", "Prompt length of finished requests.", tokens
        )
        self.h_generation = histogram(
            "vllm:request_generation_tokens", "Output length of finished requests.", tokens
        )
        self.h_iteration = histogram(
            "vllm:iteration_tokens_total", "Tokens per engine step.", ITERATION_TOKEN_BUCKETS
        )
        self.h_max_generation = histogram(
            "vllm:request_max_num_generation_tokens", "Maximum generation tokens requested.", tokens
        )
        self.h_params_n = histogram(
            "vllm:request_params_n", "The n request parameter.", PARAMS_N_BUCKETS
        )
        self.h_params_max_tokens = histogram(
            "vllm:request_params_max_tokens", "The max_tokens request parameter, when set.", tokens
        )
        self.h_ttft = histogram(
            "vllm:time_to_first_token_seconds", "Time to first token in seconds.", TTFT_BUCKETS
        )
        self.h_itl = histogram(
            "vllm:inter_token_latency_seconds", "Inter-token latency in seconds.", ITL_BUCKETS
        )
        self.h_tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Per request: decode time per output token in seconds.",
            ITL_BUCKETS,
        )
        self.h_e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "End-to-end request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.h_queue = histogram(
            "vllm:request_queue_time_seconds",
            "Time spent waiting in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.h_inference = histogram(
            "vllm:request_inference_time_seconds",
            "Time spent running in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.h_prefill = histogram(
            "vllm:request_prefill_time_seconds",
            "Scheduled to first token in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.h_decode = histogram(
            "vllm:request_decode_time_seconds",
            "First to last token in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.h_preemptions = histogram(
            "vllm:request_num_preemptions", "Preemptions per finished request.", PREEMPTION_BUCKETS
        )
        self.h_kv_computed = histogram(
            "vllm:request_prefill_kv_computed_tokens",
            "Prompt tokens computed (prompt minus cached) per request.",
            tokens,
        )
        # (running adapters, waiting adapters) -> Unix time it was last current. Empty
        # until the first engine step, as in vLLM (its series come from step stats).
        self.lora_info: dict[tuple[str, str], float] = {}

    # -- engine events -------------------------------------------------------

    def on_request(self, max_tokens: int | None, max_generation: int, n: int) -> None:
        self.h_params_n.observe(n)
        self.h_max_generation.observe(max_generation)
        if max_tokens is not None:
            self.h_params_max_tokens.observe(max_tokens)

    def on_rejected(self) -> None:
        self.rejected_queue_full.inc()

    def on_admitted(self, request, queried: int, hits: int, first: bool) -> None:
        self.prefix_queries.inc(queried)
        self.prefix_hits.inc(hits)
        if self.config.legacy_metrics:
            self.legacy_queries.inc(queried)
            self.legacy_hits.inc(hits)
        if first:
            self.prompt_tokens.inc(request.prompt_len)
            self.prompt_computed.inc(request.computed_prompt_tokens)
            self.prompt_cache_hit.inc(request.cached_tokens)
            self.prompt_cached.inc(request.cached_tokens)
            self.prompt_cached_device.inc(request.cached_tokens)

    def on_preempted(self) -> None:
        self.preemptions.inc()

    def on_first_token(self, request, now: float) -> None:
        self.h_ttft.observe(now - request.arrival)

    def on_token(self, gap: float) -> None:
        self.h_itl.observe(gap)

    def on_scheduled(self) -> None:
        # vLLM refreshes the LoRA series from every scheduling pass's stats,
        # including passes that only defer requests.
        if self.config.loras:
            self._touch_lora_info()

    def on_step(self, tokens: int, emitted: int) -> None:
        self.h_iteration.observe(tokens)
        self.generation_tokens.inc(emitted)
        if self.config.loras:
            self._touch_lora_info()

    def on_finished(self, request, now: float) -> None:
        self.success[request.finish_reason].inc()
        if request.scheduled_at is None:
            return  # aborted while waiting: vLLM records no timing for it
        computed = request.computed_prompt_tokens
        self.h_prompt.observe(request.prompt_len)
        self.h_generation.observe(request.output_tokens)
        self.h_kv_computed.observe(computed)
        self.h_preemptions.observe(request.preemptions)
        self.h_e2e.observe(now - request.arrival)
        self.h_queue.observe(request.scheduled_at - request.arrival)
        self.h_inference.observe(now - request.scheduled_at)
        if request.first_token_at is not None:
            self.h_prefill.observe(request.first_token_at - request.scheduled_at)
            self.h_decode.observe(now - request.first_token_at)
            if request.output_tokens > 1:
                self.h_tpot.observe((now - request.first_token_at) / (request.output_tokens - 1))

    def _touch_lora_info(self) -> None:
        # vLLM 0.33 writes the same list into both labels: adapters with any
        # running or waiting request (docs/simulator.md, "Metrics").
        running, waiting = self.engine.adapters_in_flight()
        names = ",".join(dict.fromkeys(running + waiting))
        self.lora_info[(names, names)] = time.time()

    # -- exposition ----------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineGauges:
    """Gauges read from the engine at scrape time."""

    def __init__(self, metrics: SimMetrics) -> None:
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        metrics = self.metrics
        engine = metrics.engine
        config = metrics.config
        names = ["model_name", "engine"]
        values = [config.model, "0"]
        running = len(engine.running) if engine else 0
        waiting = len(engine.waiting) if engine else 0
        deferred = engine.deferred_waiting() if engine else 0
        usage = engine.kv.usage if engine else 0.0

        def gauge(name: str, doc: str, value: float, extra: dict | None = None):
            family = GaugeMetricFamily(name, doc, labels=names + list(extra or {}))
            family.add_metric(values + list((extra or {}).values()), value)
            return family

        yield gauge("vllm:num_requests_running", "Requests in model execution batches.", running)
        yield gauge("vllm:num_requests_waiting", "Requests waiting to be processed.", waiting)
        by_reason = GaugeMetricFamily(
            "vllm:num_requests_waiting_by_reason",
            "Waiting requests by reason (capacity or deferred).",
            labels=names + ["reason"],
        )
        by_reason.add_metric(values + ["capacity"], waiting - deferred)
        by_reason.add_metric(values + ["deferred"], deferred)
        yield by_reason
        sleep = GaugeMetricFamily(
            "vllm:engine_sleep_state",
            "Engine sleep state (always awake here).",
            labels=names + ["sleep_state"],
        )
        for state, value in (("awake", 1), ("weights_offloaded", 0), ("discard_all", 0)):
            sleep.add_metric(values + [state], value)
        yield sleep
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage; 1 means 100 percent.", usage)
        if config.legacy_metrics:
            yield gauge(
                "vllm:gpu_cache_usage_perc", "Legacy name of vllm:kv_cache_usage_perc.", usage
            )
        if config.loras:
            info = GaugeMetricFamily(
                "vllm:lora_requests_info",
                "Running stats on LoRA requests.",
                labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
            )
            for (running_names, waiting_names), stamp in metrics.lora_info.items():
                info.add_metric([str(config.max_loras), running_names, waiting_names], stamp)
            yield info
        cache_labels = _cache_config_labels(config)
        cache = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the engine's CacheConfig.",
            labels=list(cache_labels),
        )
        cache.add_metric(list(cache_labels.values()), 1.0)
        yield cache


def _cache_config_labels(config: SimConfig) -> dict[str, str]:
    """vLLM 0.33's CacheConfig fields as labels, with this simulator's values."""
    tokens = config.num_gpu_blocks * config.block_size
    labels = {
        "_block_size_resolved": "True",
        "block_size": str(config.block_size),
        "cache_dtype": "auto",
        "cache_hit_alignment_tokens": "None",
        "effective_attention_block_size": str(config.block_size),
        "enable_mamba_shared_prefix_checkpoint": "False",
        "enable_prefix_caching": "True",
        "engine": "0",
        "gpu_memory_utilization": "0.92",
        "hash_block_size": "None",
        "is_attention_free": "False",
        "kv_cache_dtype_skip_layers": "[]",
        "kv_cache_layout": "None",
        "kv_cache_max_concurrency": str(tokens / config.max_model_len),
        "kv_cache_memory_bytes": "None",
        "kv_cache_size_tokens": str(tokens),
        "kv_offloading_backend": "native",
        "kv_offloading_size": "None",
        "kv_sharing_fast_prefill": "False",
        "mamba_block_size": "None",
        "mamba_cache_dtype": "auto",
        "mamba_cache_mode": "none",
        "mamba_page_size_padded": "None",
        "mamba_ssm_cache_dtype": "auto",
        "num_cpu_blocks": "None",
        "num_gpu_blocks": str(config.num_gpu_blocks),
        "num_gpu_blocks_override": "None",
        "prefix_cache_retention_interval": "0",
        "prefix_caching_hash_algo": "sha256",
        "prefix_match_unit": "None",
        "replayssm_buffer_len": "16",
        "simple_cpu_offload_num_blocks": "None",
        "skip_page_size_padded": "None",
        "sliding_window": "None",
        "swa_bounded_replay": "True",
        "use_kda_recoverssm": "False",
        "use_replayssm": "False",
        "user_specified_block_size": "False",
    }
    return labels
