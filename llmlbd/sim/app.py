"""The WSGI application: vLLM's HTTP routes in front of the simulated engine."""

from __future__ import annotations

import hashlib
import json
import time
import uuid

import gevent

from llmlbd.sim import debug
from llmlbd.sim.answers import plan_answer
from llmlbd.sim.config import SimConfig
from llmlbd.sim.engine import Engine, QueueFull, SimRequest
from llmlbd.sim.errors import SimHTTPError
from llmlbd.sim.faults import FAULT_HEADER, Fault, HealthSwitch, parse_fault
from llmlbd.sim.kvcache import prompt_hashes
from llmlbd.sim.metrics import CONTENT_TYPE, SimMetrics
from llmlbd.sim.peer_api import peer_routes
from llmlbd.sim.protocol import (
    parse_inference,
    prompt_ids_of,
    prompt_of,
    read_json,
    resolve_model,
)
from llmlbd.sim.responses import DONE, StreamWriter, completion_body, usage_of
from llmlbd.sim.tokenizer import VOCAB_SIZE, detokenize, tokenize

__all__ = ["SimApp", "DropConnection"]

JSON = [("Content-Type", "application/json")]
_INFERENCE_PATHS = ("/v1/chat/completions", "/v1/completions")
# The sampling fields a render echoes back (vLLM's SamplingParams, as the request set them).
_SAMPLING_KEYS = (
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "stop",
    "seed",
    "ignore_eos",
)
SSE = [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache")]


class DropConnection(Exception):
    """Close the client's connection at once, without (the rest of) a response."""


class SimApp:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.metrics = SimMetrics(config)
        self.engine = Engine(config, self.metrics)
        self.metrics.engine = self.engine
        self.fault = parse_fault(config.fault)
        self.health = HealthSwitch(config.health_flap_s)
        self.started = int(time.time())
        self.requests_total = 0
        self.rejected_total = 0
        self.refuse_for = None  # set by the server: stop listening for N seconds
        self.kv_events = None
        if config.kv_events is not None:
            from llmlbd.sim.kv_events import KVEventPublisher

            self.kv_events = KVEventPublisher(config.kv_events, config.block_size)
            self.engine.kv.listener = self.kv_events
            self.engine.kv_events = self.kv_events
        self.routes = {
            ("GET", "/health"): self.health_route,
            ("GET", "/v1/models"): self.models,
            ("GET", "/version"): lambda environ: (
                200,
                JSON,
                json.dumps({"version": "0.33.0"}).encode(),
            ),
            ("GET", "/metrics"): lambda environ: (
                200,
                [("Content-Type", CONTENT_TYPE)],
                self.metrics.render(),
            ),
            ("GET", "/kv_event_sources"): self.kv_event_sources,
            ("POST", "/tokenize"): self.tokenize_route,
            ("POST", "/detokenize"): self.detokenize_route,
            ("POST", "/v1/chat/completions/render"): lambda environ: self.render_route(
                environ, "chat"
            ),
            ("POST", "/v1/completions/render"): lambda environ: self.render_route(
                environ, "completion"
            ),
            ("POST", "/v1/embeddings"): self.embeddings,
            ("POST", "/reset_prefix_cache"): self.reset_prefix_cache,
            ("GET", "/debug/state"): lambda environ: debug.state(self),
            ("POST", "/debug/cache_match"): lambda environ: debug.cache_match(
                self, read_json(environ)
            ),
            ("POST", "/debug/faults"): lambda environ: debug.faults(self, read_json(environ)),
        }
        self.routes.update(peer_routes(self))

    def __call__(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "/")
        try:
            if method == "POST" and path in _INFERENCE_PATHS:
                return self.inference(
                    environ, start_response, "chat" if "chat" in path else "completion"
                )
            handler = self.routes.get((method, path))
            if handler is None:
                known = path in _INFERENCE_PATHS or any(p == path for _, p in self.routes)
                # FastAPI's own answers, not vLLM's error body.
                status, headers, body = (
                    (405, JSON, b'{"detail":"Method Not Allowed"}')
                    if known
                    else (404, JSON, b'{"detail":"Not Found"}')
                )
            else:
                status, headers, body = handler(environ)
        except SimHTTPError as exc:
            status, headers, body = exc.status, JSON, exc.body()
        start_response(_status(status), headers + [("Content-Length", str(len(body)))])
        return [body]

    # -- plain routes --------------------------------------------------------

    def health_route(self, environ):
        return (200 if self.health.healthy() else 503), [], b""

    def models(self, environ):
        config = self.config
        cards = [_model_card(config.model, config.model, None, config.max_model_len, self.started)]
        cards += [
            _model_card(name, path, config.model, None, self.started)
            for name, path in config.loras.items()
        ]
        return 200, JSON, json.dumps({"object": "list", "data": cards}).encode()

    def kv_event_sources(self, environ):
        """vLLM's map of data-parallel rank -> KVEventsConfig ({} when events are off)."""
        sources = {} if self.kv_events is None else {"0": self.kv_events.config.as_json()}
        return 200, JSON, json.dumps(sources).encode()

    def prompt_hashes(self, parsed) -> list[int]:
        """The KV-cache block hashes of a parsed request's prompt."""
        config = self.config
        return prompt_hashes(
            parsed.prompt_ids,
            config.block_size,
            config.model,
            parsed.lora,
            parsed.cache_salt,
            vllm_hashes=self.kv_events is not None,
        )

    def tokenize_route(self, environ):
        body = read_json(environ)
        resolve_model(self.config, body.get("model"))
        kind = "chat" if "messages" in body else "completion"
        ids = prompt_ids_of(self.config, kind, body, prompt_of(kind, body))
        return (
            200,
            JSON,
            json.dumps(
                {
                    "count": len(ids),
                    "max_model_len": self.config.max_model_len,
                    "tokens": ids,
                    "token_strs": None,
                }
            ).encode(),
        )

    def render_route(self, environ, kind: str):
        """vLLM's render routes: the request as the engine would receive it, without running it.

        Chat answers one ``{"request_id", "token_ids", "features", "sampling_params",
        "model"}`` object, completions a list of them (vLLM renders a batch of
        prompts); the ids are those the engine itself would prefill.
        """
        body = read_json(environ)
        model, _ = resolve_model(self.config, body.get("model"))
        ids = prompt_ids_of(self.config, kind, body, prompt_of(kind, body))
        rendered = {
            "request_id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}",
            "token_ids": ids,
            "features": None,
            "sampling_params": {
                key: body[key] for key in _SAMPLING_KEYS if body.get(key) is not None
            },
            "model": model,
        }
        return 200, JSON, json.dumps(rendered if kind == "chat" else [rendered]).encode()

    def detokenize_route(self, environ):
        body = read_json(environ)
        resolve_model(self.config, body.get("model"))
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and 0 <= t < VOCAB_SIZE for t in tokens
        ):
            raise SimHTTPError(
                400, "tokens must be a list of token ids", param="tokens", error_type="Bad Request"
            )
        return 200, JSON, json.dumps({"prompt": detokenize(tokens)}).encode()

    def embeddings(self, environ):
        body = read_json(environ)
        model, _ = resolve_model(self.config, body.get("model"))
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise SimHTTPError(
                400,
                "input must be a string or a list of strings",
                param="input",
                error_type="Bad Request",
            )
        data, total = [], 0
        for index, text in enumerate(inputs):
            total += len(tokenize(text))
            digest = hashlib.sha256(text.encode()).digest()  # same text, same vector
            data.append(
                {
                    "index": index,
                    "object": "embedding",
                    "embedding": [round(byte / 127.5 - 1.0, 6) for byte in digest[:16]],
                }
            )
        return (
            200,
            JSON,
            json.dumps(
                {
                    "id": f"embd-{uuid.uuid4().hex}",
                    "object": "list",
                    "created": int(time.time()),
                    "model": model,
                    "data": data,
                    "usage": {
                        "prompt_tokens": total,
                        "total_tokens": total,
                        "completion_tokens": 0,
                        "prompt_tokens_details": None,
                    },
                }
            ).encode(),
        )

    def reset_prefix_cache(self, environ):
        self.engine.kv.reset()
        return 200, [], b""

    # -- inference -----------------------------------------------------------

    def inference(self, environ, start_response, kind: str):
        arrival = time.monotonic()
        self.requests_total += 1
        fault = self.fault
        header = environ.get(FAULT_HEADER)
        if header:
            try:
                fault = parse_fault(header, fault)
            except ValueError as exc:
                return self._error(start_response, SimHTTPError(400, str(exc), param="x-sim-fault"))
        if fault.stall_first_byte_s:
            gevent.sleep(fault.stall_first_byte_s)
        if fault.refuse:
            raise DropConnection()
        if fault.status:
            return self._error(
                start_response, SimHTTPError(fault.status, f"injected fault: status {fault.status}")
            )
        try:
            parsed = parse_inference(self.config, kind, read_json(environ))
            request, seed = self._plan(parsed, arrival)
            gevent.sleep(self.config.profile.frontend_overhead_s * self.config.time_scale)
            self.engine.submit(request)
        except SimHTTPError as exc:
            return self._error(start_response, exc)
        except QueueFull:
            self.rejected_total += 1
            self.metrics.on_rejected()
            return self._error(
                start_response,
                SimHTTPError(
                    503,
                    "The waiting queue is full (max_num_queued_reqs="
                    f"{self.config.max_num_queued_reqs}); retry on a different instance.",
                    error_type="Service Unavailable",
                ),
            )
        request_id = environ.get("HTTP_X_REQUEST_ID") or uuid.uuid4().hex
        response_id = ("chatcmpl-" if kind == "chat" else "cmpl-") + request_id
        if parsed.stream:
            write = start_response("200 OK", SSE)
            write(b"")  # headers now, as vLLM's streaming response does, before the first token
            return self._stream(
                request, parsed, StreamWriter(kind, response_id, parsed.model, seed), fault
            )
        return self._complete(start_response, request, parsed, response_id, seed, fault)

    def _plan(self, parsed, arrival: float) -> tuple[SimRequest, int]:
        config = self.config
        prompt_len = len(parsed.prompt_ids)
        output, reason, seed = plan_answer(
            parsed.prompt_text,
            config.mean_output_tokens,
            parsed.max_tokens,
            parsed.ignore_eos,
            config.max_model_len - prompt_len,
        )
        needed_blocks = -(-(prompt_len + output) // config.block_size)
        if needed_blocks > config.num_gpu_blocks:
            raise SimHTTPError(
                400,
                f"this request needs {needed_blocks} KV blocks; the server has "
                f"{config.num_gpu_blocks}",
                param="messages",
            )
        self.metrics.on_request(parsed.max_tokens, output, parsed.n)
        request = SimRequest(
            request_id=uuid.uuid4().hex,
            lora=parsed.lora,
            prompt_len=prompt_len,
            block_hashes=self.prompt_hashes(parsed),
            output_target=output,
            finish_reason_planned=reason,
            max_tokens_param=parsed.max_tokens,
            arrival=arrival,
            prompt_ids=parsed.prompt_ids if self.kv_events is not None else None,
            cache_salt=parsed.cache_salt,
        )
        return request, seed

    def _cached(self, request: SimRequest) -> int | None:
        return request.cached_tokens if self.config.prompt_tokens_details else None

    def _stream(self, request: SimRequest, parsed, writer: StreamWriter, fault: Fault):
        # Every token but the last goes out as a content chunk when the engine
        # makes it; the last one rides in the chunk that carries finish_reason.
        sent = 0
        drop_after = _drop_point(fault, request)
        try:
            while True:
                if request.finish_reason == "abort":
                    return  # the client is gone
                if request.finished:
                    ready = request.output_tokens - 1
                else:
                    ready = request.output_tokens
                    if ready == sent:
                        request.wakeup.clear()
                        request.wakeup.wait()
                        continue
                if drop_after is not None:
                    ready = min(ready, drop_after)
                if ready > sent or (request.finished and sent == 0):
                    if sent == 0:
                        yield writer.first().encode()
                    if fault.slow_tokens_s:
                        for index in range(sent, ready):
                            gevent.sleep(fault.slow_tokens_s)
                            yield writer.tokens(index, index + 1).encode()
                    elif ready > sent:
                        yield writer.tokens(sent, ready).encode()
                    sent = max(sent, ready)
                if drop_after is not None and sent >= drop_after:
                    self.engine.abort(request)
                    raise DropConnection()
                if request.finished and sent >= request.output_tokens - 1:
                    break
            if fault.slow_tokens_s:
                gevent.sleep(fault.slow_tokens_s)
            tail = writer.finish(request.finish_reason, request.output_tokens - 1)
            if parsed.include_usage:
                tail += writer.usage(
                    usage_of(request.prompt_len, request.output_tokens, self._cached(request))
                )
            yield tail.encode() + DONE
        finally:
            if not request.finished:
                self.engine.abort(request)

    def _complete(
        self, start_response, request: SimRequest, parsed, response_id: str, seed: int, fault: Fault
    ):
        drop_after = _drop_point(fault, request)
        while not request.finished:
            if drop_after is not None and request.output_tokens >= drop_after:
                self.engine.abort(request)
                raise DropConnection()
            request.wakeup.clear()
            request.wakeup.wait()
        if fault.slow_tokens_s:
            gevent.sleep(fault.slow_tokens_s * request.output_tokens)
        body = completion_body(
            parsed.kind,
            response_id,
            parsed.model,
            seed,
            request.output_tokens,
            request.finish_reason,
            usage_of(request.prompt_len, request.output_tokens, self._cached(request)),
        )
        start_response("200 OK", JSON + [("Content-Length", str(len(body)))])
        return [body]

    def _error(self, start_response, exc: SimHTTPError):
        body = exc.body()
        start_response(_status(exc.status), JSON + [("Content-Length", str(len(body)))])
        return [body]


def _drop_point(fault: Fault, request: SimRequest) -> int | None:
    if fault.close_mid_stream is None:
        return None
    # Before the last token, which would end the stream normally.
    last = max(request.output_target - 1, 0)
    if fault.close_mid_stream > 0:
        return min(fault.close_mid_stream, last)
    return min(max(1, request.output_target // 2), last)


def _model_card(
    model_id: str, root: str, parent: str | None, max_model_len: int | None, created: int
) -> dict:
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": root,
        "parent": parent,
        "max_model_len": max_model_len,
        "permission": [
            {
                "id": f"modelperm-{hashlib.md5(model_id.encode()).hexdigest()}",
                "object": "model_permission",
                "created": created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
    }


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _status(code: int) -> str:
    return f"{code} {_REASONS.get(code, 'Error')}"
