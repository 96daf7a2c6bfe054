"""A zero-delay OpenAI-compatible backend for proxy-overhead runs (stdlib asyncio, one process).

`llmlbd sim` spends about a millisecond of CPU per request (its engine, its
tokenizer, prometheus_client), so it caps a proxy benchmark near a thousand
requests per second per server; this server answers at once from prebuilt
bytes, keeps connections alive, and serves tens of thousands of requests per
second, so that the router, not the backend, is what wrk measures.

    python -m bench.peerbench.zero_backend --port 8001 [--tokens 16]

Routes: POST /v1/chat/completions (JSON, or SSE with "stream": true: TOKENS
content events, a usage event, [DONE]); GET /health, /health_generate,
/v1/models, /metrics (vLLM gauges, all zero), /get_load, /get_server_info,
/get_model_info, /version. Anything else: 404.
"""

from __future__ import annotations

import argparse
import asyncio
import json

MODEL = "sim-llama"


def _response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _prebuilt(tokens: int) -> dict[str, bytes]:
    message = {"role": "assistant", "content": " tok" * tokens}
    plain = {
        "id": "chatcmpl-zero",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens},
    }
    chunk = {"id": "chatcmpl-zero", "object": "chat.completion.chunk", "created": 0, "model": MODEL}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": {"content": " tok"}, "finish_reason": None}]}
    ] * tokens
    events.append({**chunk, "choices": [], "usage": plain["usage"]})
    sse = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    sse += b"data: [DONE]\n\n"
    stream_head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    stream = stream_head + f"{len(sse):x}\r\n".encode() + sse + b"\r\n0\r\n\r\n"
    models = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "vllm"}]}
    metrics = (
        f'vllm:num_requests_running{{model_name="{MODEL}"}} 0.0\n'
        f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 0.0\n'
        f'vllm:kv_cache_usage_perc{{model_name="{MODEL}"}} 0.0\n'
    ).encode()
    info = json.dumps({"model_path": MODEL, "served_model_name": MODEL}).encode()
    return {
        "plain": _response("200 OK", json.dumps(plain).encode()),
        "stream": stream,
        "ok": _response("200 OK", b""),
        "models": _response("200 OK", json.dumps(models).encode()),
        "metrics": _response("200 OK", metrics, "text/plain; version=0.0.4"),
        "load": _response("200 OK", b'{"load": 0}'),
        "info": _response("200 OK", info),
        "version": _response("200 OK", b'{"version": "0.33.0"}'),
        "missing": _response("404 Not Found", b'{"detail":"Not Found"}'),
    }


GETS = {
    "/health": "ok",
    "/health_generate": "ok",
    "/v1/models": "models",
    "/metrics": "metrics",
    "/get_load": "load",
    "/get_server_info": "info",
    "/server_info": "info",
    "/get_model_info": "info",
    "/model_info": "info",
    "/version": "version",
}


async def _serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, replies: dict[str, bytes]
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, path, _ = lines[0].decode("latin-1").split(" ", 2)
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            body = await reader.readexactly(length) if length else b""
            path = path.split("?", 1)[0]
            if method == "POST" and path == "/v1/chat/completions":
                streaming = b'"stream": true' in body or b'"stream":true' in body
                writer.write(replies["stream" if streaming else "plain"])
            elif method == "GET" and path in GETS:
                writer.write(replies[GETS[path]])
            else:
                writer.write(replies["missing"])
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def serve(port: int, tokens: int) -> None:
    replies = _prebuilt(tokens)
    server = await asyncio.start_server(
        lambda r, w: _serve_connection(r, w, replies), "127.0.0.1", port, backlog=4096
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="zero-delay OpenAI-compatible backend")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=16, help="tokens per answer")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port, args.tokens))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
