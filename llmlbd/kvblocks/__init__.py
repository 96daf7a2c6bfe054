"""Prompt -> KV-cache block hashes exactly as vLLM computes them.

``hashing`` is a leaf (standard library only) that the simulator may import too;
``tokenize``, ``remote`` and ``cache`` turn a request into the token ids vLLM
will hash (the model's own tokenizer and chat template, or the backend's
``/tokenize``), and need the ``precise`` extra: ``pip install 'llmlbd[precise]'``.
"""
