"""A zero-delay OpenAI-shaped backend for proxy benchmarks: as cheap per request as Python allows.

One asyncio `Protocol` per process (no streams, no framework), HTTP/1.1
keep-alive only. It answers `POST .../chat/completions` and `.../completions`
with a fixed JSON body, or, when the body says `"stream": true`, with
`--chunks` SSE events (each in its own chunked-encoding write, as a server
generating tokens back to back would) and `data: [DONE]`. The GET routes the
routers' health checks and collectors read answer too: `/health`,
`/health_generate`, `/v1/models`, `/metrics` (vLLM gauges, all zero),
`/get_load`, `/get_server_info`, `/server_info`, `/get_model_info`,
`/model_info`, `/version`; anything else is 404. Nothing else is modelled:
this is the "infinitely fast model server" that shows a proxy's own cost;
use `llmlbd sim` for realistic timing.

The one zero-delay backend of the benchmarks (bench/overhead.py, bench/peers.py
through it, bench/hotpath_profile.py): one process serves about 20-30k plain
requests/s on this machine.

Run: python bench/zero_backend.py --port 8001 [--name b1] [--model sim-llama] [--chunks 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json

MAX_HEAD = 64 * 1024


def _response(status: str, content_type: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Replies:
    """Every reply pre-rendered once: the server only matches and writes."""

    def __init__(self, name: str, model: str, chunks: int) -> None:
        completion = {
            "id": "chatcmpl-zero",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "system_fingerprint": name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hello " * 8},
                    "finish_reason": "length",
                }
            ],
            "usage": {"prompt_tokens": 8, "completion_tokens": 8, "total_tokens": 16},
        }
        self.plain = _response("200 OK", "application/json", json.dumps(completion).encode())
        self.health = _response("200 OK", "text/plain", b"")
        models = {"object": "list", "data": [{"id": model, "object": "model", "owned_by": name}]}
        self.models = _response("200 OK", "application/json", json.dumps(models).encode())
        self.metrics = _response(
            "200 OK",
            "text/plain; version=0.0.4",
            (
                f'vllm:num_requests_running{{model_name="{model}"}} 0\n'
                f'vllm:num_requests_waiting{{model_name="{model}"}} 0\n'
                f'vllm:kv_cache_usage_perc{{model_name="{model}"}} 0\n'
            ).encode(),
        )
        self.not_found = _response("404 Not Found", "application/json", b'{"error":"not found"}')
        info = json.dumps({"model_path": model, "served_model_name": model}).encode()
        self.gets = {
            b"/health": self.health,
            b"/health_generate": self.health,
            b"/v1/models": self.models,
            b"/metrics": self.metrics,
            b"/get_load": _response("200 OK", "application/json", b'{"load": 0}'),
            b"/get_server_info": _response("200 OK", "application/json", info),
            b"/server_info": _response("200 OK", "application/json", info),
            b"/get_model_info": _response("200 OK", "application/json", info),
            b"/model_info": _response("200 OK", "application/json", info),
            b"/version": _response("200 OK", "application/json", b'{"version": "0.33.0"}'),
        }
        self.stream_head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        events = []
        for index in range(chunks):
            delta = {
                "id": "chatcmpl-zero",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{"index": 0, "delta": {"content": f"t{index} "}}],
            }
            events.append(_chunk(b"data: " + json.dumps(delta).encode() + b"\n\n"))
        events.append(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        self.stream_events = events


class ZeroServer(asyncio.Protocol):
    def __init__(self, replies: Replies) -> None:
        self.replies = replies
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self._one_request():
            pass

    def _one_request(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end == -1:
            if len(self.buf) > MAX_HEAD:
                self._close()
            return False
        head = bytes(self.buf[:end]).lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at != -1:
            line_end = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : line_end if line_end != -1 else None])
        if len(self.buf) < end + 4 + length:
            return False
        body = bytes(self.buf[end + 4 : end + 4 + length])
        del self.buf[: end + 4 + length]
        self._answer(head.split(b" ", 2)[1], body)
        return True

    def _answer(self, target: bytes, body: bytes) -> None:
        transport, replies = self.transport, self.replies
        if transport is None or transport.is_closing():
            return  # the client left (a load generator stopping): nothing to answer
        path = target.split(b"?", 1)[0]
        if path.endswith(b"completions"):
            if b'"stream": true' in body or b'"stream":true' in body:
                transport.write(replies.stream_head)
                for event in replies.stream_events:
                    transport.write(event)
            else:
                transport.write(replies.plain)
        else:
            transport.write(replies.gets.get(path, replies.not_found))

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(host: str, port: int, replies: Replies) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ZeroServer(replies), host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="zero")
    parser.add_argument("--model", default="sim-llama")
    parser.add_argument(
        "--chunks", "--tokens", type=int, default=16, help="SSE events per streamed answer"
    )
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.host, args.port, Replies(args.name, args.model, args.chunks)))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
