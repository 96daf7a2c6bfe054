"""One helper for every hot-path write: `send` in a loop instead of gevent's `sendall`.

gevent's `sendall` asks the kernel for the socket's send buffer size
(`getsockopt(SO_SNDBUF)`) before every call, to size its slices: one extra
system call per write, four per proxied request (Redis pick and release, the
backend, the client). Writes on the hot path are small (a request head, a
reply, a few SSE events), so a plain `send` takes them whole; the loop only
matters for the rare partial write. Timeouts and errors are the socket's own,
as with `sendall`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["send_all"]


def send_all(sock: Any, data: bytes) -> None:
    sent = sock.send(data)
    if sent == len(data):
        return
    view = memoryview(data)[sent:]
    while view:
        view = view[sock.send(view) :]
