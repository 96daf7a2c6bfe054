"""Everything one simulated server is configured with, resolved from flags and a profile."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmlbd.sim.profiles import DEFAULT_PROFILE, PROFILES, GpuProfile

DEFAULT_MODEL = "sim-llama"


@dataclass
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 8100
    name: str = "sim-0"
    model: str = DEFAULT_MODEL
    loras: dict[str, str] = field(default_factory=dict)  # adapter name -> path
    max_loras: int = 1
    lora_load_s: float = 0.1
    profile: GpuProfile = field(default_factory=lambda: PROFILES[DEFAULT_PROFILE])
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    max_num_queued_reqs: int = 1000
    num_gpu_blocks: int | None = None
    block_size: int | None = None
    max_model_len: int | None = None
    mean_output_tokens: int = 128
    time_scale: float = 1.0
    legacy_metrics: bool = False
    prompt_tokens_details: bool = False
    fault: str = ""
    refuse_connections: bool = False
    health_flap_s: float = 0.0
    kv_events: Any = None  # kv_events.KVEventsConfig when --kv-events-config enables events
    tokenizer_dir: str | None = None  # a Hugging Face tokenizer directory (--tokenizer)
    get_load_format: str = "object"  # /get_load shape: "object" or "array" (peer_api.py)
    model_path: str = ""  # reported as model_path (--model-path); peer_api.py

    def __post_init__(self) -> None:
        # A profile sets the engine's limits; explicit flags win.
        if self.max_num_seqs is None:
            self.max_num_seqs = self.profile.max_num_seqs
        if self.max_num_batched_tokens is None:
            self.max_num_batched_tokens = self.profile.max_num_batched_tokens
        if self.num_gpu_blocks is None:
            self.num_gpu_blocks = self.profile.num_gpu_blocks
        if self.block_size is None:
            self.block_size = self.profile.block_size
        if self.max_model_len is None:
            self.max_model_len = self.profile.max_model_len
        if self.time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {self.time_scale}")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be at least 1")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
