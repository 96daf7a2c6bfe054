"""llmlbd: an LLM-aware load balancer for self-hosted vLLM and SGLang fleets."""

__version__ = "0.1.0"
