"""A small, fast OpenAI-compatible HTTP server for proxy tests and the proxy benchmark.

Real sockets, real HTTP: it answers chat/completions (JSON or SSE), models,
health, tokenize, and reports how many requests it is serving right now
(GET /stub/inflight), which lets tests compare llmlbd's counts with the truth.
Behaviour per request comes from headers:
  x-stub-delay      seconds before the response headers
  x-stub-chunks     number of SSE chunks (default 8)
  x-stub-interval   seconds between SSE chunks (default 0)
  x-stub-status     answer with this status and an error body
  x-stub-abort-after  close the connection after this many SSE chunks
Run: python -m tests.stub_backend --port P [--name N] [--model M]
"""

from __future__ import annotations

from gevent import monkey

if __name__ == "__main__":
    monkey.patch_all()

import argparse
import json
import socket
import time

import gevent
from gevent.pywsgi import WSGIServer


class Stub:
    def __init__(self, name: str, model: str) -> None:
        self.name = name
        self.model = model
        self.inflight = 0
        self.served = 0
        self.seen_bodies: list[bytes] = []

    def __call__(self, environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/health":
            start_response("200 OK", [("Content-Length", "0")])
            return [b""]
        if path == "/stub/inflight":
            return self._json(
                start_response, 200, {"inflight": self.inflight, "served": self.served}
            )
        if path == "/stub/last_body":
            body = self.seen_bodies[-1] if self.seen_bodies else b""
            start_response(
                "200 OK",
                [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))],
            )
            return [body]
        if path.endswith("/stub/headers"):
            headers = {
                k[5:].lower().replace("_", "-"): v
                for k, v in environ.items()
                if k.startswith("HTTP_")
            }
            return self._json(start_response, 200, headers)
        if path == "/v1/models":
            return self._json(
                start_response,
                200,
                {
                    "object": "list",
                    "data": [
                        {
                            "id": self.model,
                            "object": "model",
                            "owned_by": self.name,
                            "root": self.model,
                            "parent": None,
                        }
                    ],
                },
            )
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        self.seen_bodies = self.seen_bodies[-1:] + [raw]
        self.inflight += 1
        self.served += 1
        try:
            return self._generate(environ, start_response, raw)
        except BaseException:
            self.inflight -= 1
            raise

    def _json(self, start_response, status, payload):
        body = json.dumps(payload).encode()
        start_response(
            f"{status} X",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]

    def _generate(self, environ, start_response, raw):
        delay = float(environ.get("HTTP_X_STUB_DELAY", 0))
        if delay:
            gevent.sleep(delay)
        status = environ.get("HTTP_X_STUB_STATUS")
        if status:
            self.inflight -= 1
            return self._json(
                start_response,
                int(status),
                {"error": {"message": f"stub error {status}", "type": "stub", "code": int(status)}},
            )
        try:
            request = json.loads(raw) if raw else {}
        except ValueError:
            request = {}
        if environ["PATH_INFO"] == "/tokenize":
            self.inflight -= 1
            return self._json(start_response, 200, {"tokens": [1, 2, 3], "count": 3})
        if request.get("stream"):
            return self._stream(environ, start_response, request)
        self.inflight -= 1
        return self._json(
            start_response,
            200,
            {
                "id": "cmpl-stub",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.get("model", self.model),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hello"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            },
        )

    def _stream(self, environ, start_response, request):
        chunks = int(environ.get("HTTP_X_STUB_CHUNKS", 8))
        interval = float(environ.get("HTTP_X_STUB_INTERVAL", 0))
        abort_after = environ.get("HTTP_X_STUB_ABORT_AFTER")
        start_response(
            "200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
        )
        stub = self

        class Body:
            def __init__(self):
                self.done = False

            def __iter__(self):
                for index in range(chunks):
                    if abort_after is not None and index >= int(abort_after):
                        # Drop the connection mid-stream, as a crashing server would.
                        raise ConnectionAbortedError("stub abort")
                    event = {
                        "id": "chatcmpl-stub",
                        "object": "chat.completion.chunk",
                        "model": request.get("model", stub.model),
                        "choices": [
                            {"index": 0, "delta": {"content": f"t{index} "}, "finish_reason": None}
                        ],
                    }
                    yield b"data: " + json.dumps(event).encode() + b"\n\n"
                    if interval:
                        gevent.sleep(interval)
                final = {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion.chunk",
                    "model": request.get("model", stub.model),
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                }
                yield b"data: " + json.dumps(final).encode() + b"\n\n"
                yield b"data: [DONE]\n\n"
                self.done = True

            def close(self):
                stub.inflight -= 1

        return Body()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="stub")
    parser.add_argument("--model", default="stub-model")
    args = parser.parse_args()
    # TCP_NODELAY on the listener (inherited by accepted sockets on Linux): without it,
    # Nagle and delayed ACKs add 40 ms to responses written in two parts.
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(1024)
    server = WSGIServer(listener, Stub(args.name, args.model), log=None, error_log=None)
    server.serve_forever()


if __name__ == "__main__":
    main()
