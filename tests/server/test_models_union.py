"""GET /v1/models through the worker's own upstream client, against real sockets."""

from __future__ import annotations

import json

from tests.fakeserver import closed_port, http_response
from tests.server.inproc import scripted


def models(*ids: str) -> bytes:
    data = [{"id": i, "object": "model", "owned_by": "x"} for i in ids]
    return http_response(200, json.dumps({"object": "list", "data": data}).encode())


def test_the_union_of_every_backend_that_answers_well(proxy, servers):
    app = proxy(
        {
            "a": scripted(servers, then=models("llama", "qwen")),
            "b": scripted(servers, then=models("qwen", "lora-sql")),
            "broken": scripted(servers, then=http_response(500, b"oops")),
            "garbled": scripted(servers, then=http_response(200, b"[1, 2]")),
            "down": f"http://127.0.0.1:{closed_port()}",
        }
    )
    app.app.models.ttl_s = 0  # every call asks the backends again
    for _ in range(2):  # the second time on pooled keep-alive connections
        status, headers, body = app.get("/v1/models")
        assert status == "200 OK" and headers["content-type"].startswith("application/json")
        assert sorted(m["id"] for m in json.loads(body)["data"]) == ["llama", "lora-sql", "qwen"]
    assert servers[0].connections == 1
    assert servers[0].requests[0].startswith(b"GET /v1/models HTTP/1.1\r\n")
