"""Debug routes: the engine's true state, a prefix-cache oracle, run-time faults.

Benchmarks use these to compare what a router believed with what the server
really had (``/debug/state``), and to ask how many tokens of a prompt would
hit this server's cache right now (``/debug/cache_match``), without sending
the request.
"""

from __future__ import annotations

import json
import time

import gevent

from llmlbd.sim.errors import SimHTTPError
from llmlbd.sim.faults import parse_fault
from llmlbd.sim.protocol import parse_inference

JSON = [("Content-Type", "application/json")]


def state(app) -> tuple[int, list, bytes]:
    engine = app.engine
    config = app.config
    now = time.monotonic()
    kv = engine.kv
    running_adapters, waiting_adapters = engine.adapters_in_flight()
    body = {
        "name": config.name,
        "model": config.model,
        "profile": config.profile.name,
        "time_scale": config.time_scale,
        "num_requests_waiting": len(engine.waiting),
        "num_requests_deferred": engine.deferred_waiting(),
        "num_requests_running": len(engine.running),
        "max_num_seqs": config.max_num_seqs,
        "max_num_queued_reqs": config.max_num_queued_reqs,
        "kv_blocks_total": kv.num_blocks,
        "kv_blocks_used": kv.used_blocks,
        "kv_blocks_free": kv.free_blocks,
        "kv_cache_usage": kv.usage,
        "cached_block_hashes": kv.cached_blocks,
        "kv_evictions": kv.evictions,
        "block_size": kv.block_size,
        "prefix_cache_queries": engine.prefix_queries,
        "prefix_cache_hits": engine.prefix_hits,
        "preemptions": engine.preemptions,
        "steps": engine.steps,
        "busy_s": engine.busy_s,
        "requests_total": app.requests_total,
        "rejected_total": app.rejected_total,
        "loras_loaded": engine.loras.resident(now),
        "max_loras": config.max_loras,
        "lora_loads": engine.loras.loads,
        "lora_evictions": engine.loras.evictions,
        "running_lora_adapters": running_adapters,
        "waiting_lora_adapters": waiting_adapters,
        "fault": app.fault.__dict__,
        "health": app.health.describe(),
    }
    return 200, JSON, json.dumps(body).encode()


def cache_match(app, body: dict) -> tuple[int, list, bytes]:
    """Tokens of this chat or completion body's prompt that are cached now."""
    config = app.config
    kind = "chat" if "messages" in body else "completion"
    parsed = parse_inference(config, kind, body)
    hashes = app.prompt_hashes(parsed)
    blocks = app.engine.cache_match(hashes)
    return (
        200,
        JSON,
        json.dumps(
            {
                "prompt_tokens": len(parsed.prompt_ids),
                "matched_tokens": blocks * config.block_size,
                "matched_blocks": blocks,
                "prompt_blocks": len(hashes),
                "block_size": config.block_size,
            }
        ).encode(),
    )


def faults(app, body: dict) -> tuple[int, list, bytes]:
    """Change faults at run time: {"fault": SPEC, "health": "up|down|flap:S", "refuse_for_s": S}.

    ``refuse_for_s`` closes the listening socket for S seconds (new connections
    are refused, accepted ones carry on), then listens again: a backend that
    goes down and comes back.
    """
    try:
        if "fault" in body:
            app.fault = parse_fault(str(body["fault"] or ""))
        if "health" in body:
            mode, _, period = str(body["health"]).partition(":")
            app.health.set(mode, float(period) if period else 0.0)
        refuse_s = float(body.get("refuse_for_s") or 0)
        if refuse_s < 0:
            raise ValueError("refuse_for_s must not be negative")
    except (TypeError, ValueError) as exc:
        raise SimHTTPError(400, str(exc), param="body") from None
    if refuse_s and app.refuse_for is not None:
        # A moment later, so that this answer goes out first.
        gevent.spawn_later(0.05, app.refuse_for, refuse_s)
    return (
        200,
        JSON,
        json.dumps({"fault": app.fault.__dict__, "health": app.health.describe()}).encode(),
    )
