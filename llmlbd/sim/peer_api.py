"""The SGLang-style routes that peer routers call on a backend, so that none runs handicapped.

sglang-router and vllm-router (both descended from SGLang's gateway) ask their
workers for ``/get_server_info`` or ``/server_info``, ``/get_model_info`` or
``/model_info``, ``/get_load``, ``/health_generate`` and ``/flush_cache``. A
real vLLM answers some of these with 404; the simulator answers all of them,
from the engine's true state, so that a benchmark compares routing and not
which backend API a router happens to find.

``/get_load`` has two shapes: ``{"load": N}`` (vllm-router's power_of_two reads
it) and SGLang's per-DP-rank list (sglang-router 0.3.2 reads only that one and
turns the object into load -1); ``--get-load-format`` picks one.

sglang-router also loads a tokenizer from the ``model_path`` a worker reports and,
if that is no local directory, tries the HuggingFace hub. ``--tokenizer-dir``
writes a tiny word-level ``tokenizer.json`` there and reports the directory,
so no router reaches for the network.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmlbd.sim.app import SimApp

__all__ = ["LOAD_FORMATS", "peer_routes", "write_tokenizer_dir"]

JSON = [("Content-Type", "application/json")]
LOAD_FORMATS = ("object", "array")
Reply = tuple[int, list[tuple[str, str]], bytes]

# A few hundred words are enough: the router only needs a loadable tokenizer.
_VOCAB_TEXT = (
    "the of and to in is that for it as with was on be by this are or from at an which have "
    "not but had they one all were can there been if more when will would who so no out up "
    "into do time only could new about other than then its also two these may first any like "
    "now my such make over our even most after well where much should kernel cache block token "
    "router fleet latency budget river garden engine market ticket season planet museum harbor "
    "signal pattern theory archive lantern user system assistant"
)


def write_tokenizer_dir(directory: str) -> Path:
    """A minimal HuggingFace tokenizer (WordLevel, whitespace split) in *directory*."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    vocab = {"[UNK]": 0}
    for word in _VOCAB_TEXT.split():
        vocab.setdefault(word, len(vocab))
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": 0,
                "content": "[UNK]",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    }
    (path / "tokenizer.json").write_text(json.dumps(tokenizer))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"})
    )
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return path


def peer_routes(app: SimApp) -> dict[tuple[str, str], Callable[[dict[str, Any]], Reply]]:
    """The routes, keyed by (method, path), for SimApp's routing table."""
    routes: dict[tuple[str, str], Callable[[dict[str, Any]], Reply]] = {
        ("GET", "/get_load"): lambda environ: _json(_load(app)),
        ("GET", "/health_generate"): lambda environ: app.health_route(environ),
        ("POST", "/flush_cache"): lambda environ: _flush(app),
        ("GET", "/flush_cache"): lambda environ: _flush(app),
    }
    for path in ("/get_server_info", "/server_info"):
        routes[("GET", path)] = lambda environ: _json(_server_info(app))
    for path in ("/get_model_info", "/model_info"):
        routes[("GET", path)] = lambda environ: _json(_model_info(app))
    return routes


def _json(body: Any) -> Reply:
    return 200, JSON, json.dumps(body).encode()


def _flush(app: SimApp) -> Reply:
    app.engine.kv.reset()
    return 200, JSON, b'{"success": true, "message": "Cache flushed."}'


def _model_path(app: SimApp) -> str:
    return app.config.model_path or app.config.tokenizer_dir or app.config.model


def _load(app: SimApp) -> Any:
    engine = app.engine
    running, waiting = len(engine.running), len(engine.waiting)
    if app.config.get_load_format == "object":
        return {"load": running + waiting}
    tokens = engine.kv.used_blocks * engine.kv.block_size
    return [{"dp_rank": 0, "num_reqs": running, "num_waiting_reqs": waiting, "num_tokens": tokens}]


def _model_info(app: SimApp) -> dict[str, Any]:
    path = _model_path(app)
    return {
        "model_path": path,
        "tokenizer_path": path,
        "is_generation": True,
        "served_model_name": app.config.model,
        "has_image_understanding": False,
    }


def _server_info(app: SimApp) -> dict[str, Any]:
    config, kv = app.config, app.engine.kv
    return {
        "model_path": _model_path(app),
        "tokenizer_path": _model_path(app),
        "served_model_name": config.model,
        "max_total_num_tokens": kv.num_blocks * kv.block_size,
        "max_running_requests": config.max_num_seqs,
        "context_length": config.max_model_len,
        "page_size": kv.block_size,
        "dp_size": 1,
        "tp_size": 1,
        "version": "0.33.0-sim",
        "internal_states": [{"last_gen_throughput": 0.0, "load": len(app.engine.running)}],
    }
