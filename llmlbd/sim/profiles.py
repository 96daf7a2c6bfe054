"""Named GPU profiles: how long one engine step takes, and how big the KV cache is.

A vLLM engine step runs one forward pass over every scheduled token: one per
decoding sequence plus the prompt chunks being prefilled. Its duration is
modelled as

    step = step_overhead_s
           + per_token_s * (decode sequences + prefill tokens)
           + per_context_ktoken_s * (context tokens of decoding sequences / 1000)

The overhead is reading the weights once (decode is memory-bound), the
per-token term is the matmul compute each scheduled token adds, and the
context term is attention reading each sequence's KV cache. Defaults and
their sources are in docs/simulator.md ("GPU profiles").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuProfile:
    name: str
    description: str
    step_overhead_s: float
    per_token_s: float
    per_context_ktoken_s: float
    # API-server work before the engine sees a request (HTTP parse, chat template,
    # tokenization); paid once per request, outside the engine's batches.
    frontend_overhead_s: float
    num_gpu_blocks: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int

    def step_time(self, scheduled_tokens: int, decode_context_tokens: int) -> float:
        return (self.step_overhead_s
                + self.per_token_s * scheduled_tokens
                + self.per_context_ktoken_s * decode_context_tokens / 1000.0)


PROFILES: dict[str, GpuProfile] = {
    profile.name: profile
    for profile in (
        GpuProfile(
            name="h100-llama3-8b",
            description="Llama-3.1-8B-Instruct, BF16, one H100 SXM 80GB, vLLM V1 defaults",
            step_overhead_s=0.0065,
            per_token_s=0.000040,
            per_context_ktoken_s=0.000051,
            frontend_overhead_s=0.010,
            num_gpu_blocks=28_042,
            max_num_seqs=256,
            max_num_batched_tokens=8192,
            max_model_len=131_072,
        ),
        GpuProfile(
            name="a100-llama3-8b",
            description="Llama-3.1-8B-Instruct, BF16, one A100 SXM 80GB, vLLM V1 defaults",
            step_overhead_s=0.0105,
            per_token_s=0.000128,
            per_context_ktoken_s=0.000085,
            frontend_overhead_s=0.010,
            num_gpu_blocks=26_000,
            max_num_seqs=256,
            max_num_batched_tokens=8192,
            max_model_len=131_072,
        ),
        GpuProfile(
            name="l4-llama3-8b",
            description="Llama-3.1-8B-Instruct, BF16, one L4 24GB (a small, busy GPU), vLLM V1 defaults",
            step_overhead_s=0.070,
            per_token_s=0.000265,
            per_context_ktoken_s=0.000570,
            frontend_overhead_s=0.010,
            num_gpu_blocks=2_200,
            max_num_seqs=256,
            max_num_batched_tokens=8192,
            max_model_len=32_768,
        ),
    )
}

DEFAULT_PROFILE = "h100-llama3-8b"
