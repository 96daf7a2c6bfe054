"""A simulated vLLM server (``llmlbd sim``) for the demo, the tests and the benchmarks.

It speaks vLLM's OpenAI-compatible API and exposes vLLM V1's ``/metrics``
page, while an engine model (continuous batching, a paged KV cache with
automatic prefix caching, LoRA slots) decides when each token comes out.
See docs/simulator.md. Importing this package starts nothing and patches
nothing: the server modules import gevent, so only the sim process loads them.
"""
